/**
 * The onboard key manager's backup: an armored text blob holding a key manager's whole hierarchy
 * (root key, tenant KEKs, DEKs), sealed under a key derived from the passphrase.
 *
 * Layout of the armored bytes (format 1):
 *   "KSBK" | u8 1 | u32be len(header) | header (JSON) | sealed payload (crypto/aead blob)
 * The header carries the KDF parameters, a passphrase check value (HMAC of a fixed label under the
 * derived key) and the SHA-256 of the sealed payload, so a refusal can say which thing is wrong:
 * malformed or truncated (structure or digest), wrong passphrase (check value), tampered (AEAD).
 */
import { createHmac } from 'node:crypto';
import { open, seal } from '../crypto/aead.js';
import { deriveKey, safeEqual, sha256, validKdfParams, type KdfParams } from '../crypto/kdf.js';
import { err, ok, type Result } from '../errors.js';
import type { DekTable } from '../store/schema.js';

const MAGIC = Buffer.from('KSBK', 'ascii');
const BEGIN = '--------------------------BEGIN BACKUP--------------------------';
const END = '---------------------------END BACKUP---------------------------';
const CHECK_LABEL = 'keysmith backup passphrase check';
const ctx = { purpose: 'backup', tenant: '-', keyId: 'backup', version: 1 };

export interface BackupPayload {
  format: 'keysmith-okm-backup';
  created: string;
  key_manager: {
    uuid: string;
    svm_uuid: string;
    root_id: string;
    root_version: number;
    root: string;
    created_at: string;
    /**
     * Older root versions that still wrap some of the KEKs (a master-key rekey paused, cancelled or
     * still running): each KEK opens under the root of its own root_version. Absent when every KEK
     * is under `root_version`, as in backups made before this field existed.
     */
    older_roots?: { root_version: number; root: string }[];
  };
  svms: { uuid: string; name: string; scope: 'cluster' | 'svm'; created_at: string }[];
  keks: { id: string; svm_uuid: string; version: number; root_version: number; wrapped: string; state: string; created_at: string }[];
  /** DEK rows as stored, their wrapped material in base64 (null once destroyed). */
  deks: (Omit<DekTable, 'wrapped'> & { wrapped: string | null })[];
}

interface Header {
  kdf: KdfParams;
  check: string;
  digest: string;
}

function checkValue(key: Buffer): string {
  return createHmac('sha256', key).update(CHECK_LABEL).digest('base64');
}

/** Seals a backup under the passphrase-derived key `key` (derived with `kdf`). */
export function sealBackup(payload: BackupPayload, key: Buffer, kdf: KdfParams): string {
  const body = seal(key, 'backup', 1, ctx, Buffer.from(JSON.stringify(payload), 'utf8'));
  const header: Header = { kdf, check: checkValue(key), digest: sha256(body).toString('hex') };
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(h.length);
  const bytes = Buffer.concat([MAGIC, Buffer.from([1]), len, h, body]);
  const b64 = bytes.toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return [BEGIN, ...lines, END].join('\n');
}

type Parsed = { header: Header; body: Buffer };

function parseArmor(text: string): Result<Parsed, 'backup_malformed'> {
  if (typeof text !== 'string') return err('backup_malformed', 'The key backup must be text.');
  if (!/-+BEGIN BACKUP-+/.test(text)) return err('backup_malformed', 'The key backup has no BEGIN BACKUP line.');
  const m = /-+BEGIN BACKUP-+([\s\S]*?)-+END BACKUP-+/.exec(text);
  if (!m) return err('backup_malformed', 'The key backup has no END BACKUP line: it is truncated.');
  const inner = m[1];
  const b64 = inner.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) return err('backup_malformed', 'The key backup body is not base64.');
  const bytes = Buffer.from(b64, 'base64');
  if (bytes.length < 9 || !bytes.subarray(0, 4).equals(MAGIC) || bytes[4] !== 1) return err('backup_malformed', 'This is not a Keysmith key backup.');
  const hlen = bytes.readUInt32BE(5);
  if (hlen > 4096 || 9 + hlen > bytes.length) return err('backup_malformed', 'The key backup is truncated.');
  let header: Header;
  try {
    header = JSON.parse(bytes.subarray(9, 9 + hlen).toString('utf8')) as Header;
  } catch {
    return err('backup_malformed', 'The key backup header is damaged.');
  }
  if (!header || !validKdfParams(header.kdf) || typeof header.check !== 'string' || typeof header.digest !== 'string') {
    return err('backup_malformed', 'The key backup header is damaged.');
  }
  const body = bytes.subarray(9 + hlen);
  if (sha256(body).toString('hex') !== header.digest) return err('backup_malformed', 'The key backup is truncated or damaged: its digest does not match.');
  return ok({ header, body });
}

/** Opens a backup; every failure is a value naming what is wrong. */
export async function openBackup(
  text: string,
  passphrase: string,
): Promise<Result<BackupPayload, 'backup_malformed' | 'backup_wrong_passphrase' | 'backup_tampered'>> {
  const parsed = parseArmor(text);
  if (!parsed.ok) return parsed;
  const { header, body } = parsed.value;
  const key = await deriveKey(passphrase, header.kdf);
  if (!safeEqual(Buffer.from(checkValue(key)), Buffer.from(header.check))) return err('backup_wrong_passphrase');
  const plain = open(key, ctx, body);
  if (!plain) return err('backup_tampered');
  let payload: BackupPayload;
  try {
    payload = JSON.parse(plain.toString('utf8')) as BackupPayload;
  } catch {
    return err('backup_tampered');
  }
  if (payload.format !== 'keysmith-okm-backup' || !payload.key_manager || !Array.isArray(payload.deks)) return err('backup_malformed', 'The key backup payload is not understood.');
  return ok(payload);
}
