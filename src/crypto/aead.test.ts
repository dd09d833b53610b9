/**
 * Unit tests of the wrapped-key blob format. Expected layouts are built here by hand from the
 * documented layout, not with the production writer.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BLOB_FORMAT, open, readHeader, seal, type WrapContext } from './aead.js';

const key = randomBytes(32);
const ctx: WrapContext = { purpose: 'dek', tenant: '6b0c3c6e-8f1f-4a43-9d55-0b1f0c1b2a11', keyId: 'dek_01hzzzzzzzzzzzzzzzzzzzzz', version: 3 };
const plaintext = randomBytes(32);
const WRAP_ID = 'kek_abc';
const WRAP_VERSION = 7;
const HEADER_LEN = 2 + WRAP_ID.length + 4;

describe('aead seal/open', () => {
  it('round-trips and lays the blob out as documented', () => {
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    expect(open(key, ctx, blob)).toEqual(plaintext);
    // u8 format | u8 len | id | u32be version | iv[12] | tag[16] | ciphertext
    const expectedHeader = Buffer.concat([Buffer.from([1, WRAP_ID.length]), Buffer.from(WRAP_ID, 'ascii'), Buffer.from([0, 0, 0, WRAP_VERSION])]);
    expect(blob.subarray(0, HEADER_LEN)).toEqual(expectedHeader);
    expect(blob.length).toBe(HEADER_LEN + 12 + 16 + plaintext.length);
    expect(BLOB_FORMAT).toBe(1);
    // The plaintext does not appear in the blob.
    expect(blob.includes(plaintext)).toBe(false);
  });

  it('uses a fresh IV every time', () => {
    const a = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    const b = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    expect(a.equals(b)).toBe(false);
    expect(open(key, ctx, a)).toEqual(plaintext);
    expect(open(key, ctx, b)).toEqual(plaintext);
  });

  it('round-trips an empty and a large plaintext', () => {
    const big = randomBytes(100_000);
    expect(open(key, ctx, seal(key, WRAP_ID, 1, ctx, big))!.equals(big)).toBe(true);
    // An empty plaintext seals, but the header reader wants at least one ciphertext byte.
    const empty = seal(key, WRAP_ID, 1, ctx, Buffer.alloc(0));
    expect(empty.length).toBe(HEADER_LEN + 28);
  });

  it('refuses the wrong key', () => {
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    expect(open(randomBytes(32), ctx, blob)).toBeNull();
    const almost = Buffer.from(key);
    almost[31] ^= 0x01;
    expect(open(almost, ctx, blob)).toBeNull();
  });

  it('refuses a blob with any single byte altered (header, iv, tag, ciphertext)', () => {
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    for (let i = 0; i < blob.length; i++) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const t = Buffer.from(blob);
        t[i] ^= mask;
        expect(open(key, ctx, t), `byte ${i} ^ ${mask}`).toBeNull();
      }
    }
  });

  it('refuses a truncated or extended blob', () => {
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    for (let n = 0; n < blob.length; n++) expect(open(key, ctx, blob.subarray(0, n)), `length ${n}`).toBeNull();
    expect(open(key, ctx, Buffer.concat([blob, Buffer.from([0])]))).toBeNull();
  });

  it('refuses a different context in any field', () => {
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    const variants: WrapContext[] = [
      { ...ctx, purpose: 'kek' },
      { ...ctx, purpose: 'dek ' },
      { ...ctx, tenant: '6b0c3c6e-8f1f-4a43-9d55-0b1f0c1b2a12' },
      { ...ctx, tenant: '' },
      { ...ctx, keyId: 'dek_01hzzzzzzzzzzzzzzzzzzzzy' },
      { ...ctx, version: 4 },
      { ...ctx, version: 0 },
      { ...ctx, version: -3 },
    ];
    for (const v of variants) expect(open(key, v, blob), JSON.stringify(v)).toBeNull();
    expect(open(key, { ...ctx }, blob)).toEqual(plaintext);
  });

  it('binds the header: the same ciphertext under another wrap id or version does not open', () => {
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    const other = seal(key, 'kek_abd', WRAP_VERSION + 1, ctx, plaintext);
    // Graft this blob's iv/tag/ciphertext behind the other blob's header (same header length).
    const grafted = Buffer.concat([other.subarray(0, HEADER_LEN), blob.subarray(HEADER_LEN)]);
    expect(open(key, ctx, grafted)).toBeNull();
  });
});

describe('aead readHeader', () => {
  it('reads the header of a sealed blob', () => {
    const blob = seal(key, WRAP_ID, 0xfffffffe, ctx, plaintext);
    expect(readHeader(blob)).toEqual({ format: 1, wrapId: WRAP_ID, wrapVersion: 0xfffffffe, headerLength: HEADER_LEN });
  });

  it('returns null for short or garbage input', () => {
    expect(readHeader(Buffer.alloc(0))).toBeNull();
    expect(readHeader(Buffer.from([1]))).toBeNull();
    expect(readHeader(Buffer.from([1, 0]))).toBeNull();
    // id length 0
    expect(readHeader(Buffer.concat([Buffer.from([1, 0, 0, 0, 0, 1]), Buffer.alloc(40)]))).toBeNull();
    // wrong format byte
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    for (const f of [0, 2, 0x4b, 0xff]) {
      const t = Buffer.from(blob);
      t[0] = f;
      expect(readHeader(t)).toBeNull();
    }
    // id length pointing past the end
    const t = Buffer.from(blob);
    t[1] = 255;
    expect(readHeader(t)).toBeNull();
    // header present but no room for iv + tag + one ciphertext byte
    for (let n = 0; n < HEADER_LEN + 12 + 16 + 1; n++) expect(readHeader(blob.subarray(0, n)), `length ${n}`).toBeNull();
    expect(readHeader(blob.subarray(0, HEADER_LEN + 12 + 16 + 1))).not.toBeNull();
    // random garbage never throws
    for (let i = 0; i < 200; i++) {
      const g = randomBytes(i % 64);
      expect(() => readHeader(g)).not.toThrow();
      expect(() => open(key, ctx, g)).not.toThrow();
      expect(open(key, ctx, g)).toBeNull();
    }
  });
});

describe('aead key length', () => {
  it('refuses wrapping keys that are not exactly 32 bytes', () => {
    const blob = seal(key, WRAP_ID, WRAP_VERSION, ctx, plaintext);
    for (const n of [0, 16, 31, 33, 64]) {
      expect(() => seal(randomBytes(n), WRAP_ID, WRAP_VERSION, ctx, plaintext), `seal with ${n}`).toThrow(/32 bytes/);
      expect(() => open(randomBytes(n), ctx, blob), `open with ${n}`).toThrow(/32 bytes/);
    }
    // A 33-byte key whose first 32 bytes are the right key is still refused, not cut.
    expect(() => open(Buffer.concat([key, Buffer.from([0])]), ctx, blob)).toThrow();
    expect(() => seal('x'.repeat(32) as unknown as Buffer, WRAP_ID, 1, ctx, plaintext)).toThrow();
  });

  it('refuses an empty or over-long wrap id', () => {
    expect(() => seal(key, '', 1, ctx, plaintext)).toThrow();
    expect(() => seal(key, 'k'.repeat(256), 1, ctx, plaintext)).toThrow();
    expect(open(key, ctx, seal(key, 'k'.repeat(255), 1, ctx, plaintext))).toEqual(plaintext);
  });
});
