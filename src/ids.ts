/** Identifiers: ONTAP-facing objects use UUIDs (the contract); Keysmith's own objects use prefixed, sortable ids. */
import { randomBytes, randomUUID } from 'node:crypto';

export const uuid = (): string => randomUUID();

/** `prefix_` + 48-bit millisecond time + 80 random bits, base32 (Crockford) — sorts by creation time. */
const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
// Ids are not secrets: their randomness comes from a pooled CSPRNG buffer (one getrandom call per
// 409 ids), since a randomBytes call per id costs more than the rest of a small request.
let pool = Buffer.alloc(0);
let poolAt = 0;
function random10(target: Buffer, at: number): void {
  if (poolAt + 10 > pool.length) {
    pool = randomBytes(4096);
    poolAt = 0;
  }
  pool.copy(target, at, poolAt, poolAt + 10);
  poolAt += 10;
}

export function newId(prefix: 'dek' | 'kek' | 'tok' | 'usr' | 'evt' | 'req' | 'km' | 'node'): string {
  const bytes = Buffer.alloc(16);
  bytes.writeUIntBE(Date.now(), 0, 6);
  random10(bytes, 6);
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return `${prefix}_${out}`;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const isUuid = (s: string): boolean => UUID_RE.test(s);
