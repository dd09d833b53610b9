/** Add, Modify and Delete Attribute (1.x Attribute structures; 2.x New/Current Attribute, Attribute Reference). */
import { Tag } from '../tags.js';
import { ItemType, ttlv, type Ttlv } from '../ttlv.js';
import { ResultReason } from '../enums.js';
import { readAttribute, readAttribute2, readAttributeNames, searchValue, writeAttribute } from '../attributes.js';
import { KmipError, field, intField, uniqueId, type OperationHandler } from './context.js';

function inner(payload: Ttlv | undefined, tag: number, what: string): Ttlv | undefined {
  const f = field(payload, tag);
  if (!f) return undefined;
  if (f.type !== ItemType.Structure || f.value.length !== 1) throw new KmipError(ResultReason.InvalidField, `${what} must hold exactly one attribute`);
  return f.value[0];
}

export const addAttribute: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const raw = ctx.v2 ? inner(payload, Tag.NewAttribute, 'New Attribute') : field(payload, Tag.Attribute);
  if (!raw) throw new KmipError(ResultReason.InvalidField, ctx.v2 ? 'New Attribute is required' : 'Attribute is required');
  const a = ctx.v2 ? readAttribute2(raw) : readAttribute(raw);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  const added = await ctx.objects.addAttribute(ctx.principal, ctx.requestId, row, a);
  return ctx.v2 ? [ttlv.text(Tag.UniqueIdentifier, row.id)] : [ttlv.text(Tag.UniqueIdentifier, row.id), writeAttribute(added)];
};

export const modifyAttribute: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  if (!ctx.v2) {
    const raw = field(payload, Tag.Attribute);
    if (!raw) throw new KmipError(ResultReason.InvalidField, 'Attribute is required');
    const a = readAttribute(raw);
    const done = await ctx.objects.modifyAttribute(ctx.principal, ctx.requestId, row, a);
    return [ttlv.text(Tag.UniqueIdentifier, row.id), writeAttribute(done)];
  }
  const next = inner(payload, Tag.NewAttribute, 'New Attribute');
  if (!next) throw new KmipError(ResultReason.InvalidField, 'New Attribute is required');
  const a = readAttribute2(next);
  const cur = inner(payload, Tag.CurrentAttribute, 'Current Attribute');
  if (cur) {
    const c = readAttribute2(cur);
    const want = searchValue(c.name, c.value);
    const hit = (await ctx.objects.stored(row)).find((s) => s.name === c.name && searchValue(s.name, s.value) === want);
    if (!hit) throw new KmipError(ResultReason.AttributeNotFound, `${c.name} has no such value`);
    a.index = hit.index;
  }
  await ctx.objects.modifyAttribute(ctx.principal, ctx.requestId, row, a);
  return [ttlv.text(Tag.UniqueIdentifier, row.id)];
};

export const deleteAttribute: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  if (!ctx.v2) {
    const name = field(payload, Tag.AttributeName);
    if (!name || name.type !== ItemType.TextString) throw new KmipError(ResultReason.InvalidField, 'Attribute Name is required');
    const index = intField(payload, Tag.AttributeIndex, 'Attribute Index') ?? 0;
    const gone = await ctx.objects.deleteAttribute(ctx.principal, ctx.requestId, row, name.value, index);
    return [ttlv.text(Tag.UniqueIdentifier, row.id), writeAttribute(gone)];
  }
  const cur = inner(payload, Tag.CurrentAttribute, 'Current Attribute');
  if (cur) {
    const c = readAttribute2(cur);
    const want = searchValue(c.name, c.value);
    const hit = (await ctx.objects.stored(row)).find((s) => s.name === c.name && searchValue(s.name, s.value) === want);
    if (!hit) throw new KmipError(ResultReason.AttributeNotFound, `${c.name} has no such value`);
    await ctx.objects.deleteAttribute(ctx.principal, ctx.requestId, row, c.name, hit.index);
  } else {
    const [name] = readAttributeNames(payload);
    if (!name) throw new KmipError(ResultReason.InvalidField, 'Current Attribute or Attribute Reference is required');
    await ctx.objects.deleteAttribute(ctx.principal, ctx.requestId, row, name, 0);
  }
  return [ttlv.text(Tag.UniqueIdentifier, row.id)];
};
