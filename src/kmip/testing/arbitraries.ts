/** fast-check arbitraries for TTLV items (tests only). */
import fc from 'fast-check';
import { ItemType, type Ttlv } from '../ttlv.js';

const tagArb = fc.oneof(fc.integer({ min: 0x420001, max: 0x420176 }), fc.integer({ min: 0x540000, max: 0x54ffff }), fc.integer({ min: 0, max: 0xffffff }));
const isWellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed();
const int64 = fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n });

export function arbitraryPrimitive(): fc.Arbitrary<Ttlv> {
  return fc.oneof(
    fc.record({ tag: tagArb, type: fc.constant(ItemType.Integer as const), value: fc.integer({ min: -0x80000000, max: 0x7fffffff }) }),
    fc.record({ tag: tagArb, type: fc.constantFrom(ItemType.Enumeration as const, ItemType.Interval as const), value: fc.integer({ min: 0, max: 0xffffffff }) }),
    fc.record({ tag: tagArb, type: fc.constant(ItemType.LongInteger as const), value: int64 }),
    fc.record({ tag: tagArb, type: fc.constant(ItemType.BigInteger as const), value: fc.bigInt({ min: -(1n << 300n), max: 1n << 300n }) }),
    fc.record({ tag: tagArb, type: fc.constant(ItemType.DateTime as const), value: int64 }),
    fc.record({ tag: tagArb, type: fc.constant(ItemType.DateTimeExtended as const), value: int64 }),
    fc.record({ tag: tagArb, type: fc.constant(ItemType.Boolean as const), value: fc.boolean() }),
    fc.record({ tag: tagArb, type: fc.constant(ItemType.TextString as const), value: fc.string({ unit: 'binary', maxLength: 40 }).filter(isWellFormed) }),
    fc.record({ tag: tagArb, type: fc.constant(ItemType.ByteString as const), value: fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)) }),
  ) as fc.Arbitrary<Ttlv>;
}

/** Any item, structures nested up to `maxDepth` levels. */
export function arbitraryTtlv(maxDepth = 4): fc.Arbitrary<Ttlv> {
  const { item } = fc.letrec<{ item: Ttlv; structure: Ttlv }>((tie) => ({
    item: fc.oneof({ depthSize: 'small', maxDepth, withCrossShrink: true }, arbitraryPrimitive(), tie('structure')),
    structure: fc.record({
      tag: tagArb,
      type: fc.constant(ItemType.Structure as const),
      value: fc.array(tie('item'), { maxLength: 5 }),
    }) as fc.Arbitrary<Ttlv>,
  }));
  return item;
}
