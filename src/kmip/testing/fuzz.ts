/**
 * Malformed and random KMIP messages for fuzzing a KMIP server (tests only). Deterministic from a
 * seed, so a failure can be replayed: `fuzzMessages(seed, n)` yields the same cases every time.
 *
 * Each case says whether it is `framed`: its first 8 bytes are a Structure header whose declared
 * length matches exactly the bytes that follow. A server must answer a framed case (Invalid
 * Message, or a normal answer if the mutation happened to stay valid) or close the connection;
 * it must never crash or hang. An unframed case may leave the server waiting for more bytes
 * (truncated) or make it close the connection (huge declared length, not a Structure).
 */
import { T, bytes, raw, type Bytes } from './test-buffers.js';

export type FuzzKind =
  | 'random-bytes'
  | 'garbage-in-frame'
  | 'mutated-valid'
  | 'bad-inner-length'
  | 'type-confusion'
  | 'deep-nesting'
  | 'many-items'
  | 'huge-declared-length'
  | 'huge-inner-length'
  | 'truncated'
  | 'not-a-structure'
  | 'wrong-batch-count'
  | 'bad-padding';

export interface FuzzCase {
  kind: FuzzKind;
  bytes: Buffer;
  framed: boolean;
}

const REQUEST_MESSAGE = 0x420078;
const REQUEST_HEADER = 0x420077;
const PROTOCOL_VERSION = 0x420069;
const BATCH_COUNT = 0x42000d;
const BATCH_ITEM = 0x42000f;
const OPERATION = 0x42005c;
const REQUEST_PAYLOAD = 0x420079;
const UNIQUE_IDENTIFIER = 0x420094;
const UNIQUE_BATCH_ITEM_ID = 0x420093;

/** mulberry32: a tiny seeded PRNG; test input generation only, never for secrets. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function version(major: number, minor: number): Bytes {
  return T.struct(PROTOCOL_VERSION, T.int(0x42006a, major), T.int(0x42006b, minor));
}

/** A well-formed request: one batch item of `operation` with `payload` children. */
export function validRequest(operation: number, payload: Bytes[] = [], opts: { major?: number; minor?: number; batchItemId?: Bytes } = {}): Buffer {
  const item = [T.enumeration(OPERATION, operation)];
  if (opts.batchItemId) item.push(T.bytes(UNIQUE_BATCH_ITEM_ID, opts.batchItemId));
  item.push(T.struct(REQUEST_PAYLOAD, ...payload));
  return bytes(T.struct(REQUEST_MESSAGE, T.struct(REQUEST_HEADER, version(opts.major ?? 1, opts.minor ?? 2), T.int(BATCH_COUNT, 1)), T.struct(BATCH_ITEM, ...item)));
}

/** Requests a KMIP server must answer normally: Discover Versions, Query, Get of an unknown id. */
export function validRequests(): Buffer[] {
  return [
    validRequest(0x1e),
    validRequest(0x18, [T.enumeration(0x420074, 1), T.enumeration(0x420074, 3)]),
    validRequest(0x0a, [T.text(UNIQUE_IDENTIFIER, 'no-such-object')], { major: 1, minor: 4, batchItemId: [1, 2, 3, 4] }),
    validRequest(0x1e, [], { major: 2, minor: 0 }),
  ];
}

/** Wraps arbitrary inner bytes in a RequestMessage header that declares exactly their length. */
function frame(inner: Bytes): Buffer {
  return bytes(raw(REQUEST_MESSAGE, 0x01, inner, { noPadding: true }));
}

function randomBytes(rand: () => number, n: number): Bytes {
  return Array.from({ length: n }, () => Math.floor(rand() * 256));
}

/** Offsets of item headers inside a well-formed encoding (walks the TTLV tree). */
function itemOffsets(b: Buffer, start = 0, end = b.length, out: number[] = []): number[] {
  let p = start;
  while (p + 8 <= end) {
    out.push(p);
    const type = b[p + 3];
    const len = b.readUInt32BE(p + 4);
    const padded = len + ((8 - (len % 8)) % 8);
    if (type === 0x01) itemOffsets(b, p + 8, p + 8 + len, out);
    p += 8 + padded;
  }
  return out;
}

export function* fuzzMessages(seed: number, count: number): Generator<FuzzCase> {
  const rand = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const bases = validRequests();
  const kinds: FuzzKind[] = [
    'random-bytes',
    'garbage-in-frame',
    'mutated-valid',
    'mutated-valid',
    'bad-inner-length',
    'type-confusion',
    'deep-nesting',
    'many-items',
    'huge-declared-length',
    'huge-inner-length',
    'truncated',
    'not-a-structure',
    'wrong-batch-count',
    'bad-padding',
  ];
  for (let i = 0; i < count; i++) {
    const kind = pick(kinds);
    switch (kind) {
      case 'random-bytes': {
        const b = Buffer.from(randomBytes(rand, 1 + Math.floor(rand() * 200)));
        const framed = b.length >= 8 && b[3] === 0x01 && b.readUInt32BE(4) === b.length - 8;
        yield { kind, bytes: b, framed };
        break;
      }
      case 'garbage-in-frame':
        yield { kind, bytes: frame(randomBytes(rand, 8 * Math.floor(rand() * 40))), framed: true };
        break;
      case 'mutated-valid': {
        const b = Buffer.from(pick(bases));
        const flips = 1 + Math.floor(rand() * 4);
        // Keep the outer header intact so the case stays framed.
        for (let f = 0; f < flips; f++) b[8 + Math.floor(rand() * (b.length - 8))] = Math.floor(rand() * 256);
        yield { kind, bytes: b, framed: true };
        break;
      }
      case 'bad-inner-length': {
        const b = Buffer.from(pick(bases));
        const offsets = itemOffsets(b).filter((o) => o > 0);
        const o = pick(offsets);
        const choices = [0, 1, 3, 5, 7, 9, 15, 0x7fffffff, 0xffffffff, b.readUInt32BE(o + 4) + 8, b.readUInt32BE(o + 4) - 8];
        b.writeUInt32BE(pick(choices) >>> 0, o + 4);
        yield { kind, bytes: b, framed: true };
        break;
      }
      case 'type-confusion': {
        const b = Buffer.from(pick(bases));
        const o = pick(itemOffsets(b).filter((x) => x > 0));
        b[o + 3] = pick([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x7f, 0xff]);
        yield { kind, bytes: b, framed: true };
        break;
      }
      case 'deep-nesting': {
        // Built directly into one buffer: nesting by copying arrays would cost O(depth²).
        const depth = 50 + Math.floor(rand() * 2000);
        const leaf = bytes(T.int(BATCH_COUNT, 1));
        const b = Buffer.alloc(8 * (depth + 1) + leaf.length);
        for (let d = 0; d <= depth; d++) {
          const off = 8 * d;
          b.writeUIntBE(d === 0 ? REQUEST_MESSAGE : REQUEST_HEADER, off, 3);
          b[off + 3] = 0x01;
          b.writeUInt32BE(b.length - off - 8, off + 4);
        }
        leaf.copy(b, 8 * (depth + 1));
        yield { kind, bytes: b, framed: true };
        break;
      }
      case 'many-items': {
        const n = 1000 + Math.floor(rand() * 20_000);
        const one = bytes(T.int(BATCH_COUNT, 1));
        const b = Buffer.alloc(8 + n * one.length);
        b.writeUIntBE(REQUEST_MESSAGE, 0, 3);
        b[3] = 0x01;
        b.writeUInt32BE(n * one.length, 4);
        for (let k = 0; k < n; k++) one.copy(b, 8 + k * one.length);
        yield { kind, bytes: b, framed: true };
        break;
      }
      case 'huge-declared-length': {
        const declared = pick([0x7ffffff8, 0xfffffff8, 0x10000000, 0x01000000 + 8]);
        yield { kind, bytes: Buffer.concat([bytes(raw(REQUEST_MESSAGE, 0x01, [], { declaredLength: declared })).subarray(0, 8), Buffer.from(randomBytes(rand, 64))]), framed: false };
        break;
      }
      case 'huge-inner-length': {
        // Framed correctly outside; an inner Byte String claims gigabytes.
        yield { kind, bytes: frame([...raw(UNIQUE_IDENTIFIER, 0x08, [], { declaredLength: 0xfffffff0, noPadding: true }), ...randomBytes(rand, 16)]), framed: true };
        break;
      }
      case 'truncated': {
        const b = pick(bases);
        yield { kind, bytes: b.subarray(0, 1 + Math.floor(rand() * (b.length - 1))), framed: false };
        break;
      }
      case 'not-a-structure':
        yield { kind, bytes: bytes(T.text(REQUEST_MESSAGE, 'not a structure')), framed: false };
        break;
      case 'wrong-batch-count': {
        const n = pick([0, 2, 3, -1, 0x7fffffff]);
        const inner = [
          ...T.struct(REQUEST_HEADER, version(1, 2), T.int(BATCH_COUNT, n)),
          ...T.struct(BATCH_ITEM, T.enumeration(OPERATION, 0x1e), T.struct(REQUEST_PAYLOAD)),
        ];
        yield { kind, bytes: frame(inner), framed: true };
        break;
      }
      case 'bad-padding': {
        const inner = [
          ...T.struct(REQUEST_HEADER, version(1, 2), T.int(BATCH_COUNT, 1, { padByte: 0x5a })),
          ...T.struct(BATCH_ITEM, T.enumeration(OPERATION, 0x0a), T.struct(REQUEST_PAYLOAD, T.text(UNIQUE_IDENTIFIER, 'abc', { padByte: 1 }))),
        ];
        yield { kind, bytes: frame(inner), framed: true };
        break;
      }
    }
  }
}
