/**
 * Wrapped-key blobs: AES-256-GCM from node:crypto, nothing hand-rolled.
 *
 * Invariants:
 * - Every blob starts with a format version and names the wrapping key (id and version), so a
 *   reader never guesses which key or layout applies.
 * - The associated data binds the blob to its context (purpose, tenant, key id, version) and to
 *   its own header: a blob moved to another key, tenant, version or purpose fails to open.
 * - A wrapping key must be exactly 32 bytes; anything else is refused, never padded or cut.
 *
 * Layout (format 1):
 *   u8 format | u8 len(wrapId) | wrapId (ascii) | u32be wrapVersion | iv[12] | tag[16] | ciphertext
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

export const BLOB_FORMAT = 1;
const IV_LEN = 12;
const TAG_LEN = 16;

export interface WrapContext {
  /** What the wrapped material is for: 'root', 'kek', 'dek', 'backup', … */
  purpose: string;
  tenant: string;
  keyId: string;
  version: number;
}

export interface BlobHeader {
  format: number;
  wrapId: string;
  wrapVersion: number;
}

export function assertKey(key: Buffer): void {
  if (!Buffer.isBuffer(key) || key.length !== 32) throw new Error('wrapping key must be 32 bytes');
}

function aad(ctx: WrapContext, header: Buffer): Buffer {
  const text = `keysmith|${ctx.purpose}|${ctx.tenant}|${ctx.keyId}|${ctx.version}|`;
  return Buffer.concat([Buffer.from(text, 'utf8'), header]);
}

function encodeHeader(wrapId: string, wrapVersion: number): Buffer {
  const id = Buffer.from(wrapId, 'ascii');
  if (id.length === 0 || id.length > 255) throw new Error('wrapping key id must be 1..255 ascii bytes');
  const h = Buffer.alloc(2 + id.length + 4);
  h[0] = BLOB_FORMAT;
  h[1] = id.length;
  id.copy(h, 2);
  h.writeUInt32BE(wrapVersion >>> 0, 2 + id.length);
  return h;
}

/** Reads only the header; null when the bytes cannot be a blob. */
export function readHeader(blob: Buffer): (BlobHeader & { headerLength: number }) | null {
  if (blob.length < 2) return null;
  if (blob[0] !== BLOB_FORMAT) return null;
  const idLen = blob[1];
  const headerLength = 2 + idLen + 4;
  if (idLen === 0 || blob.length < headerLength + IV_LEN + TAG_LEN + 1) return null;
  return {
    format: blob[0],
    wrapId: blob.subarray(2, 2 + idLen).toString('ascii'),
    wrapVersion: blob.readUInt32BE(2 + idLen),
    headerLength,
  };
}

export function seal(key: Buffer, wrapId: string, wrapVersion: number, ctx: WrapContext, plaintext: Buffer): Buffer {
  assertKey(key);
  const header = encodeHeader(wrapId, wrapVersion);
  const iv = randomBytes(IV_LEN);
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_LEN });
  cipher.setAAD(aad(ctx, header));
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([header, iv, cipher.getAuthTag(), ct]);
}

/** Opens a blob; null when it is malformed, altered, or bound to another context. */
export function open(key: Buffer, ctx: WrapContext, blob: Buffer): Buffer | null {
  assertKey(key);
  const h = readHeader(blob);
  if (!h) return null;
  const header = blob.subarray(0, h.headerLength);
  const iv = blob.subarray(h.headerLength, h.headerLength + IV_LEN);
  const tag = blob.subarray(h.headerLength + IV_LEN, h.headerLength + IV_LEN + TAG_LEN);
  const ct = blob.subarray(h.headerLength + IV_LEN + TAG_LEN);
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_LEN });
    decipher.setAAD(aad(ctx, header));
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(ct), decipher.final()]);
  } catch {
    return null;
  }
}
