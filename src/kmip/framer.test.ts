/**
 * Framer units: every message split at every offset (and in three at every pair of offsets for
 * small ones), several messages per chunk, byte-by-byte, and the size and type refusals that
 * happen from the header alone.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KmipFrameError, TtlvFramer } from './framer.js';
import { bytes, raw, T } from './testing/test-buffers.js';
import { decodeTtlv, encodeTtlv, ItemType, KmipDecodeError } from './ttlv.js';
import { arbitraryTtlv } from './testing/arbitraries.js';

const REQ = 0x420078;
const small = bytes(T.struct(REQ, T.struct(0x420077, T.int(0x42000d, 1)), T.struct(0x42000f, T.enumeration(0x42005c, 0x1e))));
const medium = bytes(
  T.struct(REQ, T.text(0x420094, 'a'.repeat(37)), T.bytes(0x420043, Array.from({ length: 90 }, (_, i) => i)), T.struct(0x42000f, T.int(1, 2), T.bool(2, true))),
);

function collect(framer: TtlvFramer, chunks: Buffer[]): Buffer[] {
  return chunks.flatMap((c) => framer.push(c));
}

describe('TtlvFramer', () => {
  for (const [name, msg] of [
    ['small', small],
    ['medium', medium],
  ] as const) {
    it(`${name} message: split in two at every offset`, () => {
      for (let i = 0; i <= msg.length; i++) {
        const out = collect(new TtlvFramer({ maxMessageBytes: 4096 }), [msg.subarray(0, i), msg.subarray(i)]);
        expect(out.length).toBe(1);
        expect(out[0].equals(msg)).toBe(true);
      }
    });

    it(`${name} message: two messages back to back, split at every offset`, () => {
      const two = Buffer.concat([msg, msg]);
      for (let i = 0; i <= two.length; i++) {
        const out = collect(new TtlvFramer({ maxMessageBytes: 4096 }), [two.subarray(0, i), two.subarray(i)]);
        expect(out.length).toBe(2);
        for (const m of out) expect(m.equals(msg)).toBe(true);
      }
    });

    it(`${name} message: byte by byte`, () => {
      const framer = new TtlvFramer({ maxMessageBytes: 4096 });
      const out: Buffer[] = [];
      for (let i = 0; i < msg.length; i++) {
        const got = framer.push(msg.subarray(i, i + 1));
        if (i < msg.length - 1) expect(got).toEqual([]);
        out.push(...got);
      }
      expect(out.length).toBe(1);
      expect(out[0].equals(msg)).toBe(true);
      expect(framer.bufferedBytes).toBe(0);
    });
  }

  it('small message: split in three at every pair of offsets', () => {
    for (let i = 0; i <= small.length; i++) {
      for (let j = i; j <= small.length; j++) {
        const out = collect(new TtlvFramer({ maxMessageBytes: 4096 }), [small.subarray(0, i), small.subarray(i, j), small.subarray(j)]);
        expect(out.length).toBe(1);
        expect(out[0].equals(small)).toBe(true);
      }
    }
  });

  it('returned messages decode, and survive later chunks reusing nothing', () => {
    const framer = new TtlvFramer({ maxMessageBytes: 4096 });
    const [m] = framer.push(Buffer.concat([small, medium.subarray(0, 10)]));
    expect(decodeTtlv(m).tag).toBe(REQ);
    const [m2] = framer.push(medium.subarray(10));
    expect(m2.equals(medium)).toBe(true);
  });

  it('refuses a declared length over the maximum from the header alone', () => {
    const framer = new TtlvFramer({ maxMessageBytes: 1024 });
    // Only the 8-byte header of a message announcing almost 4 GiB: refused before any body arrives.
    const header = bytes(raw(REQ, 0x01, [], { declaredLength: 0xfffffff8 })).subarray(0, 8);
    expect(() => framer.push(header)).toThrow(KmipFrameError);
    expect(framer.bufferedBytes).toBe(0);
  });

  it('accepts exactly the maximum and refuses one block more', () => {
    const exact = bytes(T.struct(REQ, T.bytes(1, new Array(1016 - 8).fill(1))));
    expect(exact.length).toBe(1024);
    expect(new TtlvFramer({ maxMessageBytes: 1024 }).push(exact)).toHaveLength(1);
    const over = bytes(T.struct(REQ, T.bytes(1, new Array(1016).fill(1))));
    expect(() => new TtlvFramer({ maxMessageBytes: 1024 }).push(over)).toThrow(KmipFrameError);
  });

  it('refuses an outer item that is not a Structure, even split inside the header', () => {
    const msg = bytes(T.int(REQ, 1));
    const framer = new TtlvFramer({ maxMessageBytes: 1024 });
    expect(framer.push(msg.subarray(0, 3))).toEqual([]);
    expect(() => framer.push(msg.subarray(3))).toThrow(/not a Structure/);
  });

  it('stays failed after a frame error', () => {
    const framer = new TtlvFramer({ maxMessageBytes: 64 });
    expect(() => framer.push(bytes(raw(REQ, 0x01, [], { declaredLength: 4096 })))).toThrow(KmipFrameError);
    expect(() => framer.push(small)).toThrow(KmipFrameError);
  });

  it('refuses a nonsensical maximum', () => {
    expect(() => new TtlvFramer({ maxMessageBytes: 4 })).toThrow(RangeError);
  });

  it('property: any chunking of any sequence of messages yields the same messages', () => {
    const structArb = arbitraryTtlv(3).map((item) => ({ tag: REQ, type: ItemType.Structure as const, value: [item] }));
    fc.assert(
      fc.property(fc.array(structArb, { minLength: 1, maxLength: 4 }), fc.array(fc.nat(), { maxLength: 8 }), (items, cuts) => {
        const msgs = items.map((i) => encodeTtlv(i));
        const all = Buffer.concat(msgs);
        const offsets = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const o of [...offsets, all.length]) {
          chunks.push(all.subarray(prev, o));
          prev = o;
        }
        const out = collect(new TtlvFramer({ maxMessageBytes: 1 << 20 }), chunks);
        expect(out.map((b) => b.toString('hex'))).toEqual(msgs.map((b) => b.toString('hex')));
      }),
      { numRuns: 300 },
    );
  });

  it('property: random bytes only ever raise KmipFrameError (framing) or KmipDecodeError (decoding)', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 6 }), (chunks) => {
        const framer = new TtlvFramer({ maxMessageBytes: 256 });
        try {
          for (const c of chunks) for (const m of framer.push(Buffer.from(c))) decodeTtlv(m);
        } catch (e) {
          if (!(e instanceof KmipFrameError) && !(e instanceof KmipDecodeError)) throw e;
        }
      }),
      { numRuns: 2000 },
    );
  });
});
