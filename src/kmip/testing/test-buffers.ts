/**
 * An independent TTLV byte builder for tests. It shares no code with ttlv.ts: bytes are laid out
 * by hand from the spec's layout (tag 3 bytes, type 1, length 4 big-endian, value, zero padding
 * to 8), so a bug in the production encoder cannot hide itself in the expected bytes.
 *
 * Every builder returns a plain number[]; `bytes()` turns one into a Buffer. Options allow
 * deliberately malformed items (wrong declared length, nonzero padding, any type byte).
 */

export type Bytes = number[];

function be(n: number | bigint, width: number): Bytes {
  let v = BigInt(n);
  if (v < 0n) v += 1n << BigInt(width * 8);
  const out: Bytes = new Array(width).fill(0);
  for (let i = width - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

export interface RawOptions {
  /** Length written in the header instead of the value's real length. */
  declaredLength?: number;
  /** Byte used for padding instead of zero. */
  padByte?: number;
  /** Omit the padding entirely. */
  noPadding?: boolean;
}

/** Any item: header, value bytes as given, then padding to a multiple of 8. */
export function raw(tag: number, type: number, value: Bytes, opts: RawOptions = {}): Bytes {
  const len = opts.declaredLength ?? value.length;
  const pad = opts.noPadding ? 0 : (8 - (value.length % 8)) % 8;
  return [...be(tag, 3), type & 0xff, ...be(len, 4), ...value, ...new Array(pad).fill(opts.padByte ?? 0)];
}

export const T = {
  struct: (tag: number, ...children: Bytes[]): Bytes => raw(tag, 0x01, children.flat()),
  int: (tag: number, n: number, opts?: RawOptions): Bytes => raw(tag, 0x02, be(n, 4), opts),
  long: (tag: number, n: bigint | number): Bytes => raw(tag, 0x03, be(n, 8)),
  /** Big Integer from a hex string of the two's-complement value, already a multiple of 8 bytes. */
  bigHex: (tag: number, hex: string): Bytes => raw(tag, 0x04, hexBytes(hex)),
  enumeration: (tag: number, n: number, opts?: RawOptions): Bytes => raw(tag, 0x05, be(n, 4), opts),
  bool: (tag: number, b: boolean | number): Bytes => raw(tag, 0x06, be(typeof b === 'boolean' ? (b ? 1 : 0) : b, 8)),
  text: (tag: number, s: string, opts?: RawOptions): Bytes => raw(tag, 0x07, utf8(s), opts),
  bytes: (tag: number, b: Bytes, opts?: RawOptions): Bytes => raw(tag, 0x08, b, opts),
  dateTime: (tag: number, seconds: bigint | number): Bytes => raw(tag, 0x09, be(seconds, 8)),
  interval: (tag: number, n: number): Bytes => raw(tag, 0x0a, be(n, 4)),
  dateTimeExt: (tag: number, us: bigint | number): Bytes => raw(tag, 0x0b, be(us, 8)),
};

/** UTF-8 by hand (code points to bytes), independent of Buffer's encoder. */
export function utf8(s: string): Bytes {
  const out: Bytes = [];
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return out;
}

/** "42 00 20 | 02 | 00 00 00 04" -> bytes; spaces, '|' and newlines are ignored. */
export function hexBytes(hex: string): Bytes {
  const clean = hex.replace(/[\s|]/g, '');
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new Error(`bad hex: ${hex}`);
  const out: Bytes = [];
  for (let i = 0; i < clean.length; i += 2) out.push(parseInt(clean.slice(i, i + 2), 16));
  return out;
}

export function bytes(b: Bytes): Buffer {
  return Buffer.from(b);
}
