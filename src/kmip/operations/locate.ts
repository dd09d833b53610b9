/** Locate by Name, Object Type, State, algorithm, length and any stored (custom) attribute. */
import { Tag } from '../tags.js';
import { ItemType, ttlv, type Ttlv } from '../ttlv.js';
import { ResultReason } from '../enums.js';
import { readAttribute, readAttribute2, type Attr } from '../attributes.js';
import { KmipError, field, intField, type OperationHandler } from './context.js';

/** How many identifiers one Locate answers at most without Maximum Items (the message limit bounds it anyway). */
const DEFAULT_MAX = 1000;
/** Only the first this many matches are paged and counted (Located Items): bounds the database's work. */
const SCAN_MAX = 100_000;

export const locate: OperationHandler = async (ctx, payload) => {
  const max = intField(payload, Tag.MaximumItems, 'Maximum Items');
  const offset = intField(payload, Tag.OffsetItems, 'Offset Items') ?? 0;
  if ((max !== undefined && max < 0) || offset < 0) throw new KmipError(ResultReason.InvalidField, 'Maximum Items and Offset Items must not be negative');
  if (field(payload, Tag.ObjectGroupMember)) throw new KmipError(ResultReason.FeatureNotSupported, 'Object Group Member is not supported');
  const attrs: Attr[] = [];
  if (payload && payload.type === ItemType.Structure) {
    for (const c of payload.value) if (c.tag === Tag.Attribute) attrs.push(readAttribute(c));
    const a2 = field(payload, Tag.Attributes);
    if (a2 && a2.type === ItemType.Structure) for (const c of a2.value) attrs.push(readAttribute2(c));
  }
  // Located Items (1.3+): how many objects matched before Offset and Maximum Items were applied.
  const counted = ctx.version.major >= 2 || ctx.version.minor >= 3;
  const { ids, count } = await ctx.objects.locate(ctx.principal, attrs, { offset, limit: Math.min(max ?? DEFAULT_MAX, SCAN_MAX), within: SCAN_MAX, count: counted });
  const out: Ttlv[] = [];
  if (counted) out.push(ttlv.int(Tag.LocatedItems, count ?? 0));
  for (const id of ids) out.push(ttlv.text(Tag.UniqueIdentifier, id));
  return out;
};
