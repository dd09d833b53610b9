/**
 * Keystore switch (PATCH /api/security/key-stores/{uuid} enabled=true): every KEK wrapped by another
 * configuration of the SVM (its own KEKs, and for the admin SVM also those of data SVMs that have
 * no key manager of their own) is re-wrapped under the newly enabled configuration, a batch per
 * step; then the configuration goes from 'switching' to 'active'.
 *
 * Steps (the cursor says where the job stands):
 *   move   → the next batch of KEKs still wrapped by another configuration of the SVM is moved
 *            (key-store-service moveKeks: re-wrapped, checked, written guarded by the old wrapping).
 *   finish → none is left: the configuration is active; the result says how many moved.
 * Each step runs in the runner's transaction with its cursor: a crash repeats at most the
 * uncommitted step, and repeating one is harmless (moved rows are no longer selected). The job
 * touches KEKs only; no DEK changes, so every key opens to the same bytes throughout.
 */
import type { Keyring } from '../hierarchy/keyring.js';
import type { KeyManagerRepo } from '../store/key-manager-repo.js';
import type { KeyStoreRepo } from '../store/key-store-repo.js';
import type { Tx } from '../store/schema.js';
import type { KeyManagers } from '../keymanagers/key-manager.js';
import { moveKeks } from '../keymanagers/key-store-service.js';
import type { JobHandler } from './job-runner.js';

type Cursor = null | { done: number; total: number };

/** KEKs per step: each may cost a round trip to an external key manager, so steps stay small. */
export const KEK_BATCH = 50;

export function switchJob(deps: { repo: KeyStoreRepo; keyManagers: Pick<KeyManagerRepo, 'findByUuid'>; managers: KeyManagers; keyring: Pick<Keyring, 'forgetTenant'>; batch?: number }): JobHandler {
  const batch = deps.batch ?? KEK_BATCH;
  return {
    description: (p) => `switch the keystore of SVM ${String(p.svm_name ?? p.svm_uuid)} to configuration ${String(p.to)}`,

    async step(job, raw, tx: Tx) {
      const params = JSON.parse(job.params) as { svm_uuid: string; to: string };
      const cursor = (raw as Cursor) ?? { done: 0, total: job.progress_total };
      const target = await deps.keyManagers.findByUuid(params.to, tx);
      // The configuration was deleted, or another one enabled since: this switch has nothing left to do.
      if (!target || target.enabled !== 1) {
        return { cursor, done: true, progress: { done: cursor.done, total: cursor.total }, message: 'the configuration is no longer the one to enable', result: { keks: cursor.done, superseded: true } };
      }
      const sources = (await deps.repo.configsForSvm(params.svm_uuid, tx)).filter((c) => c.uuid !== target.uuid).map((c) => c.uuid);
      const rows = await deps.repo.keksWrappedBy(sources, batch, tx);
      if (rows.length > 0) {
        const moved = await moveKeks({ keyManagers: deps.keyManagers, repo: deps.repo, managers: deps.managers, keyring: deps.keyring }, rows, target, tx);
        const done = cursor.done + moved;
        const total = Math.max(cursor.total, done);
        return { cursor: { done, total }, done: false, progress: { done, total }, message: `re-wrapped ${done} of ${total} KEKs under configuration ${target.uuid}` };
      }
      await deps.repo.setState(target.uuid, 'active', new Date().toISOString(), tx);
      return {
        cursor,
        done: true,
        progress: { done: cursor.done, total: cursor.total },
        message: `keystore switched: ${cursor.done} KEKs under configuration ${target.uuid}`,
        result: { configuration: target.uuid, keks: cursor.done },
      };
    },
  };
}
