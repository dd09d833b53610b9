/** Get, Get Attributes, Get Attribute List and Check. */
import { Tag } from '../tags.js';
import { ttlv, type Ttlv } from '../ttlv.js';
import { CryptographicAlgorithm, KeyFormatType, ObjectType, ResultReason, enumName } from '../enums.js';
import { attributeReference, readAttributeNames, writeAttribute, writeAttribute2, type Attr } from '../attributes.js';
import { objectTypeOf } from '../kmip-object-service.js';
import { KmipError, enumField, field, intField, uniqueId, type OperationHandler } from './context.js';

export const get: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  if (field(payload, Tag.KeyWrappingSpecification)) throw new KmipError(ResultReason.FeatureNotSupported, 'key wrapping on Get is not supported');
  if (field(payload, Tag.KeyCompressionType)) throw new KmipError(ResultReason.KeyCompressionTypeNotSupported, 'key compression is not supported');
  const asked = enumField(payload, Tag.KeyFormatType, 'Key Format Type');
  const row = await ctx.objects.find(ctx.principal.svm, id);
  if (!row.wrapped) throw new KmipError(ResultReason.KeyValueNotPresent, `object ${id} has been destroyed`);
  const type = objectTypeOf(row);
  const format = asked ?? (type === ObjectType.SecretData ? ((await ctx.objects.registeredFormat(row)) ?? KeyFormatType.Opaque) : KeyFormatType.Raw);
  const allowed: number[] = type === ObjectType.SecretData ? [KeyFormatType.Opaque, KeyFormatType.Raw] : [KeyFormatType.Raw, KeyFormatType.TransparentSymmetricKey];
  if (!allowed.includes(format)) throw new KmipError(ResultReason.KeyFormatTypeNotSupported, `Key Format Type ${enumName(KeyFormatType, format)} is not available for this object`);
  const material = await ctx.objects.material(ctx.principal, ctx.requestId, row, 'get', ctx.deferAudit);
  const km = format === KeyFormatType.TransparentSymmetricKey ? ttlv.struct(Tag.KeyMaterial, [ttlv.bytes(Tag.Key, material)]) : ttlv.bytes(Tag.KeyMaterial, material);
  const blockItems: Ttlv[] = [ttlv.enumeration(Tag.KeyFormatType, format), ttlv.struct(Tag.KeyValue, [km])];
  const alg = (CryptographicAlgorithm as Record<string, number>)[row.algorithm];
  let obj: Ttlv;
  if (type === ObjectType.SecretData) {
    obj = ttlv.struct(Tag.SecretData, [ttlv.enumeration(Tag.SecretDataType, (await ctx.objects.secretDataType(row)) ?? 2), ttlv.struct(Tag.KeyBlock, blockItems)]);
  } else {
    if (alg !== undefined) blockItems.push(ttlv.enumeration(Tag.CryptographicAlgorithm, alg));
    blockItems.push(ttlv.int(Tag.CryptographicLength, row.length));
    obj = ttlv.struct(Tag.SymmetricKey, [ttlv.struct(Tag.KeyBlock, blockItems)]);
  }
  return [ttlv.enumeration(Tag.ObjectType, type), ttlv.text(Tag.UniqueIdentifier, row.id), obj];
};

/** Attributes in the request's encoding: 1.x Attribute structures, or one 2.x Attributes structure. */
export function encodeAttributes(v2: boolean, attrs: Attr[]): Ttlv[] {
  if (!v2) return attrs.map((a) => writeAttribute(a));
  return [ttlv.struct(Tag.Attributes, attrs.map(writeAttribute2).filter((x): x is Ttlv => x !== undefined))];
}

export const getAttributes: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const names = readAttributeNames(payload);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  const all = await ctx.objects.attributes(row);
  const picked = names.length === 0 ? all : all.filter((a) => names.includes(a.name));
  return [ttlv.text(Tag.UniqueIdentifier, row.id), ...encodeAttributes(ctx.v2, picked)];
};

export const getAttributeList: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  const names = [...new Set((await ctx.objects.attributes(row)).map((a) => a.name))];
  const items = ctx.v2 ? names.map(attributeReference).filter((x): x is Ttlv => x !== undefined) : names.map((n) => ttlv.text(Tag.AttributeName, n));
  return [ttlv.text(Tag.UniqueIdentifier, row.id), ...items];
};

/** Check: the object exists, has material, and its usage mask allows what the client names. */
export const check: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const mask = intField(payload, Tag.CryptographicUsageMask, 'Cryptographic Usage Mask');
  if (field(payload, Tag.UsageLimitsCount) || field(payload, Tag.LeaseTime)) throw new KmipError(ResultReason.FeatureNotSupported, 'usage limits and leases are not supported');
  const row = await ctx.objects.find(ctx.principal.svm, id);
  if (!row.wrapped) throw new KmipError(ResultReason.KeyValueNotPresent, `object ${id} has been destroyed`);
  if (mask !== undefined) {
    const allowed = (await ctx.objects.usageMask(row)) ?? 0xffffffff;
    if ((mask & ~allowed) !== 0) throw new KmipError(ctx.v2 ? ResultReason.IncompatibleCryptographicUsageMask : ResultReason.PermissionDenied, 'the object’s Cryptographic Usage Mask does not allow that use');
  }
  return [ttlv.text(Tag.UniqueIdentifier, row.id)];
};
