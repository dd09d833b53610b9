/**
 * Key migration (POST /api/security/key-managers/{source.uuid}/migrate): a data SVM's KEKs move
 * from the source key manager (the admin SVM's, for a data SVM that kept its keys there) to the
 * destination (its own), or back, a batch per step, each re-wrapped under the destination's root.
 *
 * Steps: the next batch of the SVM's KEKs still wrapped by the source is moved (key-store-service
 * moveKeks: re-wrapped, checked to open to the same bytes, written guarded by the old wrapping);
 * when none is left the job ends. Each step is one transaction with its cursor, so a crash repeats
 * at most the uncommitted step, and repeating one is harmless. DEKs are not touched: every key
 * opens to the same bytes throughout, and after it the SVM's rekeys are no longer refused (65537547).
 */
import type { Keyring } from '../hierarchy/keyring.js';
import { fail } from '../errors.js';
import type { KeyManagerRepo } from '../store/key-manager-repo.js';
import type { KeyStoreRepo } from '../store/key-store-repo.js';
import type { Tx } from '../store/schema.js';
import type { KeyManagers } from '../keymanagers/key-manager.js';
import { moveKeks } from '../keymanagers/key-store-service.js';
import type { JobHandler } from './job-runner.js';
import { KEK_BATCH } from './switch-job.js';

type Cursor = null | { done: number; total: number };

export function migrateJob(deps: { repo: KeyStoreRepo; keyManagers: Pick<KeyManagerRepo, 'findByUuid'>; managers: KeyManagers; keyring: Pick<Keyring, 'forgetTenant'>; batch?: number }): JobHandler {
  const batch = deps.batch ?? KEK_BATCH;
  return {
    description: (p) => `migrate the keys of SVM ${String(p.svm_name ?? p.svm_uuid)} from key manager ${String(p.source)} to ${String(p.destination)}`,

    async step(job, raw, tx: Tx) {
      const params = JSON.parse(job.params) as { svm_uuid: string; source: string; destination: string };
      const cursor = (raw as Cursor) ?? { done: 0, total: job.progress_total };
      const dest = await deps.keyManagers.findByUuid(params.destination, tx);
      // Deleting a key manager that still wraps keys is refused, so this is a destination removed before it received any.
      if (!dest) fail('key_manager_missing', `The destination key manager ${params.destination} no longer exists.`);
      const rows = await deps.repo.keksOfSvmUnder(params.svm_uuid, params.source, batch, tx);
      if (rows.length > 0) {
        const moved = await moveKeks({ keyManagers: deps.keyManagers, repo: deps.repo, managers: deps.managers, keyring: deps.keyring }, rows, dest, tx);
        const done = cursor.done + moved;
        const total = Math.max(cursor.total, done);
        return { cursor: { done, total }, done: false, progress: { done, total }, message: `migrated ${done} of ${total} KEKs to key manager ${dest.uuid}` };
      }
      return {
        cursor,
        done: true,
        progress: { done: cursor.done, total: cursor.total },
        message: `keys migrated: ${cursor.done} KEKs now under key manager ${dest.uuid}`,
        result: { source: params.source, destination: dest.uuid, keks: cursor.done },
      };
    },
  };
}
