/**
 * The objects KMIP clients see are Keysmith keys: rows of `deks` in the principal's tenant, wrapped
 * under the tenant KEK like every DEK (so rekey-internal re-wraps them and REST lists them), with
 * the attributes clients set kept in kmip_attributes.
 *
 * Invariants:
 * - Attributes the server owns (identifier, type, algorithm, length, state, dates) come from the
 *   key row and cannot be set by a client; everything else a client sets is kept as sent (exact
 *   TTLV) and matched by Locate through its searchable text form.
 * - A key and its attributes are written in one transaction, with its audit event.
 * - Material leaves only through get/encrypt/decrypt, each audited; never logged.
 */
import { KeysmithError } from '../errors.js';
import type { AuditService } from '../audit/audit-service.js';
import type { DekService, KeyAction } from '../hierarchy/dek-service.js';
import type { DekRepo, DekRow } from '../store/dek-repo.js';
import type { KmipRepo, KmipAttributeRow } from '../store/kmip-repo.js';
import type { Db, Tx } from '../store/schema.js';
import type { SvmRow } from '../store/svm-repo.js';
import { CryptographicAlgorithm, ObjectType, ResultReason, State, enumName } from './enums.js';
import { Tag } from './tags.js';
import { ItemType, decodeTtlv, encodeTtlv, ttlv, type Ttlv } from './ttlv.js';
import { normaliseIndexes, retag, searchValue, type Attr } from './attributes.js';
import { KmipError, type KmipPrincipal } from './operations/context.js';

/** Attributes whose value the server derives from the key row. */
export const SERVER_ATTRIBUTES = new Set([
  'Unique Identifier',
  'Object Type',
  'Cryptographic Algorithm',
  'Cryptographic Length',
  'State',
  'Initial Date',
  'Activation Date',
  'Deactivation Date',
  'Compromise Date',
  'Compromise Occurrence Date',
  'Destroy Date',
  'Last Change Date',
  'Original Creation Date',
  'Revocation Reason',
  'Key Value Present',
]);

/** Not attributes of an object (MySQL sends Storage Status Mask in its template): accepted and ignored. */
const IGNORED_TEMPLATE_ATTRIBUTES = new Set(['Storage Status Mask']);

/** Attributes that may hold several values. */
const MULTI = new Set(['Name', 'Object Group', 'Link', 'Application Specific Information', 'Alternative Name', 'Custom Attribute']);
export const isMultiValued = (name: string) => MULTI.has(name) || /^[xy]-/.test(name);

/** Internal attributes (underscore names) hold facts KMIP needs back but clients do not set. */
const SECRET_DATA_TYPE = '_secret_data_type';
const KEY_FORMAT = '_key_format_type';

const STATE_OF: Record<string, number> = {
  'pre-active': State.PreActive,
  active: State.Active,
  deactivated: State.Deactivated,
  compromised: State.Compromised,
  destroyed: State.Destroyed,
  'destroyed-compromised': State.DestroyedCompromised,
};
export const stateName = (v: number): string | undefined => Object.entries(STATE_OF).find(([, n]) => n === v)?.[0];
export const kmipState = (row: Pick<DekRow, 'state'>): number => STATE_OF[row.state] ?? State.PreActive;
export const objectTypeOf = (row: Pick<DekRow, 'object_type'>): number => (row.object_type ? (ObjectType as Record<string, number>)[row.object_type] : ObjectType.SymmetricKey);

const av = (v: Ttlv) => retag(v, Tag.AttributeValue);
const date = (iso: string) => ttlv.dateTime(Tag.AttributeValue, BigInt(Math.floor(Date.parse(iso) / 1000)));

function toRow(svmUuid: string, objectId: string, a: Attr): KmipAttributeRow {
  return { object_id: objectId, svm_uuid: svmUuid, name: a.name, idx: a.index, value: searchValue(a.name, a.value), raw: encodeTtlv(av(a.value)) };
}

function check(a: Attr): void {
  if (a.name === 'Name') {
    const nv = a.value.type === ItemType.Structure ? a.value.value.find((c) => c.tag === Tag.NameValue) : undefined;
    if (!nv || nv.type !== ItemType.TextString) throw new KmipError(ResultReason.InvalidField, 'Name needs a Name Value text string');
  }
  if (a.name === 'Cryptographic Usage Mask' && a.value.type !== ItemType.Integer) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Usage Mask must be an Integer');
  if (a.name === 'Object Group' && a.value.type !== ItemType.TextString) throw new KmipError(ResultReason.InvalidField, 'Object Group must be a Text String');
  if (a.name.startsWith('_')) throw new KmipError(ResultReason.InvalidField, `unknown attribute ${a.name}`);
}

function nameOf(attrs: Attr[]): string | null {
  const n = attrs.find((a) => a.name === 'Name');
  return n ? searchValue('Name', n.value).slice(0, 255) : null;
}

export function createKmipObjectService(deps: { db: Db; deks: DekService; dekRepo: Pick<DekRepo, 'find' | 'update'>; repo: KmipRepo; audit: AuditService }) {
  const { db, repo, audit } = deps;
  const who = (p: KmipPrincipal, requestId: string) => ({ actor: p.actor, requestId });

  async function find(svm: SvmRow, id: string): Promise<DekRow> {
    const row = id.length <= 64 ? await repo.findObject(svm.uuid, id) : undefined;
    if (!row) throw new KmipError(ResultReason.ItemNotFound, `no object with Unique Identifier ${id.slice(0, 64)}`);
    return row;
  }

  async function stored(row: DekRow, tx?: Tx): Promise<Attr[]> {
    return (await repo.list(row.id, tx)).map((r) => ({ name: r.name, index: r.idx, value: decodeTtlv(Buffer.from(r.raw)) }));
  }

  /** Server-owned attributes of a row, then the stored ones (internal ones left out). */
  async function attributes(row: DekRow): Promise<Attr[]> {
    const out: Attr[] = [];
    const add = (name: string, value: Ttlv) => out.push({ name, index: 0, value });
    add('Unique Identifier', ttlv.text(Tag.AttributeValue, row.id));
    add('Object Type', ttlv.enumeration(Tag.AttributeValue, objectTypeOf(row)));
    const alg = (CryptographicAlgorithm as Record<string, number>)[row.algorithm];
    if (alg !== undefined) add('Cryptographic Algorithm', ttlv.enumeration(Tag.AttributeValue, alg));
    if (!row.object_type) add('Cryptographic Length', ttlv.int(Tag.AttributeValue, row.length));
    add('State', ttlv.enumeration(Tag.AttributeValue, kmipState(row)));
    add('Initial Date', date(row.created_at));
    if (row.activated_at) add('Activation Date', date(row.activated_at));
    if (row.deactivated_at) add('Deactivation Date', date(row.deactivated_at));
    if (row.compromised_at) add('Compromise Date', date(row.compromised_at));
    if (row.destroyed_at) add('Destroy Date', date(row.destroyed_at));
    add('Last Change Date', date(row.updated_at));
    const own = (await stored(row)).filter((a) => !a.name.startsWith('_'));
    // A key made over REST has a name but no KMIP Name attribute: show it as one.
    if (row.name && !own.some((a) => a.name === 'Name')) add('Name', nameValue(row.name));
    return [...out, ...own];
  }

  async function internal(row: DekRow, name: string): Promise<number | undefined> {
    const r = (await repo.listNamed(row.id, name))[0];
    if (!r) return undefined;
    const v = decodeTtlv(Buffer.from(r.raw));
    return v.type === ItemType.Enumeration || v.type === ItemType.Integer ? v.value : undefined;
  }

  function splitTemplate(attrs: Attr[]): { own: Attr[]; server: Map<string, Ttlv> } {
    const own: Attr[] = [];
    const server = new Map<string, Ttlv>();
    for (const a of attrs) {
      if (IGNORED_TEMPLATE_ATTRIBUTES.has(a.name)) continue;
      if (SERVER_ATTRIBUTES.has(a.name)) server.set(a.name, a.value);
      else {
        check(a);
        own.push(a);
      }
    }
    return { own: normaliseIndexes(own), server };
  }

  return {
    find,
    attributes,
    secretDataType: (row: DekRow) => internal(row, SECRET_DATA_TYPE),
    registeredFormat: (row: DekRow) => internal(row, KEY_FORMAT),

    /** A new key from template attributes (KMIP Create, and ReKey with the old key's attributes). */
    async create(p: KmipPrincipal, requestId: string, input: { length: number; attrs: Attr[]; active: boolean; action?: string; links?: (tx: Tx, row: DekRow) => Promise<void> }): Promise<DekRow> {
      const { own } = splitTemplate(input.attrs);
      return deps.deks.insertKey(p.svm, { length: input.length, algorithm: 'AES', name: nameOf(own), state: input.active ? 'active' : 'pre-active' }, who(p, requestId), input.action ?? 'kmip.create', async (tx, row) => {
        await repo.insertMany(own.map((a) => toRow(p.svm.uuid, row.id, a)), tx);
        if (input.links) await input.links(tx, row);
      });
    },

    /** A key or secret whose material the client gives (KMIP Register). */
    async register(
      p: KmipPrincipal,
      requestId: string,
      input: { objectType: 'SymmetricKey' | 'SecretData'; material: Buffer; algorithm: string; length: number; format: number; secretDataType?: number; attrs: Attr[] },
    ): Promise<DekRow> {
      const { own } = splitTemplate(input.attrs);
      const extra: Attr[] = [{ name: KEY_FORMAT, index: 0, value: ttlv.enumeration(Tag.AttributeValue, input.format) }];
      if (input.secretDataType !== undefined) extra.push({ name: SECRET_DATA_TYPE, index: 0, value: ttlv.enumeration(Tag.AttributeValue, input.secretDataType) });
      return deps.deks.insertKey(
        p.svm,
        { material: input.material, length: input.length, algorithm: input.algorithm, objectType: input.objectType === 'SymmetricKey' ? null : input.objectType, name: nameOf(own), state: 'pre-active' },
        who(p, requestId),
        'kmip.register',
        async (tx, row) => repo.insertMany([...own, ...extra].map((a) => toRow(p.svm.uuid, row.id, a)), tx),
      );
    },

    /**
     * The plaintext of a key, for Get/Encrypt/Decrypt. The use is audited before it is returned, or,
     * with `defer`, the audit record is handed to it and the caller must not answer before it settles.
     */
    async material(p: KmipPrincipal, requestId: string, row: DekRow, use: string, defer?: (recorded: Promise<void>) => void): Promise<Buffer> {
      const m = await deps.deks.material(p.svm, row);
      const recorded = audit.record({ actor: p.actor, requestId, action: `kmip.${use}`, outcome: 'success', objectType: 'key', objectId: row.id, svmUuid: p.svm.uuid });
      if (defer) defer(recorded);
      else await recorded;
      return m;
    },

    /**
     * Runs `run` (Encrypt/Decrypt's cipher) with the plaintext of a key, zeroed afterwards. The use is
     * audited as a success only once `run` returned: a cipher that fails (wrong tag, bad padding)
     * throws, records nothing here, and is audited by the server as the operation's failure.
     * `defer` as for `material`.
     */
    async withMaterial<T>(p: KmipPrincipal, requestId: string, row: DekRow, use: string, run: (key: Buffer) => T, defer?: (recorded: Promise<void>) => void): Promise<T> {
      const key = await deps.deks.material(p.svm, row);
      let out: T;
      try {
        out = run(key);
      } finally {
        key.fill(0);
      }
      const recorded = audit.record({ actor: p.actor, requestId, action: `kmip.${use}`, outcome: 'success', objectType: 'key', objectId: row.id, svmUuid: p.svm.uuid });
      if (defer) defer(recorded);
      else await recorded;
      return out;
    },

    /** The object's Cryptographic Usage Mask (its first value), reading only that attribute. */
    async usageMask(row: DekRow): Promise<number | undefined> {
      const r = (await repo.listNamed(row.id, 'Cryptographic Usage Mask'))[0];
      if (!r) return undefined;
      const v = decodeTtlv(Buffer.from(r.raw));
      return v.type === ItemType.Integer ? v.value : undefined;
    },

    async transition(p: KmipPrincipal, requestId: string, id: string, action: KeyAction): Promise<DekRow> {
      try {
        return await deps.deks.transition(p.svm, id, action, who(p, requestId));
      } catch (e) {
        if (e instanceof KeysmithError && e.kind === 'not_found') throw new KmipError(ResultReason.ItemNotFound, `no object with Unique Identifier ${id.slice(0, 64)}`);
        throw e;
      }
    },

    /** Adds one value; its index is the next free one. Returns the stored attribute. */
    async addAttribute(p: KmipPrincipal, requestId: string, row: DekRow, a: Attr): Promise<Attr> {
      if (SERVER_ATTRIBUTES.has(a.name)) throw new KmipError(ResultReason.PermissionDenied, `${a.name} is set by the server`);
      check(a);
      let out!: Attr;
      await db.transaction().execute(async (tx) => {
        const existing = await repo.listNamed(row.id, a.name, tx);
        if (existing.length > 0 && !isMultiValued(a.name)) throw new KmipError(ResultReason.InvalidField, `${a.name} already has a value: use Modify Attribute`);
        out = { name: a.name, index: existing.length === 0 ? 0 : Math.max(...existing.map((e) => e.idx)) + 1, value: a.value };
        await repo.insertMany([toRow(p.svm.uuid, row.id, out)], tx);
        if (a.name === 'Name' && !row.name) await deps.dekRepo.update(row.id, { name: nameOf([out]), updated_at: new Date().toISOString() }, tx);
        await audit.recordIn(tx, { actor: p.actor, requestId, action: 'kmip.add_attribute', outcome: 'success', objectType: 'key', objectId: row.id, svmUuid: p.svm.uuid, detail: { attribute: a.name, index: out.index } });
      });
      return out;
    },

    async modifyAttribute(p: KmipPrincipal, requestId: string, row: DekRow, a: Attr): Promise<Attr> {
      if (SERVER_ATTRIBUTES.has(a.name)) throw new KmipError(ResultReason.PermissionDenied, `${a.name} is set by the server`);
      check(a);
      await db.transaction().execute(async (tx) => {
        const r = await repo.replace(toRow(p.svm.uuid, row.id, a), tx);
        if (Number(r.numUpdatedRows) === 0) throw new KmipError(ResultReason.ItemNotFound, `${a.name} has no value at index ${a.index}`);
        await audit.recordIn(tx, { actor: p.actor, requestId, action: 'kmip.modify_attribute', outcome: 'success', objectType: 'key', objectId: row.id, svmUuid: p.svm.uuid, detail: { attribute: a.name, index: a.index } });
      });
      return a;
    },

    async deleteAttribute(p: KmipPrincipal, requestId: string, row: DekRow, name: string, index: number): Promise<Attr> {
      if (SERVER_ATTRIBUTES.has(name)) throw new KmipError(ResultReason.PermissionDenied, `${name} is set by the server`);
      let out!: Attr;
      await db.transaction().execute(async (tx) => {
        const r = (await repo.listNamed(row.id, name, tx)).find((x) => x.idx === index);
        if (!r || name.startsWith('_')) throw new KmipError(ResultReason.ItemNotFound, `${name} has no value at index ${index}`);
        out = { name, index, value: decodeTtlv(Buffer.from(r.raw)) };
        await repo.remove(row.id, name, index, tx);
        await audit.recordIn(tx, { actor: p.actor, requestId, action: 'kmip.delete_attribute', outcome: 'success', objectType: 'key', objectId: row.id, svmUuid: p.svm.uuid, detail: { attribute: name, index } });
      });
      return out;
    },

    /**
     * Locate: server attributes filter the key rows, the others must match stored values. Only the
     * first `page.within` matches (by id) are paged and counted; `count` asks for how many matched.
     */
    async locate(p: KmipPrincipal, attrs: Attr[], page: { offset: number; limit: number; within: number; count: boolean }): Promise<{ ids: string[]; count?: number }> {
      let objectType: string | null | undefined;
      let states: string[] | undefined;
      let algorithm: string | undefined;
      let length: number | undefined;
      const stored: { name: string; value: string }[] = [];
      for (const a of attrs) {
        const v = a.value;
        switch (a.name) {
          case 'Object Type': {
            if (v.type !== ItemType.Enumeration) throw new KmipError(ResultReason.InvalidField, 'Object Type must be an Enumeration');
            const n = enumName(ObjectType, v.value);
            objectType = n === 'SymmetricKey' ? null : n;
            break;
          }
          case 'State': {
            const s = v.type === ItemType.Enumeration ? stateName(v.value) : undefined;
            if (!s) throw new KmipError(ResultReason.InvalidField, 'State must be a KMIP State');
            states = [s];
            break;
          }
          case 'Cryptographic Algorithm':
            if (v.type !== ItemType.Enumeration) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Algorithm must be an Enumeration');
            algorithm = enumName(CryptographicAlgorithm, v.value);
            break;
          case 'Cryptographic Length':
            if (v.type !== ItemType.Integer) throw new KmipError(ResultReason.InvalidField, 'Cryptographic Length must be an Integer');
            length = v.value;
            break;
          case 'Unique Identifier':
            if (v.type !== ItemType.TextString) throw new KmipError(ResultReason.InvalidField, 'Unique Identifier must be a Text String');
            stored.push({ name: '_id', value: v.value });
            break;
          default:
            if (SERVER_ATTRIBUTES.has(a.name)) throw new KmipError(ResultReason.FeatureNotSupported, `Locate by ${a.name} is not supported`);
            stored.push({ name: a.name, value: searchValue(a.name, v) });
        }
      }
      // The first Unique Identifier given names the object; any further one is not a filter.
      const byId = stored.find((s) => s.name === '_id');
      return repo.locate({ svmUuid: p.svm.uuid, id: byId?.value, objectType, states, algorithm, length, attributes: stored.filter((s) => s.name !== '_id'), ...page });
    },

    /** Links old → new (Replacement Object) and new → old (Replaced Object), in the new key's transaction. */
    async linkRows(svmUuid: string, oldId: string, newId: string, tx: Tx, linkTypes: { replacement: number; replaced: number }): Promise<void> {
      const existing = await repo.listNamed(oldId, 'Link', tx);
      const idx = existing.length === 0 ? 0 : Math.max(...existing.map((e) => e.idx)) + 1;
      await repo.insertMany([toRow(svmUuid, oldId, { name: 'Link', index: idx, value: link(linkTypes.replacement, newId) })], tx);
      await repo.insertMany([toRow(svmUuid, newId, { name: 'Link', index: 0, value: link(linkTypes.replaced, oldId) })], tx);
    },
    stored,
  };
}
export type KmipObjectService = ReturnType<typeof createKmipObjectService>;

export function nameValue(name: string): Ttlv {
  return ttlv.struct(Tag.AttributeValue, [ttlv.text(Tag.NameValue, name), ttlv.enumeration(Tag.NameType, 1)]);
}

function link(type: number, id: string): Ttlv {
  return ttlv.struct(Tag.AttributeValue, [ttlv.enumeration(Tag.LinkType, type), ttlv.text(Tag.LinkedObjectIdentifier, id)]);
}
