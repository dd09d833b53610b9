/** Activate, Revoke and Destroy: KMIP state transitions of a key (Destroy refuses an Active key). */
import { Tag } from '../tags.js';
import { ItemType, child, ttlv } from '../ttlv.js';
import { ResultReason, RevocationReasonCode } from '../enums.js';
import { KmipError, field, uniqueId, type OperationHandler } from './context.js';

export const activate: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  if (row.state !== 'pre-active') throw new KmipError(ResultReason.PermissionDenied, `a ${row.state} object cannot be activated`);
  await ctx.objects.transition(ctx.principal, ctx.requestId, row.id, 'activate');
  return [ttlv.text(Tag.UniqueIdentifier, row.id)];
};

export const revoke: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const reason = field(payload, Tag.RevocationReason);
  const code = reason && reason.type === ItemType.Structure ? child(reason, Tag.RevocationReasonCode) : undefined;
  if (!code || code.type !== ItemType.Enumeration) throw new KmipError(ResultReason.InvalidField, 'Revocation Reason with a Revocation Reason Code is required');
  const row = await ctx.objects.find(ctx.principal.svm, id);
  const compromise = code.value === RevocationReasonCode.KeyCompromise || code.value === RevocationReasonCode.CACompromise;
  if (!compromise && row.state !== 'active') throw new KmipError(ResultReason.IllegalOperation, `a ${row.state} object cannot be revoked for that reason`);
  await ctx.objects.transition(ctx.principal, ctx.requestId, row.id, compromise ? 'compromise' : 'deactivate');
  return [ttlv.text(Tag.UniqueIdentifier, row.id)];
};

export const destroy: OperationHandler = async (ctx, payload) => {
  const id = uniqueId(ctx, payload);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  if (row.state === 'active') throw new KmipError(ResultReason.PermissionDenied, 'an Active object cannot be destroyed: revoke it first');
  if (row.state === 'destroyed' || row.state === 'destroyed-compromised') throw new KmipError(ResultReason.PermissionDenied, 'the object is already destroyed');
  await ctx.objects.transition(ctx.principal, ctx.requestId, row.id, 'destroy');
  return [ttlv.text(Tag.UniqueIdentifier, row.id)];
};
