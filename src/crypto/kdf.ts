/**
 * Passphrase-derived keys: scrypt (memory-hard) from node:crypto, run on libuv's thread pool so
 * the event loop keeps serving. Parameters travel with every sealed object, so they can be raised
 * later without breaking old blobs.
 */
import { scrypt, randomBytes, timingSafeEqual, createHash } from 'node:crypto';

export interface KdfParams {
  alg: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string; // base64
}

/** 2^15 × 8 × 128 B = 32 MiB per derivation: memory-hard, about 0.1 s here. */
export function newKdfParams(cost = 15): KdfParams {
  return { alg: 'scrypt', N: 1 << cost, r: 8, p: 1, salt: randomBytes(16).toString('base64') };
}

export function validKdfParams(x: unknown): x is KdfParams {
  const p = x as KdfParams;
  return (
    !!p &&
    p.alg === 'scrypt' &&
    Number.isInteger(p.N) &&
    p.N >= 1 << 14 &&
    p.N <= 1 << 20 &&
    (p.N & (p.N - 1)) === 0 &&
    Number.isInteger(p.r) &&
    p.r >= 8 &&
    p.r <= 32 &&
    Number.isInteger(p.p) &&
    p.p >= 1 &&
    p.p <= 4 &&
    typeof p.salt === 'string' &&
    Buffer.from(p.salt, 'base64').length >= 16
  );
}

export function deriveKey(passphrase: string, params: KdfParams): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(
      Buffer.from(passphrase, 'utf8'),
      Buffer.from(params.salt, 'base64'),
      32,
      { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r + 16 * 1024 * 1024 },
      (e, key) => (e ? reject(e) : resolve(key)),
    );
  });
}

export function sha256(data: string | Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

export function safeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
