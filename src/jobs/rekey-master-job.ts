/**
 * rekey-master: Element's RekeySoftwareEncryptionAtRestMasterKey. The master key is the admin SVM's
 * root (see keymanagers/master-key-service.ts for the model).
 *
 * Steps (the cursor says where the job stands; each runs in the runner's transaction with it):
 *   start   → admin key manager: a new root version, sealed under this node's seal and under the
 *             passphrase-derived key (opened from the backup seal with the old root, so no
 *             passphrase is asked), becomes the key manager's root; new KEKs use it from here on.
 *             No admin key manager: the internal master key is replaced in this one step.
 *             The old root is sealed under the new one (NEXT_ROOT_SEAL), so whoever opens the new
 *             root with the passphrase opens the old one too.
 *   rewrap  → the next batch of the key manager's KEKs still under an older root version, each
 *             re-wrapped under the new one and guarded by the version it was read with.
 *   finish  → under a lock on the KEK table, nothing is left under an older version: those versions
 *             are decommissioned (their node seals and their seals under a newer root erased, their
 *             master_keys rows marked).
 * A crash between steps leaves KEKs under both versions, and both are sealed for this node, so
 * every KEK and DEK stays readable; the restarted node resumes at the saved cursor. Repeating a
 * step is harmless: start only runs while the cursor is empty, and it is saved with its effects.
 * A pause or a cancel (ONTAP job actions) leaves the same state, a cancel for good: every version a
 * KEK is under stays sealed for this node and under the next version, so an unseal or a synchronize
 * with the passphrase (on this node or one that joins later, also after a passphrase change) opens
 * them all; a key backup carries every root version a KEK is under (onboard-service.ts), and the
 * next master-key rekey moves every KEK under its own new version, older ones included.
 */
import { randomBytes } from 'node:crypto';
import { open, seal } from '../crypto/aead.js';
import { KeysmithError } from '../errors.js';
import { NEXT_ROOT_SEAL, backupKeyContext, kekContext, olderRootContext, rootContext, type Keyring } from '../hierarchy/keyring.js';
import { keyInfo, type MasterKeyService } from '../keymanagers/master-key-service.js';
import type { KeyManagerRepo } from '../store/key-manager-repo.js';
import type { MasterKeyRepo } from '../store/master-key-repo.js';
import type { Tx } from '../store/schema.js';
import type { JobHandler } from './job-runner.js';

type Cursor =
  | null
  | { phase: 'rewrap' | 'finish'; km: string; from: number; to: number; oldId: string; newId: string; after: string; done: number; total: number };

export const REKEY_MASTER_BATCH = 500;

export function rekeyMasterJob(deps: { keyring: Keyring; master: MasterKeyService; repo: MasterKeyRepo; keyManagers: Pick<KeyManagerRepo, 'findByUuid' | 'upsertSeal'>; batch?: number }): JobHandler {
  const batch = deps.batch ?? REKEY_MASTER_BATCH;
  const { keyring, master, repo } = deps;

  async function result(oldId: string, newId: string, tx: Tx) {
    const o = await repo.find(oldId, tx);
    const n = await repo.find(newId, tx);
    if (!o || !n) throw new Error('master key rows vanished');
    return { newKey: keyInfo(n), keyToDecommission: keyInfo(o) };
  }

  return {
    description: () => 'rekey of the software encryption-at-rest master key',

    async step(_job, raw, tx: Tx) {
      const cursor = raw as Cursor;
      const t = new Date().toISOString();
      if (cursor === null) {
        const current = await master.current(tx);
        const km = await master.adminKeyManager(tx);
        if (!km) {
          // Internal master key: it wraps nothing (no key exists before a key manager), so the new one simply replaces it.
          const fresh = await master.newInternal(tx, t);
          if (fresh.id === current.id) throw new Error('a concurrent master key version got in the way; retrying');
          await repo.removeSeals(current.id, tx);
          await repo.decommission(current.id, t, tx);
          return { cursor: null, done: true, progress: { done: 0, total: 0 }, message: 'master key rekeyed', result: await result(current.id, fresh.id, tx) };
        }
        const oldRoot = keyring.root(km); // sealed or unsynchronized: the runner leaves the job to a node that can
        const from = km.root_version;
        const to = from + 1;
        const pk = open(oldRoot, backupKeyContext(km), km.backup_seal);
        if (!pk) throw new Error(`backup seal of key manager ${km.uuid} does not open under its root`);
        const next = { ...km, root_version: to };
        const root = randomBytes(32);
        const passphraseSeal = seal(pk, km.root_id, to, rootContext(next), root);
        const backupSeal = seal(root, km.root_id, to, backupKeyContext(next), pk);
        pk.fill(0);
        if (!(await repo.advanceRoot(km.uuid, from, { root_version: to, passphrase_seal: passphraseSeal, backup_seal: backupSeal, updated_at: t }, tx))) {
          throw new Error(`key manager ${km.uuid} changed during the master-key rekey`);
        }
        await deps.keyManagers.upsertSeal({ key_manager_uuid: km.uuid, root_version: to, node_id: keyring.node.id, blob: keyring.sealForNode(next, root), created_at: t }, tx);
        // The old root sealed under the new one until finish: the passphrase opens only the newest
        // version, and a node that synchronizes while KEKs are still under this one needs it too.
        await deps.keyManagers.upsertSeal({ key_manager_uuid: km.uuid, root_version: from, node_id: NEXT_ROOT_SEAL, blob: seal(root, km.uuid, to, olderRootContext(km), oldRoot), created_at: t }, tx);
        const fresh = await master.rootRow(next, to, t, tx);
        // Kept in memory before commit: if the step rolls back, the next attempt makes another root
        // for the same slot, and the one kept here is never used (the store still names version `from`).
        keyring.putRoot(next, root);
        const total = await repo.countKeksUnderRoot(km.uuid, to, tx);
        const c: Cursor = { phase: 'rewrap', km: km.uuid, from, to, oldId: current.id, newId: fresh.id, after: '', done: 0, total };
        return { cursor: c, done: false, progress: { done: 0, total }, message: `re-wrapping ${total} KEKs under master key version ${to}` };
      }
      const km = await deps.keyManagers.findByUuid(cursor.km, tx);
      if (!km) throw new KeysmithError('key_manager_missing');
      if (cursor.phase === 'rewrap') {
        const rows = await repo.keksUnderRoot(km.uuid, cursor.to, cursor.after, batch, tx);
        if (rows.length === 0) return { cursor: { ...cursor, phase: 'finish' }, done: false, progress: { done: cursor.done, total: cursor.total } };
        const target = keyring.root({ uuid: km.uuid, root_version: cursor.to });
        for (const r of rows) {
          const material = open(keyring.root({ uuid: km.uuid, root_version: r.root_version }), kekContext(r), r.wrapped);
          // A KEK that does not open is left as it is: re-wrapping must never lose one.
          if (!material) throw new Error(`KEK ${r.id} does not open under root version ${r.root_version}`);
          const blob = seal(target, km.uuid, cursor.to, kekContext(r), material);
          material.fill(0);
          await repo.rewrapKek(km.uuid, r.id, r.root_version, cursor.to, blob, tx);
        }
        const done = cursor.done + rows.length;
        const total = Math.max(cursor.total, done);
        return { cursor: { ...cursor, after: rows[rows.length - 1].id, done, total }, done: false, progress: { done, total }, message: `re-wrapped ${done} of ${total} KEKs` };
      }
      await repo.lockKeks(tx);
      if ((await repo.countKeksUnderRoot(km.uuid, cursor.to, tx)) > 0) return { cursor: { ...cursor, phase: 'rewrap', after: '' }, done: false };
      await repo.removeRootSealsBelow(km.uuid, cursor.to, tx);
      await repo.decommissionRootsBelow(km.uuid, cursor.to, t, tx);
      const res = await result(cursor.oldId, cursor.newId, tx);
      keyring.forgetRootsBelow(km.uuid, cursor.to);
      return { cursor, done: true, progress: { done: cursor.done, total: cursor.total }, message: `master key rekeyed: ${cursor.done} KEKs under root version ${cursor.to}`, result: res };
    },
  };
}
