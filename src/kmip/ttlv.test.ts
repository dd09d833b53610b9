/**
 * TTLV codec units. Expected bytes come from the KMIP 1.x specification's §9.1.2 examples and from
 * the independent builder in ./testing/test-buffers.ts, never from the production encoder.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bytes, hexBytes, raw, T } from './testing/test-buffers.js';
import { decodeTtlv, encodeTtlv, ItemType, KmipDecodeError, ttlv, ttlvEqual, child, children, type Ttlv } from './ttlv.js';
import { arbitraryTtlv } from './testing/arbitraries.js';

const TAG = 0x420020;

/** The examples of KMIP 1.x §9.1.2, each as (item, bytes). */
const SPEC_EXAMPLES: Array<[string, Ttlv, string]> = [
  ['Integer 8', ttlv.int(TAG, 8), '42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00'],
  ['Long Integer 123456789000000000', ttlv.long(TAG, 123456789000000000n), '42 00 20 | 03 | 00 00 00 08 | 01 B6 9B 4B A5 74 92 00'],
  [
    'Big Integer 1234567890000000000000000000',
    ttlv.big(TAG, 1234567890000000000000000000n),
    '42 00 20 | 04 | 00 00 00 10 | 00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00',
  ],
  ['Enumeration 255', ttlv.enumeration(TAG, 255), '42 00 20 | 05 | 00 00 00 04 | 00 00 00 FF 00 00 00 00'],
  ['Boolean True', ttlv.bool(TAG, true), '42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 01'],
  ['Text String "Hello World"', ttlv.text(TAG, 'Hello World'), '42 00 20 | 07 | 00 00 00 0B | 48 65 6C 6C 6F 20 57 6F 72 6C 64 00 00 00 00 00'],
  ['Byte String 01 02 03', ttlv.bytes(TAG, Buffer.from([1, 2, 3])), '42 00 20 | 08 | 00 00 00 03 | 01 02 03 00 00 00 00 00'],
  [
    'Date-Time Friday, March 14, 2008, 11:56:40 GMT',
    ttlv.dateTime(TAG, new Date('2008-03-14T11:56:40Z')),
    '42 00 20 | 09 | 00 00 00 08 | 00 00 00 00 47 DA 67 F8',
  ],
  ['Interval 10 days', ttlv.interval(TAG, 10 * 24 * 3600), '42 00 20 | 0A | 00 00 00 04 | 00 0D 2F 00 00 00 00 00'],
  [
    'Structure { Enumeration 254, Integer 255 }',
    ttlv.struct(TAG, [ttlv.enumeration(0x420004, 254), ttlv.int(0x420005, 255)]),
    '42 00 20 | 01 | 00 00 00 20 | 42 00 04 | 05 | 00 00 00 04 | 00 00 00 FE 00 00 00 00 | 42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00',
  ],
];

describe('TTLV: the specification examples', () => {
  for (const [name, item, hex] of SPEC_EXAMPLES) {
    it(`${name}: encodes and decodes byte-exactly`, () => {
      const expected = bytes(hexBytes(hex));
      expect(encodeTtlv(item).toString('hex')).toBe(expected.toString('hex'));
      expect(ttlvEqual(decodeTtlv(expected), item)).toBe(true);
    });
  }
});

describe('TTLV: every item type against the independent builder', () => {
  const cases: Array<[string, Ttlv, number[]]> = [
    ['negative Integer', ttlv.int(TAG, -2), T.int(TAG, -2)],
    ['Integer min', ttlv.int(TAG, -0x80000000), T.int(TAG, -0x80000000)],
    ['Enumeration max (extension range)', ttlv.enumeration(TAG, 0x80000001), T.enumeration(TAG, 0x80000001)],
    ['negative Long Integer', ttlv.long(TAG, -1n), T.long(TAG, -1n)],
    ['Big Integer 0', ttlv.big(TAG, 0n), T.bigHex(TAG, '0000000000000000')],
    ['Big Integer -1', ttlv.big(TAG, -1n), T.bigHex(TAG, 'FFFFFFFFFFFFFFFF')],
    ['Big Integer 2^63 needs 16 bytes', ttlv.big(TAG, 1n << 63n), T.bigHex(TAG, '00000000000000008000000000000000')],
    ['Big Integer -2^63 fits 8 bytes', ttlv.big(TAG, -(1n << 63n)), T.bigHex(TAG, '8000000000000000')],
    ['Boolean false', ttlv.bool(TAG, false), T.bool(TAG, false)],
    ['empty Text String', ttlv.text(TAG, ''), T.text(TAG, '')],
    ['8-byte Text String has no padding', ttlv.text(TAG, 'abcdefgh'), T.text(TAG, 'abcdefgh')],
    ['UTF-8 Text String', ttlv.text(TAG, 'Schlüssel 🔑'), T.text(TAG, 'Schlüssel 🔑')],
    ['empty Byte String', ttlv.bytes(TAG, Buffer.alloc(0)), T.bytes(TAG, [])],
    ['32-byte Byte String', ttlv.bytes(TAG, Buffer.alloc(32, 0xab)), T.bytes(TAG, new Array(32).fill(0xab))],
    ['negative Date-Time', ttlv.dateTime(TAG, -1n), T.dateTime(TAG, -1n)],
    ['Date-Time Extended (2.x)', ttlv.dateTimeExt(TAG, 1_700_000_000_123_456n), T.dateTimeExt(TAG, 1_700_000_000_123_456n)],
    ['Interval max', ttlv.interval(TAG, 0xffffffff), T.interval(TAG, 0xffffffff)],
    ['empty Structure', ttlv.struct(TAG, []), T.struct(TAG)],
    [
      'nested Structures',
      ttlv.struct(0x420078, [ttlv.struct(0x420077, [ttlv.int(0x42000d, 1)]), ttlv.struct(0x42000f, [ttlv.text(0x420094, 'id-1')])]),
      T.struct(0x420078, T.struct(0x420077, T.int(0x42000d, 1)), T.struct(0x42000f, T.text(0x420094, 'id-1'))),
    ],
    ['extension tag', ttlv.text(0x540001, 'x'), T.text(0x540001, 'x')],
  ];
  for (const [name, item, b] of cases) {
    it(name, () => {
      const expected = bytes(b);
      expect(encodeTtlv(item).toString('hex')).toBe(expected.toString('hex'));
      expect(ttlvEqual(decodeTtlv(expected), item)).toBe(true);
    });
  }

  it('Big Integer accepts a non-minimal sign extension', () => {
    expect(decodeTtlv(bytes(T.bigHex(TAG, 'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFE')))).toEqual({ tag: TAG, type: ItemType.BigInteger, value: -2n });
  });

  it('decoded Byte Strings do not alias the input buffer', () => {
    const input = bytes(T.bytes(TAG, [1, 2, 3]));
    const item = decodeTtlv(input);
    input.fill(0xee);
    expect(item.value).toEqual(Buffer.from([1, 2, 3]));
  });

  it('child and children find items by tag', () => {
    const s = ttlv.struct(TAG, [ttlv.int(1, 1), ttlv.int(2, 2), ttlv.int(1, 3)]);
    expect(child(s, 1)?.value).toBe(1);
    expect(children(s, 1).map((c) => c.value)).toEqual([1, 3]);
    expect(child(s, 9)).toBeUndefined();
    expect(child(ttlv.int(1, 1), 1)).toBeUndefined();
  });
});

function refused(b: number[] | Buffer, limits?: { maxDepth?: number; maxItems?: number }): string {
  try {
    decodeTtlv(Buffer.isBuffer(b) ? b : bytes(b), limits);
  } catch (e) {
    expect(e).toBeInstanceOf(KmipDecodeError);
    return (e as Error).message;
  }
  throw new Error('decoded without error');
}

describe('TTLV: strict decoding refuses malformed input', () => {
  it('Integer, Enumeration and Interval must declare length 4', () => {
    for (const type of [0x02, 0x05, 0x0a]) {
      refused(raw(TAG, type, [0, 0, 0, 1, 0, 0, 0, 0], { declaredLength: 8 }));
      refused(raw(TAG, type, [0, 0, 1, 0, 0, 0, 0, 0], { declaredLength: 3 }));
    }
  });
  it('Integer padding must be zero', () => {
    expect(refused(T.int(TAG, 8, { padByte: 1 }))).toMatch(/padding/);
    expect(refused(T.enumeration(TAG, 8, { padByte: 0xff }))).toMatch(/padding/);
  });
  it('Long Integer, Date-Time, Date-Time Extended and Boolean must declare length 8', () => {
    for (const type of [0x03, 0x06, 0x09, 0x0b]) refused(raw(TAG, type, [0, 0, 0, 0, 0, 0, 0, 0], { declaredLength: 4 }));
  });
  it('Boolean must be 0 or 1', () => {
    expect(refused(T.bool(TAG, 2))).toMatch(/Boolean/);
    refused(raw(TAG, 0x06, [1, 0, 0, 0, 0, 0, 0, 0]));
  });
  it('Big Integer length must be a positive multiple of 8', () => {
    refused(raw(TAG, 0x04, []));
    refused(raw(TAG, 0x04, [0, 0, 0, 0, 1], {}));
  });
  it('Text and Byte String padding must be zero', () => {
    expect(refused(T.text(TAG, 'abc', { padByte: 0x20 }))).toMatch(/padding/);
    expect(refused(T.bytes(TAG, [1], { padByte: 1 }))).toMatch(/padding/);
  });
  it('Text and Byte Strings must carry their padding', () => {
    refused(T.text(TAG, 'abc', { noPadding: true }));
    refused(T.bytes(TAG, [1, 2, 3], { noPadding: true }));
  });
  it('Text String must be valid UTF-8', () => {
    expect(refused(raw(TAG, 0x07, [0xc3, 0x28]))).toMatch(/UTF-8/);
    refused(raw(TAG, 0x07, [0xed, 0xa0, 0x80])); // a lone surrogate
  });
  it('unknown item types are refused', () => {
    for (const type of [0x00, 0x0c, 0x20, 0xff]) expect(refused(raw(TAG, type, [0, 0, 0, 0, 0, 0, 0, 0]))).toMatch(/unknown item type/);
  });
  it('truncated input is refused', () => {
    const whole = T.struct(TAG, T.int(1, 5), T.text(2, 'hello'));
    for (let n = 0; n < whole.length; n++) refused(whole.slice(0, n));
  });
  it('trailing bytes are refused', () => {
    expect(refused([...T.int(TAG, 1), 0, 0, 0, 0, 0, 0, 0, 0])).toMatch(/trailing/);
    refused([...T.int(TAG, 1), ...T.int(TAG, 2)]);
  });
  it('a child overrunning its parent is refused', () => {
    // The parent declares 16 bytes, its child declares a 16-byte value (24 bytes with header).
    const childBytes = T.bytes(1, new Array(16).fill(7));
    refused([...raw(TAG, 0x01, childBytes, { declaredLength: 16 })]);
  });
  it('a structure whose length is not a multiple of 8 is refused', () => {
    refused(raw(TAG, 0x01, [...T.int(1, 1), 0, 0, 0, 0], { noPadding: true }));
  });
  it('a huge declared length does not allocate, it is refused', () => {
    expect(refused(raw(TAG, 0x08, [], { declaredLength: 0xffffffff, noPadding: true }))).toMatch(/declares/);
    refused(raw(TAG, 0x01, [], { declaredLength: 0xfffffff8 }));
  });
  it('nesting deeper than maxDepth is refused', () => {
    let b = T.int(1, 1);
    for (let i = 0; i < 40; i++) b = T.struct(TAG, b);
    expect(refused(b)).toMatch(/nesting/); // default limit 32
    expect(decodeTtlv(bytes(b), { maxDepth: 41 }).tag).toBe(TAG);
    refused(b, { maxDepth: 40 });
  });
  it('more than maxItems items are refused', () => {
    const many = T.struct(TAG, ...Array.from({ length: 100 }, (_, i) => T.int(1, i)));
    expect(decodeTtlv(bytes(many), { maxItems: 101 }).tag).toBe(TAG);
    expect(refused(many, { maxItems: 100 })).toMatch(/items/);
  });
});

describe('TTLV: the encoder refuses values out of range', () => {
  it('throws RangeError, never writes a wrong item', () => {
    expect(() => encodeTtlv(ttlv.int(TAG, 2 ** 31))).toThrow(RangeError);
    expect(() => encodeTtlv(ttlv.int(TAG, 1.5))).toThrow(RangeError);
    expect(() => encodeTtlv(ttlv.enumeration(TAG, -1))).toThrow(RangeError);
    expect(() => encodeTtlv(ttlv.interval(TAG, 2 ** 32))).toThrow(RangeError);
    expect(() => encodeTtlv(ttlv.long(TAG, 1n << 63n))).toThrow(RangeError);
    expect(() => encodeTtlv(ttlv.int(0x1000000, 1))).toThrow(RangeError);
    expect(() => encodeTtlv(ttlv.text(TAG, 'a\ud800b'))).toThrow(RangeError);
  });
});

describe('TTLV: properties', () => {
  it('decode(encode(x)) = x for any item', () => {
    fc.assert(
      fc.property(arbitraryTtlv(), (item) => {
        const enc = encodeTtlv(item);
        expect(enc.length % 8).toBe(0);
        expect(ttlvEqual(decodeTtlv(enc), item)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('random bytes only ever raise KmipDecodeError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), (b) => {
        try {
          decodeTtlv(Buffer.from(b));
        } catch (e) {
          if (!(e instanceof KmipDecodeError)) throw e;
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('valid encodings with bytes flipped, cut or extended only ever raise KmipDecodeError', () => {
    fc.assert(
      fc.property(arbitraryTtlv(), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.integer({ min: -16, max: 16 }), (item, flips, cut) => {
        const b = Buffer.from(encodeTtlv(item));
        for (const [pos, v] of flips) b[pos % b.length] = v;
        const mutated = cut < 0 ? b.subarray(0, Math.max(0, b.length + cut)) : Buffer.concat([b, Buffer.alloc(cut, 0)]);
        try {
          const back = decodeTtlv(mutated);
          // Whatever decodes must re-encode to exactly the bytes it came from, except Big
          // Integers, whose sign extension may be non-minimal.
          if (!JSON.stringify(back, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)).includes('"type":4')) {
            expect(encodeTtlv(back).equals(mutated)).toBe(true);
          }
        } catch (e) {
          if (!(e instanceof KmipDecodeError)) throw e;
        }
      }),
      { numRuns: 1000 },
    );
  });
});
