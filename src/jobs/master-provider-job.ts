/**
 * rekey-master-provider: Element's RekeySoftwareEncryptionAtRestMasterKey when it moves the master
 * key between key managers: External with a keyProviderID (onto a new root key created on that
 * provider's KMIP server) or Internal while the master key is on a provider (back onto the admin
 * SVM's onboard key manager).
 *
 * The method that submits the job has already made the target the admin SVM's enabled configuration
 * (state 'switching') in the submitting transaction, so new KEKs use it from then on. Steps:
 *   move   → the next batch of KEKs still wrapped by another configuration of the admin SVM is
 *            re-wrapped under the target (key-store-service moveKeks: checked, guarded by the old
 *            wrapping) — the same move as a keystore switch.
 *   finish → none is left: the target is 'active'; its root becomes Element's master key (a
 *            master_keys row), the previous master key is decommissioned; the result reports both.
 * Each step commits with its cursor; repeating one is harmless, so a crash loses nothing and every
 * DEK opens to the same bytes throughout (only KEKs move, their material unchanged).
 */
import type { Keyring } from '../hierarchy/keyring.js';
import type { KeyManagers } from '../keymanagers/key-manager.js';
import { moveKeks } from '../keymanagers/key-store-service.js';
import { keyInfo, type MasterKeyService } from '../keymanagers/master-key-service.js';
import type { KeyManagerRepo } from '../store/key-manager-repo.js';
import type { KeyStoreRepo } from '../store/key-store-repo.js';
import type { MasterKeyRepo } from '../store/master-key-repo.js';
import type { Tx } from '../store/schema.js';
import type { JobHandler } from './job-runner.js';

export const MASTER_PROVIDER_JOB = 'rekey-master-provider';

type Cursor = null | { done: number; total: number };

export interface MasterProviderParams {
  svm_uuid: string;
  to: string;
  old_master_id: string;
  key_management_type: 'internal' | 'external';
  key_provider_id?: number;
  /** The provider the previous master key was on, if it was external. */
  old_key_provider_id?: number;
}

export function masterProviderJob(deps: {
  repo: KeyStoreRepo;
  keyManagers: Pick<KeyManagerRepo, 'findByUuid'>;
  managers: KeyManagers;
  keyring: Pick<Keyring, 'forgetTenant'>;
  master: Pick<MasterKeyService, 'rootRow'>;
  masterKeys: Pick<MasterKeyRepo, 'find' | 'decommission' | 'retireInternal'>;
  batch?: number;
}): JobHandler {
  const batch = deps.batch ?? 50;
  return {
    description: (p) => (p.key_management_type === 'external' ? `move the master key onto KMIP key provider ${String(p.key_provider_id)}` : 'move the master key back to internal key management'),

    async step(job, raw, tx: Tx) {
      const params = JSON.parse(job.params) as MasterProviderParams;
      const cursor = (raw as Cursor) ?? { done: 0, total: job.progress_total };
      const target = await deps.keyManagers.findByUuid(params.to, tx);
      if (!target || target.enabled !== 1) throw new Error(`the master key's target configuration ${params.to} is gone or no longer enabled`);
      const sources = (await deps.repo.configsForSvm(params.svm_uuid, tx)).filter((c) => c.uuid !== target.uuid).map((c) => c.uuid);
      const rows = await deps.repo.keksWrappedBy(sources, batch, tx);
      if (rows.length > 0) {
        const moved = await moveKeks({ keyManagers: deps.keyManagers, repo: deps.repo, managers: deps.managers, keyring: deps.keyring }, rows, target, tx);
        const done = cursor.done + moved;
        const total = Math.max(cursor.total, done);
        return { cursor: { done, total }, done: false, progress: { done, total }, message: `re-wrapped ${done} of ${total} KEKs under the new master key` };
      }
      const t = new Date().toISOString();
      await deps.repo.setState(target.uuid, 'active', t, tx);
      const fresh = await deps.master.rootRow(target, target.root_version, t, tx);
      await deps.masterKeys.retireInternal(t, tx);
      if (params.old_master_id !== fresh.id) await deps.masterKeys.decommission(params.old_master_id, t, tx);
      const old = await deps.masterKeys.find(params.old_master_id, tx);
      const now = (await deps.masterKeys.find(fresh.id, tx)) ?? fresh;
      const external = (row: typeof now, providerId?: number) => ({ ...keyInfo(row), ...(providerId !== undefined ? { keyManagementType: 'external' as const, keyProviderID: providerId } : {}) });
      return {
        cursor,
        done: true,
        progress: { done: cursor.done, total: cursor.total },
        message: `master key moved: ${cursor.done} KEKs under configuration ${target.uuid}`,
        result: {
          newKey: external(now, params.key_management_type === 'external' ? params.key_provider_id : undefined),
          ...(old ? { keyToDecommission: external(old, params.old_key_provider_id) } : {}),
        },
      };
    },
  };
}
