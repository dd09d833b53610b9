/**
 * The onboard key manager (ONTAP OKM): a random root key per key manager, sealed under a key
 * derived from the passphrase and under each node's own seal.
 *
 * Invariants:
 * - The root key never changes on a passphrase change: only its passphrase seal is replaced, in one
 *   transaction, so every KEK and DEK stays readable.
 * - A passphrase is checked by opening the passphrase seal (AEAD), never by comparing stored text.
 * - Passphrases and key material never reach the audit log, the logs or an error message.
 * - Restore writes nothing until the whole backup has been opened and every KEK and DEK in it has
 *   been checked to open under the restored root.
 * - A backup holds every root version some KEK is under (a master-key rekey running, paused or
 *   cancelled leaves two); restore re-wraps those KEKs under the newest, so the restored key
 *   manager has one root version.
 * - The passphrase seals the newest root version only; each older one still in use is sealed under
 *   the next (rekey-master-job.ts), so synchronize and unseal open them all, and a passphrase change
 *   (which replaces only the newest one's seal) leaves them reachable.
 */
import { randomBytes } from 'node:crypto';
import { open, seal } from '../crypto/aead.js';
import { deriveKey, newKdfParams, validKdfParams, type KdfParams } from '../crypto/kdf.js';
import { KeysmithError, fail } from '../errors.js';
import { newId, uuid } from '../ids.js';
import type { AuditService } from '../audit/audit-service.js';
import { backupKeyContext, kekContext, rootContext, type Keyring } from '../hierarchy/keyring.js';
import type { Conn, Db, Tx } from '../store/schema.js';
import type { KeyManagerRepo, KeyManagerRow } from '../store/key-manager-repo.js';
import type { KekRepo } from '../store/kek-repo.js';
import type { DekRepo } from '../store/dek-repo.js';
import type { SvmRepo, SvmRow } from '../store/svm-repo.js';
import { openBackup, sealBackup, type BackupPayload } from './backup.js';
import { dekContext } from '../hierarchy/dek-service.js';

export interface Actor {
  actor: string;
  requestId?: string;
}

export function validPassphrase(p: unknown): p is string {
  return typeof p === 'string' && p.length >= 32 && p.length <= 256 && /^[\x20-\x7e]+$/.test(p);
}

export function createOnboardService(deps: {
  db: Db;
  svms: SvmRepo;
  keyManagers: KeyManagerRepo;
  keks: KekRepo;
  deks: Pick<DekRepo, 'countForSvm' | 'listAll'>;
  keyring: Keyring;
  audit: AuditService;
  kdfCost?: number;
  now?: () => Date;
}) {
  const { db, keyring, audit } = deps;
  const now = () => (deps.now ?? (() => new Date()))().toISOString();

  async function openRootWithPassphrase(km: KeyManagerRow, passphrase: string): Promise<Buffer | null> {
    const kdf = JSON.parse(km.kdf) as KdfParams;
    if (!validKdfParams(kdf)) throw new Error(`key manager ${km.uuid} has malformed KDF parameters`);
    const pk = await deriveKey(passphrase, kdf);
    return open(pk, rootContext(km), km.passphrase_seal);
  }

  async function passphraseSeal(km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid' | 'root_version' | 'root_id'>, root: Buffer, passphrase: string) {
    const kdf = newKdfParams(deps.kdfCost);
    const pk = await deriveKey(passphrase, kdf);
    return {
      kdf: JSON.stringify(kdf),
      seal: seal(pk, km.root_id, km.root_version, rootContext(km), root),
      backupSeal: seal(root, km.root_id, km.root_version, backupKeyContext(km), pk),
    };
  }

  /** Creates a tenant's first KEK version under the given key manager, inside tx. */
  async function createKek(tx: Tx, svmUuid: string, km: KeyManagerRow, version: number) {
    const row = { id: newId('kek'), svm_uuid: svmUuid, version, key_manager_uuid: km.uuid, root_version: km.root_version, state: 'active' as const, created_at: now() };
    const material = randomBytes(32);
    const wrapped = keyring.wrapKek(km, row, material);
    await deps.keks.insert({ ...row, wrapped }, tx);
    return row;
  }

  async function kmSvms(km: KeyManagerRow, tx: Conn = db): Promise<SvmRow[]> {
    // The tenants whose KEKs this key manager wraps, plus its own tenant.
    const uuids = new Set<string>([km.svm_uuid]);
    for (const k of await deps.keks.listAll(tx)) if (k.key_manager_uuid === km.uuid) uuids.add(k.svm_uuid);
    const out: SvmRow[] = [];
    for (const u of uuids) {
      const s = await deps.svms.findByUuid(u, tx);
      if (s) out.push(s);
    }
    return out;
  }

  return {
    openRootWithPassphrase,

    /**
     * `inactive` (ONTAP's create_inactive): a configuration that is not enabled, beside the SVM's
     * enabled one; PATCH /api/security/key-stores/{uuid} switches the SVM to it later.
     */
    async create(svm: SvmRow, passphrase: unknown, who: Actor, opts: { inactive?: boolean } = {}): Promise<KeyManagerRow> {
      const inactive = opts.inactive === true;
      if (passphrase === undefined) fail('invalid_field', 'onboard.passphrase is required to configure the Onboard Key Manager.', 'onboard.passphrase');
      if (!validPassphrase(passphrase)) fail('passphrase_length', undefined, 'onboard.passphrase');
      if (keyring.isSealed()) fail('sealed');
      if (!inactive && (await deps.keyManagers.findEnabledForSvm(svm.uuid))) fail('key_manager_exists', undefined, 'svm');
      const root = randomBytes(32);
      const t = now();
      const base = { uuid: uuid(), svm_uuid: svm.uuid, root_id: newId('km'), root_version: 1 };
      const ps = await passphraseSeal(base, root, passphrase);
      const km: KeyManagerRow = { ...base, type: 'okm', enabled: inactive ? 0 : 1, state: inactive ? 'disabled' : 'active', kdf: ps.kdf, passphrase_seal: ps.seal, backup_seal: ps.backupSeal, created_at: t, updated_at: t };
      keyring.putRoot(km, root);
      try {
        await db.transaction().execute(async (tx) => {
          if (!inactive && (await deps.keyManagers.findEnabledForSvm(svm.uuid, tx))) fail('key_manager_exists', undefined, 'svm');
          await deps.keyManagers.insert(km, tx);
          await deps.keyManagers.upsertSeal({ key_manager_uuid: km.uuid, root_version: 1, node_id: keyring.node.id, blob: keyring.sealForNode(km, root), created_at: t }, tx);
          if (!inactive && !(await deps.keks.findActive(svm.uuid, tx))) await createKek(tx, svm.uuid, km, 1);
          await audit.recordIn(tx, { ...who, action: 'key_manager.create', outcome: 'success', objectType: 'key_manager', objectId: km.uuid, svmUuid: svm.uuid, detail: inactive ? { type: 'onboard', inactive: true } : { type: 'onboard' } });
        });
      } catch (e) {
        keyring.forgetKeyManager(km.uuid);
        throw e;
      }
      return km;
    },

    /** ONTAP PATCH onboard: passphrase change or synchronize. */
    async update(km: KeyManagerRow, body: { existing_passphrase?: unknown; passphrase?: unknown; synchronize?: unknown }, who: Actor): Promise<void> {
      const { existing_passphrase: existing, passphrase, synchronize } = body;
      if (synchronize === true) {
        if (passphrase !== undefined) fail('sync_forbids_passphrase', undefined, 'onboard.passphrase');
        if (existing === undefined) fail('sync_needs_existing', undefined, 'onboard.existing_passphrase');
        if (typeof existing !== 'string') fail('passphrase_mismatch', undefined, 'onboard.existing_passphrase');
        const root = await openRootWithPassphrase(km, existing);
        if (!root) {
          await audit.record({ ...who, action: 'key_manager.synchronize', outcome: 'failure', objectType: 'key_manager', objectId: km.uuid, svmUuid: km.svm_uuid, detail: { reason: 'passphrase_mismatch' } });
          fail('passphrase_mismatch', undefined, 'onboard.existing_passphrase');
        }
        await db.transaction().execute(async (tx) => {
          await deps.keyManagers.upsertSeal({ key_manager_uuid: km.uuid, root_version: km.root_version, node_id: keyring.node.id, blob: keyring.sealForNode(km, root), created_at: now() }, tx);
          await audit.recordIn(tx, { ...who, action: 'key_manager.synchronize', outcome: 'success', objectType: 'key_manager', objectId: km.uuid, svmUuid: km.svm_uuid, detail: { node: keyring.node.id } });
        });
        keyring.putRoot(km, root);
        // Root versions a paused or cancelled master-key rekey left KEKs under, opened through the
        // newest one (or this node's own seals): the node then serves every key, not only the moved ones.
        await keyring.loadOlderRoots(km);
        return;
      }
      if (synchronize !== undefined && synchronize !== false) fail('invalid_value', 'onboard.synchronize must be a boolean.', 'onboard.synchronize');
      if (existing === undefined && passphrase === undefined) fail('invalid_field', 'Nothing to change: give onboard.existing_passphrase and onboard.passphrase, or onboard.synchronize.', 'onboard');
      if (existing === undefined || passphrase === undefined) fail('passphrase_both_needed', undefined, existing === undefined ? 'onboard.existing_passphrase' : 'onboard.passphrase');
      if (!validPassphrase(passphrase)) fail('passphrase_length', undefined, 'onboard.passphrase');
      const root = typeof existing === 'string' ? await openRootWithPassphrase(km, existing) : null;
      if (!root) {
        await audit.record({ ...who, action: 'key_manager.update_passphrase', outcome: 'failure', objectType: 'key_manager', objectId: km.uuid, svmUuid: km.svm_uuid, detail: { reason: 'passphrase_mismatch' } });
        fail('passphrase_mismatch', undefined, 'onboard.existing_passphrase');
      }
      if (passphrase === existing) fail('passphrase_same', undefined, 'onboard.passphrase');
      const ps = await passphraseSeal(km, root, passphrase);
      await db.transaction().execute(async (tx) => {
        if (!(await deps.keyManagers.updatePassphraseSeal(km.uuid, km.root_version, ps.kdf, ps.seal, ps.backupSeal, now(), tx))) fail('key_manager_changed', undefined, 'onboard.passphrase');
        // The passphrase proved the root: this node keeps its own copy too, as after a synchronize.
        if (!keyring.isSealed()) await deps.keyManagers.upsertSeal({ key_manager_uuid: km.uuid, root_version: km.root_version, node_id: keyring.node.id, blob: keyring.sealForNode(km, root), created_at: now() }, tx);
        await audit.recordIn(tx, { ...who, action: 'key_manager.update_passphrase', outcome: 'success', objectType: 'key_manager', objectId: km.uuid, svmUuid: km.svm_uuid });
      });
      if (!keyring.isSealed()) {
        keyring.putRoot(km, root);
        await keyring.loadOlderRoots(km);
      }
    },

    async remove(km: KeyManagerRow, who: Actor): Promise<void> {
      await db.transaction().execute(async (tx) => {
        const keks = (await deps.keks.listAll(tx)).filter((k) => k.key_manager_uuid === km.uuid);
        const svmsWithKeks = [...new Set(keks.map((k) => k.svm_uuid))];
        for (const s of svmsWithKeks) if ((await deps.deks.countForSvm(s, tx)) > 0) fail('key_manager_in_use', `Keys of SVM ${s} depend on this key manager.`);
        for (const s of svmsWithKeks) await deps.keks.removeForSvm(s, tx);
        await deps.keyManagers.removeSeals(km.uuid, tx);
        await deps.keyManagers.remove(km.uuid, tx);
        await audit.recordIn(tx, { ...who, action: 'key_manager.delete', outcome: 'success', objectType: 'key_manager', objectId: km.uuid, svmUuid: km.svm_uuid });
        for (const s of svmsWithKeks) keyring.forgetTenant(s);
      });
      keyring.forgetKeyManager(km.uuid);
    },

    /** The armored backup of a key manager's hierarchy, sealed under its current passphrase. */
    async backup(km: KeyManagerRow, who: Actor): Promise<string> {
      const root = keyring.root(km);
      const pk = open(root, backupKeyContext(km), km.backup_seal);
      if (!pk) throw new Error(`backup key of key manager ${km.uuid} does not open under its root`);
      // One snapshot (REPEATABLE READ on PostgreSQL; SQLite's read transaction is one already), so a
      // rekey moving keys meanwhile cannot leave a DEK whose KEK version the backup lacks. KEKs a
      // master-key rekey has not moved yet (it runs, is paused, or was cancelled) come with the older
      // root they are under, so the backup is whole whenever it is taken.
      let payload: BackupPayload;
      try {
        payload = await db
          .transaction()
          .setIsolationLevel('repeatable read')
          .execute(async (tx) => {
            const current = await deps.keyManagers.findByUuid(km.uuid, tx);
            if (!current || current.root_version !== km.root_version) fail('key_manager_changed');
            return buildPayload(km, root, tx);
          });
      } catch (e) {
        // An older root the snapshot still needed was dropped meanwhile: the rekey has just moved its
        // last KEK (it forgets old roots then), so a retry succeeds. Otherwise this node lacks it.
        if (e instanceof KeysmithError && e.kind === 'not_synchronized' && keyring.hasRoot(km)) {
          const keks = (await deps.keks.listAll()).filter((k) => k.key_manager_uuid === km.uuid);
          if (keks.every((k) => keyring.hasRoot({ uuid: km.uuid, root_version: k.root_version }))) fail('key_manager_changed');
        }
        throw e;
      }
      const text = sealBackup(payload, pk, JSON.parse(km.kdf) as KdfParams);
      await audit.record({ ...who, action: 'key_manager.backup', outcome: 'success', objectType: 'key_manager', objectId: km.uuid, svmUuid: km.svm_uuid, detail: { keks: payload.keks.length, deks: payload.deks.length } });
      return text;
    },

    async verifyBackup(text: unknown, passphrase: unknown, who: Actor) {
      if (typeof text !== 'string') fail('invalid_field', 'key_backup is required.', 'key_backup');
      if (!validPassphrase(passphrase)) fail('passphrase_length', undefined, 'passphrase');
      const opened = await openBackup(text, passphrase);
      await audit.record({ ...who, action: 'key_manager.verify_backup', outcome: opened.ok ? 'success' : 'failure', objectType: 'key_manager', objectId: opened.ok ? opened.value.key_manager.uuid : null, detail: opened.ok ? null : { reason: opened.error } });
      if (!opened.ok) throw new KeysmithError(opened.error, opened.detail, 'key_backup');
      const p = opened.value;
      const checked = checkPayload(p);
      if (!checked.ok) throw new KeysmithError('backup_tampered', checked.reason, 'key_backup');
      for (const k of checked.kekKeys.values()) k.fill(0);
      checked.root.fill(0);
      return summary(p);
    },

    async restore(text: unknown, passphrase: unknown, who: Actor) {
      if (typeof text !== 'string') fail('invalid_field', 'key_backup is required.', 'key_backup');
      if (!validPassphrase(passphrase)) fail('passphrase_length', undefined, 'passphrase');
      if (keyring.isSealed()) fail('sealed');
      const opened = await openBackup(text, passphrase);
      if (!opened.ok) {
        await audit.record({ ...who, action: 'key_manager.restore', outcome: 'failure', detail: { reason: opened.error } });
        throw new KeysmithError(opened.error, opened.detail, 'key_backup');
      }
      const p = opened.value;
      const checked = checkPayload(p);
      if (!checked.ok) throw new KeysmithError('backup_tampered', checked.reason, 'key_backup');
      const { root, kekKeys } = checked;
      const kmInfo = p.key_manager;
      const t = now();
      const ps = await passphraseSeal(kmInfo, root, passphrase);
      await db.transaction().execute(async (tx) => {
        if (await deps.keyManagers.findByUuid(kmInfo.uuid, tx)) fail('restore_not_empty', 'This key manager already exists here.');
        for (const s of p.svms) {
          const byUuid = await deps.svms.findByUuid(s.uuid, tx);
          const byName = await deps.svms.findByName(s.name, tx);
          const occupant = byUuid ?? byName ?? (s.scope === 'cluster' ? await deps.svms.findAdmin(tx) : undefined);
          if (occupant) {
            if ((await deps.deks.countForSvm(occupant.uuid, tx)) > 0 || (await deps.keyManagers.findEnabledForSvm(occupant.uuid, tx)) || (await deps.keks.findActive(occupant.uuid, tx))) {
              fail('restore_not_empty', `SVM ${occupant.name} already holds keys or a key manager.`);
            }
            if (occupant.uuid !== s.uuid || occupant.name !== s.name || occupant.scope !== s.scope) {
              if (byName && byUuid && byName.uuid !== byUuid.uuid) fail('restore_not_empty', `SVM name ${s.name} is taken by another SVM.`);
              // An empty SVM standing in the backup's place (a fresh install's admin SVM) takes the backup's identity.
              await deps.svms.remove(occupant.uuid, tx);
              await deps.svms.insert(s, tx);
            }
          } else await deps.svms.insert(s, tx);
        }
        const km: KeyManagerRow = { uuid: kmInfo.uuid, svm_uuid: kmInfo.svm_uuid, type: 'okm', enabled: 1, state: 'active', kdf: ps.kdf, root_id: kmInfo.root_id, root_version: kmInfo.root_version, passphrase_seal: ps.seal, backup_seal: ps.backupSeal, created_at: kmInfo.created_at, updated_at: t };
        await deps.keyManagers.insert(km, tx);
        await deps.keyManagers.upsertSeal({ key_manager_uuid: km.uuid, root_version: km.root_version, node_id: keyring.node.id, blob: keyring.sealForNode(km, root), created_at: t }, tx);
        // KEKs a master-key rekey had not moved yet are re-wrapped under the restored root here, so
        // the restored key manager holds one root version only (its older ones are not restored).
        for (const k of p.keks) {
          const wrapped = k.root_version === km.root_version ? Buffer.from(k.wrapped, 'base64') : seal(root, km.uuid, km.root_version, kekContext(k), kekKeys.get(`${k.svm_uuid}:${k.version}`)!);
          await deps.keks.insert({ ...k, root_version: km.root_version, key_manager_uuid: km.uuid, state: k.state as 'active' | 'decommissioned', wrapped }, tx);
        }
        const rows = p.deks.map((d) => ({ ...d, wrapped: d.wrapped === null ? null : Buffer.from(d.wrapped, 'base64') }));
        for (let i = 0; i < rows.length; i += 200) await tx.insertInto('deks').values(rows.slice(i, i + 200)).execute();
        await audit.recordIn(tx, { ...who, action: 'key_manager.restore', outcome: 'success', objectType: 'key_manager', objectId: km.uuid, svmUuid: km.svm_uuid, detail: { keks: p.keks.length, deks: p.deks.length } });
        keyring.putRoot(km, root);
      }).finally(() => {
        for (const k of kekKeys.values()) k.fill(0);
      });
      return summary(p);
    },

    /** Opens every sealed key manager the passphrase fits; the node serves keys once all are open. */
    async unseal(passphrase: unknown, who: Actor) {
      if (typeof passphrase !== 'string') fail('invalid_field', 'passphrase is required.', 'passphrase');
      const opened: string[] = [];
      const remaining: string[] = [];
      for (const km of await deps.keyManagers.list()) {
        if (keyring.hasRoot(km)) continue;
        const root = await openRootWithPassphrase(km, passphrase);
        if (root) {
          keyring.putRoot(km, root);
          // The passphrase opens only the newest version; older ones still in use come from their seals.
          await keyring.loadOlderRoots(km);
          opened.push(km.uuid);
        } else remaining.push(km.uuid);
      }
      if (opened.length === 0 && remaining.length > 0) {
        await audit.record({ ...who, action: 'sys.unseal', outcome: 'failure' });
        fail('unseal_failed');
      }
      if (remaining.length === 0) keyring.markUnsealed();
      await audit.record({ ...who, action: 'sys.unseal', outcome: 'success', detail: { opened, remaining } });
      return { sealed: keyring.isSealed(), opened, remaining };
    },
  };

  async function buildPayload(km: KeyManagerRow, root: Buffer, tx: Conn): Promise<BackupPayload> {
    const svms = await kmSvms(km, tx);
    const svmSet = new Set(svms.map((s) => s.uuid));
    const keks = (await deps.keks.listAll(tx)).filter((k) => k.key_manager_uuid === km.uuid);
    const deks = (await deps.deks.listAll(tx)).filter((d) => svmSet.has(d.svm_uuid) && keks.some((k) => k.svm_uuid === d.svm_uuid));
    const olderVersions = [...new Set(keks.map((k) => k.root_version))].filter((v) => v !== km.root_version).sort((a, b) => a - b);
    // keyring.root refuses (not_synchronized) when this node does not hold one of them.
    const older = olderVersions.map((v) => ({ root_version: v, root: keyring.root({ uuid: km.uuid, root_version: v }).toString('base64') }));
    return {
      format: 'keysmith-okm-backup',
      created: now(),
      key_manager: { uuid: km.uuid, svm_uuid: km.svm_uuid, root_id: km.root_id, root_version: km.root_version, root: root.toString('base64'), created_at: km.created_at, ...(older.length > 0 ? { older_roots: older } : {}) },
      svms: svms.map((s) => ({ uuid: s.uuid, name: s.name, scope: s.scope, created_at: s.created_at })),
      keks: keks.map((k) => ({ id: k.id, svm_uuid: k.svm_uuid, version: k.version, root_version: k.root_version, wrapped: k.wrapped.toString('base64'), state: k.state, created_at: k.created_at })),
      deks: deks.map((d) => ({ ...d, wrapped: d.wrapped === null ? null : d.wrapped.toString('base64') })),
    };
  }

}

function summary(p: BackupPayload) {
  return {
    key_manager: { uuid: p.key_manager.uuid, svm: { uuid: p.key_manager.svm_uuid } },
    created: p.created,
    svms: p.svms.length,
    keks: p.keks.length,
    deks: p.deks.length,
  };
}

/**
 * Checks that every KEK opens under the backup's root of its root version and every live DEK under
 * its KEK; returns the roots' current one and the KEKs (by `svm:version`) it opened.
 */
function checkPayload(p: BackupPayload): { ok: true; root: Buffer; kekKeys: Map<string, Buffer> } | { ok: false; reason: string } {
  const root = Buffer.from(p.key_manager.root, 'base64');
  if (root.length !== 32) return { ok: false, reason: 'The backup root key is not 32 bytes.' };
  const roots = new Map<number, Buffer>([[p.key_manager.root_version, root]]);
  const older: unknown = p.key_manager.older_roots ?? [];
  if (!Array.isArray(older)) return { ok: false, reason: 'The backup’s older root keys are malformed.' };
  for (const o of older as { root_version?: unknown; root?: unknown }[]) {
    const r = typeof o?.root === 'string' ? Buffer.from(o.root, 'base64') : null;
    if (!Number.isSafeInteger(o?.root_version) || roots.has(o.root_version as number) || !r || r.length !== 32) return { ok: false, reason: 'The backup’s older root keys are malformed.' };
    roots.set(o.root_version as number, r);
  }
  const kekKeys = new Map<string, Buffer>();
  let shut: string | undefined;
  for (const k of p.keks) {
    const under = roots.get(k.root_version);
    const key = under ? open(under, kekContext(k), Buffer.from(k.wrapped, 'base64')) : null;
    if (!key) {
      shut = k.id;
      break;
    }
    kekKeys.set(`${k.svm_uuid}:${k.version}`, key);
  }
  // Older roots serve only to open their KEKs (a restore re-wraps those under the current root).
  for (const [v, r] of roots) if (v !== p.key_manager.root_version) r.fill(0);
  if (shut !== undefined) return { ok: false, reason: `KEK ${shut} in the backup does not open under its root key.` };
  for (const d of p.deks) {
    if (d.wrapped === null) continue;
    const kek = kekKeys.get(`${d.svm_uuid}:${d.kek_version}`);
    if (!kek || !open(kek, dekContext(d.svm_uuid, d.id, d.kek_version), Buffer.from(d.wrapped, 'base64'))) {
      return { ok: false, reason: `Key ${d.id} in the backup does not open under its KEK.` };
    }
  }
  return { ok: true, root, kekKeys };
}

export type OnboardService = ReturnType<typeof createOnboardService>;
