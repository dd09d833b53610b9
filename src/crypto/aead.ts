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
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';

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

/** The associated data: a text naming the context, then the blob's header; one allocation. */
function aad(ctx: WrapContext, header: Buffer): Buffer {
  const text = `keysmith|${ctx.purpose}|${ctx.tenant}|${ctx.keyId}|${ctx.version}|`;
  const n = Buffer.byteLength(text, 'utf8');
  const out = Buffer.allocUnsafe(n + header.length);
  out.write(text, 0, 'utf8');
  header.copy(out, n);
  return out;
}

/**
 * IVs: 96 random bits each from the CSPRNG (node:crypto, OpenSSL's RAND_bytes), drawn 512 at a time
 * into a pool that is used once, front to back, and refilled. One RAND_bytes call per IV cost a
 * fifth of a rekey worker's time; the bits, and their use once each, are the same.
 */
const IV_POOL = IV_LEN * 512;
let ivPool = Buffer.alloc(0);
let ivAt = 0;
function nextIv(): Buffer {
  if (ivAt + IV_LEN > ivPool.length) {
    ivPool = randomFillSync(Buffer.allocUnsafe(IV_POOL));
    ivAt = 0;
  }
  const iv = ivPool.subarray(ivAt, ivAt + IV_LEN);
  ivAt += IV_LEN;
  return iv;
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

/** The last header built: a rekey seals thousands of keys under one wrapping key and version. */
let lastHeader: { wrapId: string; wrapVersion: number; header: Buffer } | null = null;
function headerFor(wrapId: string, wrapVersion: number): Buffer {
  if (lastHeader && lastHeader.wrapId === wrapId && lastHeader.wrapVersion === wrapVersion) return lastHeader.header;
  const header = encodeHeader(wrapId, wrapVersion);
  lastHeader = { wrapId, wrapVersion, header };
  return header;
}

export function seal(key: Buffer, wrapId: string, wrapVersion: number, ctx: WrapContext, plaintext: Buffer): Buffer {
  assertKey(key);
  const header = headerFor(wrapId, wrapVersion);
  const iv = nextIv();
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_LEN });
  cipher.setAAD(aad(ctx, header));
  const ct = cipher.update(plaintext);
  const final = cipher.final();
  // header | iv | tag | ciphertext, written into one buffer.
  const at = header.length + IV_LEN + TAG_LEN;
  const out = Buffer.allocUnsafe(at + ct.length + final.length);
  header.copy(out, 0);
  iv.copy(out, header.length);
  cipher.getAuthTag().copy(out, header.length + IV_LEN);
  ct.copy(out, at);
  if (final.length > 0) final.copy(out, at + ct.length);
  return out;
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
    const plain = decipher.update(ct);
    // GCM gives all its output from update; final only checks the tag (and throws when it is wrong).
    const rest = decipher.final();
    return rest.length === 0 ? plain : Buffer.concat([plain, rest]);
  } catch {
    return null;
  }
}
