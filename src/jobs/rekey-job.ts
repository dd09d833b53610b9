/**
 * rekey-internal: a tenant gets a new KEK version and every DEK is re-wrapped under it, a batch per
 * step; then the old versions are decommissioned (they wrap nothing more, yet still open the
 * wrapped forms clients hold, so no key is lost).
 *
 * Steps (the cursor says where the job stands):
 *   start   → new KEK version active, old one retiring; new keys use the new version from here on.
 *   rewrap  → the next batch (in id order after the cursor) re-wrapped, each row guarded by the
 *             version it was read with, so a key destroyed meanwhile is left alone.
 *   finish  → retiring versions decommissioned; the result names the new and the old version.
 * Each step runs in the runner's transaction with the cursor, so a crash repeats at most the
 * uncommitted step, and repeating a step is harmless.
 */
import { randomBytes } from 'node:crypto';
import { open, seal } from '../crypto/aead.js';
import { fail } from '../errors.js';
import { newId } from '../ids.js';
import { dekContext } from '../hierarchy/dek-service.js';
import type { Keyring } from '../hierarchy/keyring.js';
import type { DekRepo } from '../store/dek-repo.js';
import type { KekRepo } from '../store/kek-repo.js';
import type { KeyManagerRepo } from '../store/key-manager-repo.js';
import type { Tx } from '../store/schema.js';
import type { JobHandler } from './job-runner.js';

type Cursor = null | { phase: 'rewrap'; to: number; after: string; done: number; total: number } | { phase: 'finish'; to: number; done: number; total: number };

export const REKEY_BATCH = 1000;

export function rekeyInternalJob(deps: { keyring: Keyring; keks: KekRepo; deks: DekRepo; keyManagers: Pick<KeyManagerRepo, 'findByUuid'>; batch?: number }): JobHandler {
  const batch = deps.batch ?? REKEY_BATCH;
  return {
    description: (p) => `rekey-internal of SVM ${String(p.svm_name ?? p.svm_uuid)}`,

    async step(job, raw, tx: Tx) {
      const svmUuid = job.svm_uuid!;
      const cursor = raw as Cursor;
      if (cursor === null) {
        const current = await deps.keks.findActive(svmUuid, tx);
        if (!current) fail('rekey_no_keys');
        const km = await deps.keyManagers.findByUuid(current.key_manager_uuid, tx);
        if (!km) fail('key_manager_missing');
        const to = (await deps.keks.maxVersion(svmUuid, tx)) + 1;
        const row = { id: newId('kek'), svm_uuid: svmUuid, version: to, key_manager_uuid: km.uuid, root_version: km.root_version, state: 'active' as const, created_at: new Date().toISOString() };
        await deps.keks.insert({ ...row, wrapped: deps.keyring.wrapKek(km, row, randomBytes(32)) }, tx);
        for (const k of await deps.keks.listForSvm(svmUuid, tx)) if (k.version < to && k.state === 'active') await deps.keks.setState(svmUuid, k.version, 'retiring', tx);
        const total = await deps.deks.countStillUnder(svmUuid, to, tx);
        return { cursor: { phase: 'rewrap', to, after: '', done: 0, total }, done: false, progress: { done: 0, total }, message: `re-wrapping ${total} keys under KEK version ${to}` };
      }
      if (cursor.phase === 'rewrap') {
        const rows = await deps.deks.stillUnder(svmUuid, cursor.to, cursor.after, batch, tx);
        if (rows.length === 0) {
          return { cursor: { phase: 'finish', to: cursor.to, done: cursor.done, total: cursor.total }, done: false, progress: { done: cursor.done, total: cursor.total } };
        }
        const target = await deps.keyring.kek(svmUuid, cursor.to, tx);
        if (!target) throw new Error(`KEK version ${cursor.to} of ${svmUuid} is missing`);
        const sources = new Map<number, Buffer>();
        const rewrapped: { id: string; fromVersion: number; wrapped: Buffer }[] = [];
        for (const r of rows) {
          if (!sources.has(r.kek_version)) {
            const k = await deps.keyring.kek(svmUuid, r.kek_version, tx);
            if (!k) throw new Error(`KEK version ${r.kek_version} of ${svmUuid} is missing`);
            sources.set(r.kek_version, k.key);
          }
          const plain = open(sources.get(r.kek_version)!, dekContext(svmUuid, r.id, r.kek_version), r.wrapped!);
          // A key that does not open is left exactly as it is: re-wrapping must never lose one.
          if (!plain) throw new Error(`key ${r.id} does not open under KEK version ${r.kek_version}`);
          const blob = seal(target.key, target.row.id, cursor.to, dekContext(svmUuid, r.id, cursor.to), plain);
          plain.fill(0);
          rewrapped.push({ id: r.id, fromVersion: r.kek_version, wrapped: blob });
        }
        await deps.deks.rewrapMany(rewrapped, cursor.to, tx);
        const done = cursor.done + rows.length;
        const total = Math.max(cursor.total, done);
        return { cursor: { ...cursor, after: rows[rows.length - 1].id, done, total }, done: false, progress: { done, total }, message: `re-wrapped ${done} of ${total} keys` };
      }
      // finish: nothing is left under the old versions (keys created meanwhile used the new one).
      if ((await deps.deks.countStillUnder(svmUuid, cursor.to, tx)) > 0) {
        return { cursor: { phase: 'rewrap', to: cursor.to, after: '', done: cursor.done, total: cursor.total }, done: false };
      }
      const old: number[] = [];
      for (const k of await deps.keks.listForSvm(svmUuid, tx)) {
        if (k.version < cursor.to && k.state !== 'decommissioned') {
          await deps.keks.setState(svmUuid, k.version, 'decommissioned', tx);
          old.push(k.version);
        }
      }
      return {
        cursor,
        done: true,
        progress: { done: cursor.done, total: cursor.total },
        message: `rekey complete: ${cursor.done} keys under KEK version ${cursor.to}`,
        result: { new_version: cursor.to, decommissioned_versions: old, keys: cursor.done },
      };
    },
  };
}
