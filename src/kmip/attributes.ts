/**
 * KMIP attributes, one internal model for both encodings:
 * - 1.x: Attribute { Attribute Name (text), Attribute Index (optional), Attribute Value }, grouped
 *   in a Template-Attribute for Create/Register;
 * - 2.x: an Attributes structure whose children are the values themselves, each under its own
 *   attribute tag (Cryptographic Algorithm, Name, …), referred to by Attribute Reference.
 * Internally an attribute is { name, index, value } with the value tagged Attribute Value, which is
 * also how it is stored (kmip_attributes.raw).
 */
import { AttributeName as AN } from './enums.js';
import { Tag } from './tags.js';
import { ItemType, child, encodeTtlv, ttlv, type Ttlv } from './ttlv.js';
import { KmipError } from './operations/context.js';
import { ResultReason } from './enums.js';

export interface Attr {
  name: string;
  index: number;
  /** Tagged Attribute Value. */
  value: Ttlv;
}

const NAME_TO_TAG = new Map<string, number>();
const TAG_TO_NAME = new Map<number, string>();
for (const [key, name] of Object.entries(AN)) {
  const tag = (Tag as Record<string, number>)[key];
  if (tag !== undefined) {
    NAME_TO_TAG.set(name, tag);
    TAG_TO_NAME.set(tag, name);
  }
}

export const attrTag = (name: string): number | undefined => NAME_TO_TAG.get(name);
export const attrNameOfTag = (tag: number): string | undefined => TAG_TO_NAME.get(tag);

/** The same item under another tag (children of a structure keep theirs). */
export function retag(v: Ttlv, tag: number): Ttlv {
  return { ...v, tag } as Ttlv;
}

export function isCustomName(name: string): boolean {
  return /^[xy]-./.test(name);
}

/** Reads a 1.x Attribute structure. */
export function readAttribute(t: Ttlv): Attr {
  if (t.type !== ItemType.Structure) throw new KmipError(ResultReason.InvalidField, 'Attribute is not a structure');
  const name = child(t, Tag.AttributeName);
  const index = child(t, Tag.AttributeIndex);
  const value = child(t, Tag.AttributeValue);
  if (!name || name.type !== ItemType.TextString || name.value.length === 0) throw new KmipError(ResultReason.InvalidField, 'Attribute needs an Attribute Name');
  if (index && (index.type !== ItemType.Integer || index.value < 0)) throw new KmipError(ResultReason.InvalidField, 'Attribute Index must be a non-negative Integer');
  if (!value) throw new KmipError(ResultReason.InvalidField, `Attribute ${name.value} has no Attribute Value`);
  return { name: name.value, index: index ? (index.value as number) : 0, value };
}

/** Writes a 1.x Attribute structure. */
export function writeAttribute(a: Attr, withIndex = true): Ttlv {
  const items: Ttlv[] = [ttlv.text(Tag.AttributeName, a.name)];
  if (withIndex) items.push(ttlv.int(Tag.AttributeIndex, a.index));
  items.push(retag(a.value, Tag.AttributeValue));
  return ttlv.struct(Tag.Attribute, items);
}

/** Reads one 2.x attribute item (a child of Attributes, New Attribute, Current Attribute). */
export function readAttribute2(t: Ttlv): Attr {
  const name = attrNameOfTag(t.tag);
  if (!name) throw new KmipError(ResultReason.InvalidField, `unsupported attribute tag 0x${t.tag.toString(16)}`);
  return { name, index: 0, value: retag(t, Tag.AttributeValue) };
}

export function writeAttribute2(a: Attr): Ttlv | undefined {
  const tag = attrTag(a.name);
  return tag === undefined ? undefined : retag(a.value, tag);
}

/**
 * Attributes of a Create/Register/ReKey payload: a 1.x Template-Attribute (its Name children are
 * template names, not supported) or a 2.x Attributes structure. Several values of one name get
 * consecutive indexes unless the client gave them.
 */
export function readTemplate(payload: Ttlv | undefined): Attr[] {
  if (!payload || payload.type !== ItemType.Structure) return [];
  const out: Attr[] = [];
  const t1 = child(payload, Tag.TemplateAttribute);
  if (t1 && t1.type === ItemType.Structure) {
    for (const c of t1.value) {
      if (c.tag === Tag.Attribute) out.push(readAttribute(c));
      else if (c.tag === Tag.Name) throw new KmipError(ResultReason.FeatureNotSupported, 'templates are not supported');
    }
  }
  const t2 = child(payload, Tag.Attributes);
  if (t2 && t2.type === ItemType.Structure) for (const c of t2.value) out.push(readAttribute2(c));
  return normaliseIndexes(out);
}

export function normaliseIndexes(attrs: Attr[]): Attr[] {
  const seen = new Map<string, Set<number>>();
  for (const a of attrs) {
    const s = seen.get(a.name) ?? new Set<number>();
    let i = a.index;
    while (s.has(i)) i += 1;
    s.add(i);
    seen.set(a.name, s);
    a.index = i;
  }
  return attrs;
}

/** Text form used to match attribute values in Locate (and stored beside the raw value). */
export function searchValue(name: string, v: Ttlv): string {
  if (name === 'Name' && v.type === ItemType.Structure) {
    const nv = child(v, Tag.NameValue);
    if (nv && nv.type === ItemType.TextString) return nv.value;
  }
  switch (v.type) {
    case ItemType.TextString:
      return v.value;
    case ItemType.Integer:
    case ItemType.Enumeration:
    case ItemType.Interval:
    case ItemType.LongInteger:
    case ItemType.BigInteger:
    case ItemType.DateTime:
    case ItemType.DateTimeExtended:
      return v.value.toString();
    case ItemType.Boolean:
      return v.value ? 'true' : 'false';
    case ItemType.ByteString:
      return v.value.toString('hex');
    case ItemType.Structure:
      return encodeTtlv(retag(v, Tag.AttributeValue)).toString('hex');
  }
}

/** The value a client reads back for a 1.x text attribute, or undefined. */
export function textOf(v: Ttlv | undefined): string | undefined {
  return v && v.type === ItemType.TextString ? v.value : undefined;
}

/** Attribute Reference(s) of a 2.x request, or Attribute Name(s) of a 1.x one, as names. */
export function readAttributeNames(payload: Ttlv | undefined): string[] {
  if (!payload || payload.type !== ItemType.Structure) return [];
  const out: string[] = [];
  for (const c of payload.value) {
    if (c.tag === Tag.AttributeName && c.type === ItemType.TextString) out.push(c.value);
    else if (c.tag === Tag.AttributeReference) {
      if (c.type === ItemType.Enumeration) {
        const n = attrNameOfTag(c.value);
        if (!n) throw new KmipError(ResultReason.InvalidField, `unknown Attribute Reference 0x${c.value.toString(16)}`);
        out.push(n);
      } else if (c.type === ItemType.Structure) {
        const vid = textOf(child(c, Tag.VendorIdentification)) ?? '';
        const an = textOf(child(c, Tag.AttributeName));
        if (!an) throw new KmipError(ResultReason.InvalidField, 'Attribute Reference needs an Attribute Name');
        out.push(isCustomName(an) || vid === '' ? an : `${vid}-${an}`);
      }
    }
  }
  return out;
}

export function attributeReference(name: string): Ttlv | undefined {
  const tag = attrTag(name);
  if (tag !== undefined) return ttlv.enumeration(Tag.AttributeReference, tag);
  return undefined;
}
