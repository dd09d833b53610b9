/** Discover Versions and Query: what this server speaks and serves. */
import { Tag } from '../tags.js';
import { ItemType, ttlv, type Ttlv } from '../ttlv.js';
import { ObjectType, Operation, ProfileName, QueryFunction, ResultReason } from '../enums.js';
import type { ProtocolVersion } from '../message.js';
import { KmipError, type OperationHandler } from './context.js';

/** Newest first, as Discover Versions answers. */
export const SUPPORTED_VERSIONS: ProtocolVersion[] = [
  { major: 2, minor: 1 },
  { major: 2, minor: 0 },
  { major: 1, minor: 4 },
  { major: 1, minor: 3 },
  { major: 1, minor: 2 },
  { major: 1, minor: 1 },
  { major: 1, minor: 0 },
];

export const isSupportedVersion = (v: ProtocolVersion) => SUPPORTED_VERSIONS.some((s) => s.major === v.major && s.minor === v.minor);

const versionItem = (v: ProtocolVersion) => ttlv.struct(Tag.ProtocolVersion, [ttlv.int(Tag.ProtocolVersionMajor, v.major), ttlv.int(Tag.ProtocolVersionMinor, v.minor)]);

export const discoverVersions: OperationHandler = async (_ctx, payload) => {
  const asked: ProtocolVersion[] = [];
  if (payload && payload.type === ItemType.Structure)
    for (const c of payload.value) {
      if (c.tag !== Tag.ProtocolVersion || c.type !== ItemType.Structure) continue;
      const major = c.value.find((x) => x.tag === Tag.ProtocolVersionMajor);
      const minor = c.value.find((x) => x.tag === Tag.ProtocolVersionMinor);
      if (major?.type !== ItemType.Integer || minor?.type !== ItemType.Integer) throw new KmipError(ResultReason.InvalidField, 'Protocol Version needs integer Major and Minor');
      asked.push({ major: major.value, minor: minor.value });
    }
  // With no list, every version; with one, the client's versions this server also speaks, in the client's order.
  const answer = asked.length === 0 ? SUPPORTED_VERSIONS : asked.filter(isSupportedVersion);
  return answer.map(versionItem);
};

/** Operations in the order Query lists them; the registry in index.ts serves exactly these. */
export const SERVED_OPERATIONS = [
  Operation.Query,
  Operation.DiscoverVersions,
  Operation.Create,
  Operation.Register,
  Operation.Rekey,
  Operation.Locate,
  Operation.Check,
  Operation.Get,
  Operation.GetAttributes,
  Operation.GetAttributeList,
  Operation.AddAttribute,
  Operation.ModifyAttribute,
  Operation.DeleteAttribute,
  Operation.Activate,
  Operation.Revoke,
  Operation.Destroy,
  Operation.Encrypt,
  Operation.Decrypt,
];

function profiles(v: ProtocolVersion): number[] {
  if (v.major >= 2) return [ProfileName.BaselineServer, ProfileName.SymmetricKeyLifecycleServer, ProfileName.BasicCryptographicServer];
  if (v.minor >= 4) return [ProfileName.BaselineServerTlsv12Kmipv14, ProfileName.SymmetricKeyLifecycleServerKmipv14, ProfileName.BasicCryptographicServerKmipv14];
  if (v.minor === 3) return [ProfileName.BaselineServerTlsv12Kmipv13, ProfileName.SymmetricKeyLifecycleServerKmipv13, ProfileName.BasicCryptographicServerKmipv13];
  return [ProfileName.BaselineServerTlsv12Kmipv12, ProfileName.SymmetricKeyLifecycleServerKmipv12, ProfileName.BasicCryptographicServerKmipv12];
}

export const query: OperationHandler = async (ctx, payload) => {
  const fns = new Set<number>();
  if (payload && payload.type === ItemType.Structure)
    for (const c of payload.value) {
      if (c.tag !== Tag.QueryFunction) continue;
      if (c.type !== ItemType.Enumeration) throw new KmipError(ResultReason.InvalidField, 'Query Function must be an Enumeration');
      fns.add(c.value);
    }
  const out: Ttlv[] = [];
  if (fns.has(QueryFunction.QueryOperations)) for (const op of SERVED_OPERATIONS) out.push(ttlv.enumeration(Tag.Operation, op));
  if (fns.has(QueryFunction.QueryObjects)) out.push(ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey), ttlv.enumeration(Tag.ObjectType, ObjectType.SecretData));
  if (fns.has(QueryFunction.QueryServerInformation)) {
    out.push(ttlv.text(Tag.VendorIdentification, 'Keysmith'));
    out.push(ttlv.struct(Tag.ServerInformation, [ttlv.text(Tag.ServerName, 'Keysmith KMIP server'), ttlv.text(Tag.ServerVersion, '0.1.0')]));
  }
  if (fns.has(QueryFunction.QueryProfiles) && (ctx.version.major >= 2 || ctx.version.minor >= 3))
    for (const p of profiles(ctx.version)) out.push(ttlv.struct(Tag.ProfileInformation, [ttlv.enumeration(Tag.ProfileName, p)]));
  return out;
};
