/** Create, Register and ReKey: new keys in the principal's tenant. */
import { Tag } from '../tags.js';
import { ItemType, child, ttlv, type Ttlv } from '../ttlv.js';
import { CryptographicAlgorithm, KeyFormatType, LinkType, ObjectType, ResultReason, SecretDataType, enumName } from '../enums.js';
import { readTemplate, type Attr } from '../attributes.js';
import { KmipError, enumField, field, uniqueId, type OperationHandler } from './context.js';

const AES_LENGTHS = new Set([128, 192, 256]);
const MAX_SECRET = 64 * 1024;

function attrValue(attrs: Attr[], name: string): Ttlv | undefined {
  return attrs.find((a) => a.name === name)?.value;
}

/** An Activation Date at or before now asks for an Active key (KMIP §3.24); a later one is refused. */
function wantsActive(attrs: Attr[]): boolean {
  const d = attrValue(attrs, 'Activation Date');
  if (!d) return false;
  if (d.type !== ItemType.DateTime) throw new KmipError(ResultReason.InvalidField, 'Activation Date must be a Date-Time');
  if (Number(d.value) * 1000 > Date.now() + 1000) throw new KmipError(ResultReason.FeatureNotSupported, 'a future Activation Date is not supported');
  return true;
}

export const create: OperationHandler = async (ctx, payload) => {
  const type = enumField(payload, Tag.ObjectType, 'Object Type');
  if (type === undefined) throw new KmipError(ResultReason.InvalidField, 'Object Type is required');
  if (type !== ObjectType.SymmetricKey) throw new KmipError(ResultReason.InvalidField, `Create makes Symmetric Keys only, not ${enumName(ObjectType, type)}`);
  const attrs = readTemplate(payload);
  const alg = attrValue(attrs, 'Cryptographic Algorithm');
  if (!alg) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Algorithm is required');
  if (alg.type !== ItemType.Enumeration || alg.value !== CryptographicAlgorithm.AES) throw new KmipError(ResultReason.InvalidField, 'only AES keys can be created');
  const len = attrValue(attrs, 'Cryptographic Length');
  if (!len) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Length is required');
  if (len.type !== ItemType.Integer || !AES_LENGTHS.has(len.value)) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Length must be 128, 192 or 256');
  const row = await ctx.objects.create(ctx.principal, ctx.requestId, { length: len.value, attrs, active: wantsActive(attrs) });
  return [ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey), ttlv.text(Tag.UniqueIdentifier, row.id)];
};

/** Key material of a Key Block in one of the formats Register takes. */
function keyMaterial(block: Ttlv, allowed: number[]): { format: number; material: Buffer; algorithm?: number; length?: number } {
  if (block.type !== ItemType.Structure) throw new KmipError(ResultReason.InvalidField, 'Key Block must be a structure');
  const format = enumField(block, Tag.KeyFormatType, 'Key Format Type');
  if (format === undefined) throw new KmipError(ResultReason.InvalidField, 'Key Block needs a Key Format Type');
  if (!allowed.includes(format)) throw new KmipError(ResultReason.KeyFormatTypeNotSupported, `Key Format Type ${enumName(KeyFormatType, format)} is not supported here`);
  if (child(block, Tag.KeyWrappingData)) throw new KmipError(ResultReason.FeatureNotSupported, 'wrapped key material is not supported');
  if (child(block, Tag.KeyCompressionType)) throw new KmipError(ResultReason.KeyCompressionTypeNotSupported, 'key compression is not supported');
  const value = child(block, Tag.KeyValue);
  if (!value || value.type !== ItemType.Structure) throw new KmipError(ResultReason.InvalidField, 'Key Value must be a structure holding Key Material');
  const km = child(value, Tag.KeyMaterial);
  let material: Buffer | undefined;
  if (format === KeyFormatType.TransparentSymmetricKey) {
    const key = km && km.type === ItemType.Structure ? child(km, Tag.Key) : undefined;
    if (key?.type === ItemType.ByteString) material = key.value;
  } else if (km?.type === ItemType.ByteString) material = km.value;
  if (!material || material.length === 0 || material.length > MAX_SECRET) throw new KmipError(ResultReason.InvalidField, 'Key Material is missing or malformed');
  const alg = enumField(block, Tag.CryptographicAlgorithm, 'Cryptographic Algorithm');
  const len = field(block, Tag.CryptographicLength);
  if (len && len.type !== ItemType.Integer) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Length must be an Integer');
  return { format, material, algorithm: alg, length: len?.value as number | undefined };
}

export const register: OperationHandler = async (ctx, payload) => {
  const type = enumField(payload, Tag.ObjectType, 'Object Type');
  const attrs = readTemplate(payload);
  if (type === ObjectType.SymmetricKey) {
    const obj = field(payload, Tag.SymmetricKey);
    const block = obj && obj.type === ItemType.Structure ? child(obj, Tag.KeyBlock) : undefined;
    if (!block) throw new KmipError(ResultReason.InvalidField, 'Symmetric Key with a Key Block is required');
    const k = keyMaterial(block, [KeyFormatType.Raw, KeyFormatType.TransparentSymmetricKey, KeyFormatType.Opaque]);
    const tAlg = attrValue(attrs, 'Cryptographic Algorithm');
    const alg = k.algorithm ?? (tAlg?.type === ItemType.Enumeration ? tAlg.value : undefined);
    if (alg === undefined) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Algorithm is required');
    const algName = enumName(CryptographicAlgorithm, alg);
    if (!(algName in CryptographicAlgorithm)) throw new KmipError(ResultReason.InvalidField, 'unknown Cryptographic Algorithm');
    const bits = k.material.length * 8;
    const tLen = attrValue(attrs, 'Cryptographic Length');
    for (const l of [k.length, tLen?.type === ItemType.Integer ? tLen.value : undefined])
      if (l !== undefined && l !== bits) throw new KmipError(ResultReason.InvalidField, `Cryptographic Length ${l} does not match the ${bits}-bit key material`);
    if (alg === CryptographicAlgorithm.AES && !AES_LENGTHS.has(bits)) throw new KmipError(ResultReason.InvalidField, 'an AES key is 128, 192 or 256 bits');
    const row = await ctx.objects.register(ctx.principal, ctx.requestId, { objectType: 'SymmetricKey', material: k.material, algorithm: algName, length: bits, format: k.format, attrs });
    return [ttlv.text(Tag.UniqueIdentifier, row.id)];
  }
  if (type === ObjectType.SecretData) {
    const obj = field(payload, Tag.SecretData);
    if (!obj || obj.type !== ItemType.Structure) throw new KmipError(ResultReason.InvalidField, 'Secret Data is required');
    const sdt = enumField(obj, Tag.SecretDataType, 'Secret Data Type');
    if (sdt === undefined || !Object.values(SecretDataType).includes(sdt as 1 | 2)) throw new KmipError(ResultReason.InvalidField, 'Secret Data Type must be Password or Seed');
    const block = child(obj, Tag.KeyBlock);
    if (!block) throw new KmipError(ResultReason.InvalidField, 'Secret Data needs a Key Block');
    const k = keyMaterial(block, [KeyFormatType.Opaque, KeyFormatType.Raw]);
    const row = await ctx.objects.register(ctx.principal, ctx.requestId, { objectType: 'SecretData', material: k.material, algorithm: 'none', length: k.material.length * 8, format: k.format, secretDataType: sdt, attrs });
    return [ttlv.text(Tag.UniqueIdentifier, row.id)];
  }
  if (type === undefined) throw new KmipError(ResultReason.InvalidField, 'Object Type is required');
  throw new KmipError(ResultReason.InvalidField, `Register takes Symmetric Keys and Secret Data, not ${enumName(ObjectType, type)}`);
};

/**
 * ReKey: a new key of the same kind with the old one's client attributes, linked both ways. It is
 * Active when the old key was (an Offset is not supported).
 */
export const rekey: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  if (field(payload, Tag.Offset)) throw new KmipError(ResultReason.FeatureNotSupported, 'ReKey with an Offset is not supported');
  const old = await ctx.objects.find(ctx.principal.svm, id);
  if (old.object_type || old.algorithm !== 'AES') throw new KmipError(ResultReason.InvalidField, 'only AES Symmetric Keys can be rekeyed');
  if (old.state !== 'active' && old.state !== 'pre-active' && old.state !== 'deactivated') throw new KmipError(ResultReason.PermissionDenied, `a ${old.state} key cannot be rekeyed`);
  const given = readTemplate(payload);
  const inherited = (await ctx.objects.stored(old)).filter((a) => !a.name.startsWith('_') && a.name !== 'Link' && !given.some((g) => g.name === a.name));
  const row = await ctx.objects.create(ctx.principal, ctx.requestId, {
    length: old.length,
    attrs: [...inherited, ...given.filter((a) => a.name !== 'Cryptographic Algorithm' && a.name !== 'Cryptographic Length')],
    active: old.state === 'active',
    action: 'kmip.rekey',
    links: (tx, created) => ctx.objects.linkRows(ctx.principal.svm.uuid, old.id, created.id, tx, { replacement: LinkType.ReplacementObjectLink, replaced: LinkType.ReplacedObjectLink }),
  });
  return [ttlv.text(Tag.UniqueIdentifier, row.id)];
};
