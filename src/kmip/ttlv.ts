/**
 * KMIP TTLV (Tag, Type, Length, Value) items: the in-memory shape, a strict decoder and an encoder.
 * Byte layout from KMIP 1.x §9.1 and 2.x §9.1 (OASIS):
 *
 *   tag: 3 bytes | type: 1 byte | length: u32be | value: `length` bytes | zero padding to 8
 *
 * Invariants (a server decodes bytes from anyone):
 * - Decoding either returns an item or throws KmipDecodeError; it never reads past its input, never
 *   allocates from a declared length it has not checked against the bytes it holds, and stops at
 *   `maxDepth` nesting and `maxItems` items.
 * - Nothing is coerced: a wrong length for a fixed-size type, nonzero padding, a Boolean other than
 *   0/1, malformed UTF-8, an unknown item type, truncated input, trailing bytes, or structure
 *   children that do not exactly fill their parent are all refused.
 * - Byte String values are copies, never views of the input, so a caller may keep them after the
 *   receive buffer is reused.
 */

export const enum ItemType {
  Structure = 0x01,
  Integer = 0x02,
  LongInteger = 0x03,
  BigInteger = 0x04,
  Enumeration = 0x05,
  Boolean = 0x06,
  TextString = 0x07,
  ByteString = 0x08,
  DateTime = 0x09,
  Interval = 0x0a,
  DateTimeExtended = 0x0b,
}

export type Ttlv =
  | { tag: number; type: ItemType.Structure; value: Ttlv[] }
  | { tag: number; type: ItemType.Integer | ItemType.Enumeration | ItemType.Interval; value: number }
  | { tag: number; type: ItemType.LongInteger | ItemType.BigInteger; value: bigint }
  /** seconds since the epoch */
  | { tag: number; type: ItemType.DateTime; value: bigint }
  /** microseconds since the epoch (KMIP 2.x) */
  | { tag: number; type: ItemType.DateTimeExtended; value: bigint }
  | { tag: number; type: ItemType.Boolean; value: boolean }
  | { tag: number; type: ItemType.TextString; value: string }
  | { tag: number; type: ItemType.ByteString; value: Buffer };

export type TtlvStructure = Extract<Ttlv, { type: ItemType.Structure }>;

export interface DecodeLimits {
  /** Nesting depth; the outermost item is depth 1. */
  maxDepth: number;
  /** Items in the whole message, structures included. */
  maxItems: number;
}

/**
 * Real messages nest about 8 deep (message, batch item, payload, template attribute, attribute,
 * value, key block, key value, material); 100,000 items keeps a large Locate answer decodable.
 */
export const DEFAULT_DECODE_LIMITS: Readonly<DecodeLimits> = Object.freeze({ maxDepth: 32, maxItems: 100_000 });

/** The input is not well-formed TTLV. A KMIP server answers it with Result Reason Invalid Message. */
export class KmipDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KmipDecodeError';
  }
}

/** Bytes in the item header: tag (3), type (1), length (4). */
export const HEADER_BYTES = 8;

const TYPE_NAMES: Record<number, string> = {
  0x01: 'Structure',
  0x02: 'Integer',
  0x03: 'Long Integer',
  0x04: 'Big Integer',
  0x05: 'Enumeration',
  0x06: 'Boolean',
  0x07: 'Text String',
  0x08: 'Byte String',
  0x09: 'Date-Time',
  0x0a: 'Interval',
  0x0b: 'Date-Time Extended',
};

export function itemTypeName(type: number): string {
  return TYPE_NAMES[type] ?? `0x${type.toString(16).padStart(2, '0')}`;
}

function hexTag(tag: number): string {
  return `0x${tag.toString(16).padStart(6, '0')}`;
}

/** Zero bytes needed after `n` value bytes to reach a multiple of 8. */
export function padLength(n: number): number {
  return (8 - (n & 7)) & 7;
}

// ---------------------------------------------------------------------------------------------
// Decoding

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

interface DecodeState {
  buf: Buffer;
  items: number;
  maxItems: number;
  maxDepth: number;
}

export function decodeTtlv(buf: Buffer, limits?: Partial<DecodeLimits>): Ttlv {
  const st: DecodeState = {
    buf,
    items: 0,
    maxItems: limits?.maxItems ?? DEFAULT_DECODE_LIMITS.maxItems,
    maxDepth: limits?.maxDepth ?? DEFAULT_DECODE_LIMITS.maxDepth,
  };
  if (buf.length < HEADER_BYTES) throw new KmipDecodeError(`truncated: ${buf.length} bytes is less than one item header`);
  const [item, end] = decodeItem(st, 0, buf.length, 1);
  if (end !== buf.length) throw new KmipDecodeError(`${buf.length - end} trailing bytes after the message`);
  return item;
}

function checkPadding(buf: Buffer, from: number, to: number, tag: number): void {
  for (let i = from; i < to; i++) {
    if (buf[i] !== 0) throw new KmipDecodeError(`nonzero padding in item ${hexTag(tag)}`);
  }
}

function fixedLength(tag: number, type: number, length: number, expected: number): void {
  if (length !== expected) {
    throw new KmipDecodeError(`${itemTypeName(type)} item ${hexTag(tag)} has length ${length}, expected ${expected}`);
  }
}

/** Decodes one item starting at `off`, which must end (with padding) at or before `limit`. */
function decodeItem(st: DecodeState, off: number, limit: number, depth: number): [Ttlv, number] {
  const buf = st.buf;
  if (limit - off < HEADER_BYTES) throw new KmipDecodeError('truncated item header');
  if (depth > st.maxDepth) throw new KmipDecodeError(`nesting deeper than ${st.maxDepth}`);
  if (++st.items > st.maxItems) throw new KmipDecodeError(`more than ${st.maxItems} items`);
  const tag = (buf[off] << 16) | (buf[off + 1] << 8) | buf[off + 2];
  const type = buf[off + 3];
  const length = buf.readUInt32BE(off + 4);
  const start = off + HEADER_BYTES;
  const padded = length + padLength(length);
  // Compare before adding to `start` can matter: both sides stay well inside 2^53.
  if (padded > limit - start) {
    throw new KmipDecodeError(`item ${hexTag(tag)} declares ${length} bytes but only ${limit - start} remain`);
  }
  const end = start + padded;
  switch (type) {
    case ItemType.Structure: {
      // Every child is a whole number of 8-byte blocks, so a structure's length is too.
      if ((length & 7) !== 0) throw new KmipDecodeError(`Structure ${hexTag(tag)} length ${length} is not a multiple of 8`);
      const value: Ttlv[] = [];
      let p = start;
      while (p < end) {
        const [child, next] = decodeItem(st, p, end, depth + 1);
        value.push(child);
        p = next;
      }
      return [{ tag, type, value }, end];
    }
    case ItemType.Integer: {
      fixedLength(tag, type, length, 4);
      checkPadding(buf, start + 4, end, tag);
      return [{ tag, type, value: buf.readInt32BE(start) }, end];
    }
    case ItemType.Enumeration:
    case ItemType.Interval: {
      fixedLength(tag, type, length, 4);
      checkPadding(buf, start + 4, end, tag);
      return [{ tag, type, value: buf.readUInt32BE(start) }, end];
    }
    case ItemType.LongInteger: {
      fixedLength(tag, type, length, 8);
      return [{ tag, type, value: buf.readBigInt64BE(start) }, end];
    }
    case ItemType.DateTime:
    case ItemType.DateTimeExtended: {
      fixedLength(tag, type, length, 8);
      return [{ tag, type, value: buf.readBigInt64BE(start) } as Ttlv, end];
    }
    case ItemType.BigInteger: {
      // Two's complement, big-endian, sign-extended to a multiple of 8 bytes.
      if (length === 0 || (length & 7) !== 0) {
        throw new KmipDecodeError(`Big Integer ${hexTag(tag)} length ${length} is not a positive multiple of 8`);
      }
      return [{ tag, type, value: readBigInteger(buf, start, length) }, end];
    }
    case ItemType.Boolean: {
      fixedLength(tag, type, length, 8);
      const v = buf.readBigUInt64BE(start);
      if (v > 1n) throw new KmipDecodeError(`Boolean ${hexTag(tag)} is neither 0 nor 1`);
      return [{ tag, type, value: v === 1n }, end];
    }
    case ItemType.TextString: {
      checkPadding(buf, start + length, end, tag);
      let value: string;
      try {
        value = utf8.decode(buf.subarray(start, start + length));
      } catch {
        throw new KmipDecodeError(`Text String ${hexTag(tag)} is not valid UTF-8`);
      }
      return [{ tag, type, value }, end];
    }
    case ItemType.ByteString: {
      checkPadding(buf, start + length, end, tag);
      return [{ tag, type, value: Buffer.from(buf.subarray(start, start + length)) }, end];
    }
    default:
      throw new KmipDecodeError(`item ${hexTag(tag)} has unknown item type ${itemTypeName(type)}`);
  }
}

function readBigInteger(buf: Buffer, start: number, length: number): bigint {
  let v = BigInt('0x' + buf.toString('hex', start, start + length));
  if (buf[start] & 0x80) v -= 1n << BigInt(length * 8);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Encoding. Values out of range for their type are programming errors: RangeError / TypeError.

const INT32_MIN = -0x80000000;
const INT32_MAX = 0x7fffffff;
const UINT32_MAX = 0xffffffff;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;

/** Encoded size of an item, header and padding included. */
export function encodedLength(item: Ttlv): number {
  return HEADER_BYTES + paddedValueLength(item);
}

function paddedValueLength(item: Ttlv): number {
  switch (item.type) {
    case ItemType.Structure: {
      let n = 0;
      for (const c of item.value) n += HEADER_BYTES + paddedValueLength(c);
      return n;
    }
    case ItemType.Integer:
    case ItemType.Enumeration:
    case ItemType.Interval:
    case ItemType.LongInteger:
    case ItemType.Boolean:
    case ItemType.DateTime:
    case ItemType.DateTimeExtended:
      return 8;
    case ItemType.BigInteger:
      return bigIntegerLength(item.value);
    case ItemType.TextString: {
      const n = Buffer.byteLength(item.value, 'utf8');
      return n + padLength(n);
    }
    case ItemType.ByteString:
      return item.value.length + padLength(item.value.length);
    default:
      throw new TypeError(`unknown item type ${itemTypeName((item as { type: number }).type)}`);
  }
}

/** Smallest multiple of 8 bytes that holds `v` in two's complement. */
function bigIntegerLength(v: bigint): number {
  // Bits needed besides the sign bit: for negative v, those of ~v (= -v - 1).
  const magnitude = v < 0n ? -v - 1n : v;
  const bits = magnitude === 0n ? 0 : magnitude.toString(2).length;
  return Math.max(8, Math.ceil((bits + 1) / 64) * 8);
}

export function encodeTtlv(item: Ttlv): Buffer {
  const out = Buffer.alloc(encodedLength(item)); // zero-filled: padding is already zero
  const end = writeItem(out, 0, item);
  if (end !== out.length) throw new Error(`encoder wrote ${end} bytes, sized ${out.length}`);
  return out;
}

function checkTag(tag: number): void {
  if (!Number.isInteger(tag) || tag < 0 || tag > 0xffffff) throw new RangeError(`tag ${tag} does not fit in 3 bytes`);
}

function writeHeader(out: Buffer, off: number, tag: number, type: number, length: number): number {
  checkTag(tag);
  out[off] = tag >>> 16;
  out[off + 1] = (tag >>> 8) & 0xff;
  out[off + 2] = tag & 0xff;
  out[off + 3] = type;
  out.writeUInt32BE(length, off + 4);
  return off + HEADER_BYTES;
}

function writeItem(out: Buffer, off: number, item: Ttlv): number {
  switch (item.type) {
    case ItemType.Structure: {
      const lengthAt = off + 4;
      let p = writeHeader(out, off, item.tag, item.type, 0);
      const start = p;
      for (const c of item.value) p = writeItem(out, p, c);
      out.writeUInt32BE(p - start, lengthAt);
      return p;
    }
    case ItemType.Integer: {
      const v = item.value;
      if (!Number.isInteger(v) || v < INT32_MIN || v > INT32_MAX) throw new RangeError(`Integer ${v} out of range`);
      const p = writeHeader(out, off, item.tag, item.type, 4);
      out.writeInt32BE(v, p);
      return p + 8;
    }
    case ItemType.Enumeration:
    case ItemType.Interval: {
      const v = item.value;
      if (!Number.isInteger(v) || v < 0 || v > UINT32_MAX) throw new RangeError(`${itemTypeName(item.type)} ${v} out of range`);
      const p = writeHeader(out, off, item.tag, item.type, 4);
      out.writeUInt32BE(v, p);
      return p + 8;
    }
    case ItemType.LongInteger:
    case ItemType.DateTime:
    case ItemType.DateTimeExtended: {
      const v = item.value;
      if (typeof v !== 'bigint' || v < INT64_MIN || v > INT64_MAX) throw new RangeError(`${itemTypeName(item.type)} ${v} out of range`);
      const p = writeHeader(out, off, item.tag, item.type, 8);
      out.writeBigInt64BE(v, p);
      return p + 8;
    }
    case ItemType.BigInteger: {
      const v = item.value;
      if (typeof v !== 'bigint') throw new TypeError('Big Integer value must be a bigint');
      const len = bigIntegerLength(v);
      const p = writeHeader(out, off, item.tag, item.type, len);
      const twos = v < 0n ? (1n << BigInt(len * 8)) + v : v;
      out.write(twos.toString(16).padStart(len * 2, '0'), p, len, 'hex');
      return p + len;
    }
    case ItemType.Boolean: {
      const p = writeHeader(out, off, item.tag, item.type, 8);
      out[p + 7] = item.value ? 1 : 0;
      return p + 8;
    }
    case ItemType.TextString: {
      // A lone surrogate has no UTF-8 form; writing U+FFFD instead would change the value silently.
      if (!(item.value as unknown as { isWellFormed(): boolean }).isWellFormed()) throw new RangeError('Text String is not well-formed Unicode');
      const n = Buffer.byteLength(item.value, 'utf8');
      const p = writeHeader(out, off, item.tag, item.type, n);
      out.write(item.value, p, n, 'utf8');
      return p + n + padLength(n);
    }
    case ItemType.ByteString: {
      const v = item.value;
      const p = writeHeader(out, off, item.tag, item.type, v.length);
      out.set(v, p);
      return p + v.length + padLength(v.length);
    }
    default:
      throw new TypeError(`unknown item type ${itemTypeName((item as { type: number }).type)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Builders and readers

function toSeconds(v: bigint | number | Date): bigint {
  if (v instanceof Date) return BigInt(Math.floor(v.getTime() / 1000));
  return typeof v === 'bigint' ? v : BigInt(Math.trunc(v));
}

export const ttlv = {
  struct: (tag: number, items: Ttlv[]): Ttlv => ({ tag, type: ItemType.Structure, value: items }),
  int: (tag: number, n: number): Ttlv => ({ tag, type: ItemType.Integer, value: n }),
  long: (tag: number, n: bigint | number): Ttlv => ({ tag, type: ItemType.LongInteger, value: BigInt(n) }),
  big: (tag: number, n: bigint | number): Ttlv => ({ tag, type: ItemType.BigInteger, value: BigInt(n) }),
  enumeration: (tag: number, n: number): Ttlv => ({ tag, type: ItemType.Enumeration, value: n }),
  bool: (tag: number, b: boolean): Ttlv => ({ tag, type: ItemType.Boolean, value: b }),
  text: (tag: number, s: string): Ttlv => ({ tag, type: ItemType.TextString, value: s }),
  bytes: (tag: number, b: Uint8Array): Ttlv => ({
    tag,
    type: ItemType.ByteString,
    value: Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  }),
  dateTime: (tag: number, seconds: bigint | number | Date): Ttlv => ({ tag, type: ItemType.DateTime, value: toSeconds(seconds) }),
  interval: (tag: number, n: number): Ttlv => ({ tag, type: ItemType.Interval, value: n }),
  dateTimeExt: (tag: number, us: bigint | number): Ttlv => ({ tag, type: ItemType.DateTimeExtended, value: BigInt(us) }),
};

/** First child of a structure with `tag`; undefined when absent or when `s` is not a structure. */
export function child(s: Ttlv, tag: number): Ttlv | undefined {
  if (s.type !== ItemType.Structure) return undefined;
  for (const c of s.value) if (c.tag === tag) return c;
  return undefined;
}

/** All children of a structure with `tag`, in order. */
export function children(s: Ttlv, tag: number): Ttlv[] {
  if (s.type !== ItemType.Structure) return [];
  return s.value.filter((c) => c.tag === tag);
}

/** Deep equality of two items (Byte Strings by content). */
export function ttlvEqual(a: Ttlv, b: Ttlv): boolean {
  if (a.tag !== b.tag || a.type !== b.type) return false;
  switch (a.type) {
    case ItemType.Structure: {
      const bv = b.value as Ttlv[];
      return a.value.length === bv.length && a.value.every((c, i) => ttlvEqual(c, bv[i]));
    }
    case ItemType.ByteString:
      return a.value.equals(b.value as Buffer);
    default:
      return a.value === b.value;
  }
}
