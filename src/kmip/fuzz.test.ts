/**
 * The fuzz corpus itself, run through the framer, decoder and request parser in-process: every
 * case is either a request or a KmipDecodeError/KmipFrameError, never another exception.
 */
import { describe, expect, it } from 'vitest';
import { KmipFrameError, TtlvFramer } from './framer.js';
import { parseRequest } from './message.js';
import { fuzzMessages, validRequests } from './testing/fuzz.js';
import { decodeTtlv, KmipDecodeError } from './ttlv.js';

describe('fuzz corpus', () => {
  it('is deterministic for a seed', () => {
    const a = [...fuzzMessages(42, 50)].map((c) => c.bytes.toString('hex'));
    const b = [...fuzzMessages(42, 50)].map((c) => c.bytes.toString('hex'));
    expect(a).toEqual(b);
    expect([...fuzzMessages(43, 50)].map((c) => c.bytes.toString('hex'))).not.toEqual(a);
  });

  it('marks framed cases correctly', () => {
    for (const c of fuzzMessages(7, 500)) {
      if (!c.framed) continue;
      expect(c.bytes[3]).toBe(0x01);
      expect(c.bytes.readUInt32BE(4)).toBe(c.bytes.length - 8);
    }
  });

  it('valid requests parse', () => {
    for (const b of validRequests()) expect(parseRequest(decodeTtlv(b)).items).toHaveLength(1);
  });

  it('every case frames, decodes and parses or fails with a codec error only', () => {
    const kinds = new Map<string, { n: number; refused: number }>();
    for (const c of fuzzMessages(1, 3000)) {
      const k = kinds.get(c.kind) ?? { n: 0, refused: 0 };
      kinds.set(c.kind, k);
      k.n++;
      const framer = new TtlvFramer({ maxMessageBytes: 1 << 20 });
      try {
        for (const m of framer.push(c.bytes)) parseRequest(decodeTtlv(m));
      } catch (e) {
        if (!(e instanceof KmipDecodeError) && !(e instanceof KmipFrameError)) throw e;
        k.refused++;
      }
    }
    // Structural attacks must always be refused.
    for (const kind of ['deep-nesting', 'huge-declared-length', 'huge-inner-length', 'not-a-structure', 'wrong-batch-count', 'bad-padding']) {
      const k = kinds.get(kind);
      expect(k, kind).toBeDefined();
      expect(k!.refused, kind).toBe(k!.n);
    }
  });
});
