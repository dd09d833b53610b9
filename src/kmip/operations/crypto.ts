/**
 * Encrypt and Decrypt with a stored AES key (node:crypto only): AES-GCM, and AES-CBC with PKCS5
 * padding or none. Without an IV from the client the server makes a random one and returns it.
 * A use is audited once its cipher ran: a success by withMaterial, a failure (wrong tag, bad padding)
 * by the server as the operation's refusal, naming the key.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { Tag } from '../tags.js';
import { ItemType, child, ttlv, type Ttlv } from '../ttlv.js';
import { BlockCipherMode, CryptographicAlgorithm, CryptographicUsageMask, PaddingMethod, ResultReason } from '../enums.js';
import type { DekRow } from '../../store/dek-repo.js';
import { KmipError, bytesField, field, uniqueId, type OpContext, type OperationHandler } from './context.js';

const MAX_DATA = 1024 * 1024;

interface Params {
  mode: number;
  padding: number;
  randomIv: boolean;
  tagLength: number;
}

function params(payload: Ttlv | undefined): Params {
  const p = field(payload, Tag.CryptographicParameters);
  const e = (tag: number, what: string): number | undefined => {
    const f = p && p.type === ItemType.Structure ? child(p, tag) : undefined;
    if (!f) return undefined;
    if (f.type !== ItemType.Enumeration && f.type !== ItemType.Integer) throw new KmipError(ResultReason.InvalidField, `${what} has the wrong type`);
    return f.value;
  };
  const alg = e(Tag.CryptographicAlgorithm, 'Cryptographic Algorithm');
  if (alg !== undefined && alg !== CryptographicAlgorithm.AES) throw new KmipError(ResultReason.FeatureNotSupported, 'only AES is supported');
  const mode = e(Tag.BlockCipherMode, 'Block Cipher Mode') ?? BlockCipherMode.CBC;
  if (mode !== BlockCipherMode.CBC && mode !== BlockCipherMode.GCM) throw new KmipError(ResultReason.FeatureNotSupported, 'supported Block Cipher Modes are CBC and GCM');
  const padding = e(Tag.PaddingMethod, 'Padding Method') ?? (mode === BlockCipherMode.CBC ? PaddingMethod.PKCS5 : PaddingMethod.None);
  if (mode === BlockCipherMode.CBC && padding !== PaddingMethod.PKCS5 && padding !== PaddingMethod.None) throw new KmipError(ResultReason.FeatureNotSupported, 'CBC takes PKCS5 padding or none');
  const r = p && p.type === ItemType.Structure ? child(p, Tag.RandomIV) : undefined;
  const tagLength = e(Tag.TagLength, 'Tag Length') ?? 16;
  if (mode === BlockCipherMode.GCM && (tagLength < 12 || tagLength > 16)) throw new KmipError(ResultReason.InvalidField, 'Tag Length must be 12..16 bytes');
  return { mode, padding, randomIv: r?.type === ItemType.Boolean ? r.value : false, tagLength };
}

/** The key the request names, if it may be used that way; its material is read later, by withMaterial. */
async function usableKey(ctx: OpContext, payload: Ttlv | undefined, use: 'encrypt' | 'decrypt'): Promise<DekRow> {
  const id = uniqueId(ctx, payload);
  const row = await ctx.objects.find(ctx.principal.svm, id);
  if (row.object_type || row.algorithm !== 'AES') throw new KmipError(ResultReason.InvalidField, 'the object is not an AES key');
  const ok = use === 'encrypt' ? row.state === 'active' : row.state === 'active' || row.state === 'deactivated' || row.state === 'compromised';
  if (!ok) throw new KmipError(ctx.v2 ? ResultReason.WrongKeyLifecycleState : ResultReason.PermissionDenied, `a ${row.state} key cannot ${use}`);
  const mask = await ctx.objects.usageMask(row);
  const bit = use === 'encrypt' ? CryptographicUsageMask.Encrypt : CryptographicUsageMask.Decrypt;
  if (mask !== undefined && (mask & bit) === 0) throw new KmipError(ctx.v2 ? ResultReason.IncompatibleCryptographicUsageMask : ResultReason.PermissionDenied, `the key's usage mask does not allow ${use}`);
  return row;
}

function data(payload: Ttlv | undefined): Buffer {
  const d = bytesField(payload, Tag.Data, 'Data');
  if (!d) throw new KmipError(ResultReason.InvalidField, 'Data is required');
  if (d.length > MAX_DATA) throw new KmipError(ResultReason.InvalidField, 'Data is too long');
  return d;
}

const cipherName = (mode: number, key: Buffer) => `aes-${key.length * 8}-${mode === BlockCipherMode.GCM ? 'gcm' : 'cbc'}` as const;

export const encrypt: OperationHandler = async (ctx, payload) => {
  const p = params(payload);
  const plain = data(payload);
  const given = bytesField(payload, Tag.IVCounterNonce, 'IV/Counter/Nonce');
  if (given && p.randomIv) throw new KmipError(ResultReason.InvalidField, 'an IV was given although Random IV asks the server for one');
  const ivLen = p.mode === BlockCipherMode.GCM ? 12 : 16;
  if (given && (p.mode === BlockCipherMode.CBC ? given.length !== 16 : given.length < 12 || given.length > 64)) throw new KmipError(ResultReason.InvalidField, 'IV/Counter/Nonce has the wrong length');
  const aad = bytesField(payload, Tag.AuthenticatedEncryptionAdditionalData, 'Authenticated Encryption Additional Data');
  const row = await usableKey(ctx, payload, 'encrypt');
  const iv = given ?? randomBytes(ivLen);
  return ctx.objects.withMaterial(
    ctx.principal,
    ctx.requestId,
    row,
    'encrypt',
    (key) => {
      try {
        const out: Ttlv[] = [ttlv.text(Tag.UniqueIdentifier, row.id)];
        if (p.mode === BlockCipherMode.GCM) {
          const c = createCipheriv(cipherName(p.mode, key) as 'aes-256-gcm', key, iv, { authTagLength: p.tagLength });
          if (aad) c.setAAD(aad);
          const ct = Buffer.concat([c.update(plain), c.final()]);
          out.push(ttlv.bytes(Tag.Data, ct));
          if (!given) out.push(ttlv.bytes(Tag.IVCounterNonce, iv));
          out.push(ttlv.bytes(Tag.AuthenticatedEncryptionTag, c.getAuthTag()));
        } else {
          const c = createCipheriv(cipherName(p.mode, key), key, iv);
          c.setAutoPadding(p.padding === PaddingMethod.PKCS5);
          const ct = Buffer.concat([c.update(plain), c.final()]);
          out.push(ttlv.bytes(Tag.Data, ct));
          if (!given) out.push(ttlv.bytes(Tag.IVCounterNonce, iv));
        }
        return out;
      } catch {
        throw new KmipError(ResultReason.CryptographicFailure, 'encryption failed (without padding, CBC needs whole 16-byte blocks)', row.id);
      }
    },
    ctx.deferAudit,
  );
};

export const decrypt: OperationHandler = async (ctx, payload) => {
  const p = params(payload);
  const ct = data(payload);
  const iv = bytesField(payload, Tag.IVCounterNonce, 'IV/Counter/Nonce');
  if (!iv) throw new KmipError(ResultReason.InvalidField, 'IV/Counter/Nonce is required');
  if (p.mode === BlockCipherMode.CBC ? iv.length !== 16 : iv.length < 12 || iv.length > 64) throw new KmipError(ResultReason.InvalidField, 'IV/Counter/Nonce has the wrong length');
  const aad = bytesField(payload, Tag.AuthenticatedEncryptionAdditionalData, 'Authenticated Encryption Additional Data');
  const tag = bytesField(payload, Tag.AuthenticatedEncryptionTag, 'Authenticated Encryption Tag');
  if (p.mode === BlockCipherMode.GCM && (!tag || tag.length < 12 || tag.length > 16)) throw new KmipError(ResultReason.InvalidField, 'GCM needs an Authenticated Encryption Tag of 12..16 bytes');
  const row = await usableKey(ctx, payload, 'decrypt');
  return ctx.objects.withMaterial(
    ctx.principal,
    ctx.requestId,
    row,
    'decrypt',
    (key) => {
      try {
        let plain: Buffer;
        if (p.mode === BlockCipherMode.GCM) {
          const d = createDecipheriv(cipherName(p.mode, key) as 'aes-256-gcm', key, iv, { authTagLength: tag!.length });
          if (aad) d.setAAD(aad);
          d.setAuthTag(tag!);
          plain = Buffer.concat([d.update(ct), d.final()]);
        } else {
          const d = createDecipheriv(cipherName(p.mode, key), key, iv);
          d.setAutoPadding(p.padding === PaddingMethod.PKCS5);
          plain = Buffer.concat([d.update(ct), d.final()]);
        }
        return [ttlv.text(Tag.UniqueIdentifier, row.id), ttlv.bytes(Tag.Data, plain)];
      } catch {
        throw new KmipError(ResultReason.CryptographicFailure, 'decryption failed: wrong key, IV, tag or padding', row.id);
      }
    },
    ctx.deferAudit,
  );
};
