/**
 * rekey-internal: a tenant gets a new KEK version and every DEK is re-wrapped under it, a batch per
 * step; then the old versions are decommissioned (they wrap nothing more, yet still open the
 * wrapped forms clients hold, so no key is lost).
 *
 * Steps (the cursor says where the job stands):
 *   start   → new KEK version active, old one retiring; new keys use the new version from here on.
 *   rewrap  → the next batch (in id order after the cursor) re-wrapped, each row guarded by the
 *             version it was read with, so a key destroyed meanwhile is left alone.
 *   finish  → the tenant walked in slices (VERIFY_BATCHES batches' worth of keys per step) to check that no key is left under
 *             an old version (any is: back to rewrap); then the retiring versions are decommissioned and
 *             the result names the new and the old versions.
 * Each step runs in the runner's transaction with the cursor, so a crash repeats at most the
 * uncommitted step, and repeating a step is harmless.
 *
 * Speed: the crypto (open + seal per key) runs in worker threads (rewrap-pool.ts), pipelined with
 * the store. A step writes a batch the workers have finished and reads the next ones for them
 * (REKEY_AHEAD batches ahead), so the workers re-wrap while the step writes and commits; the
 * runner's prepare() waits for the workers before the transaction opens, so the transaction never
 * holds the store while the CPU works. A batch read ahead is only a proposal: it is written only by
 * the step whose committed cursor it follows (after a rollback, a restart or another node's step
 * the queue is dropped and read again), and only where each row still holds material under the
 * version it was read with.
 */
import { randomBytes } from 'node:crypto';
import { createRewrapPool, type RewrapOutput, type RewrapPool } from '../crypto/rewrap-pool.js';
import { fail } from '../errors.js';
import { newId } from '../ids.js';
import type { Keyring } from '../hierarchy/keyring.js';
import type { DekRepo } from '../store/dek-repo.js';
import type { KekRepo } from '../store/kek-repo.js';
import type { KeyManagerRepo } from '../store/key-manager-repo.js';
import type { Conn, Tx } from '../store/schema.js';
import type { JobHandler } from './job-runner.js';

/** `finish` walks the tenant from `after` (absent in cursors saved by earlier releases: from the start). */
type Cursor = null | { phase: 'rewrap'; to: number; after: string; done: number; total: number } | { phase: 'finish'; to: number; done: number; total: number; after?: string };

/**
 * A batch read from the store and handed to the workers, not yet written. `after` is the cursor it
 * follows and `last` the cursor after it: a batch is used only by the step whose cursor is `after`.
 */
interface Ahead {
  job: string;
  to: number;
  after: string;
  last: string;
  rows: number;
  work: Promise<RewrapOutput>;
}

export const REKEY_BATCH = 2000;
/** Batches re-wrapped ahead of the cursor: the workers always have the next one while a step writes and commits. */
export const REKEY_AHEAD = 2;
/**
 * Batches' worth of keys the finish phase checks per step (reads only, no crypto): 20,000 keys by
 * default. One statement over a whole tenant held the event loop (and, on SQLite, the store) for
 * about 0.35 s per million keys; a slice takes milliseconds.
 */
export const VERIFY_BATCHES = 10;

export function rekeyInternalJob(deps: { keyring: Keyring; keks: KekRepo; deks: DekRepo; keyManagers: Pick<KeyManagerRepo, 'findByUuid'>; batch?: number; pool?: RewrapPool; ahead?: number }): JobHandler {
  const batch = deps.batch ?? REKEY_BATCH;
  const depth = Math.max(1, deps.ahead ?? REKEY_AHEAD);
  const verifySlice = batch * VERIFY_BATCHES;
  const pool = deps.pool ?? createRewrapPool();
  /** In cursor order; memory stays at `depth` batches whatever the tenant's size. */
  let queue: Ahead[] = [];

  /**
   * Reads the batch after `after` and hands it to the workers. The KEKs its rows name and the
   * target are read here (in the caller's transaction, if any); only the crypto outlives the call.
   */
  async function readAhead(job: string, svmUuid: string, to: number, after: string, tx?: Conn): Promise<Ahead | null> {
    const rows = await deps.deks.stillUnder(svmUuid, to, after, batch, tx);
    if (rows.length === 0) return null;
    const target = await deps.keyring.kek(svmUuid, to, tx);
    if (!target) throw new Error(`KEK version ${to} of ${svmUuid} is missing`);
    const sources = new Map<number, Buffer>();
    for (const r of rows) {
      if (sources.has(r.kek_version)) continue;
      const k = await deps.keyring.kek(svmUuid, r.kek_version, tx);
      if (!k) throw new Error(`KEK version ${r.kek_version} of ${svmUuid} is missing`);
      sources.set(r.kek_version, k.key);
    }
    // stillUnder returns only rows holding material. A key that does not open fails the whole
    // batch (the pool rejects) and nothing of it is written: re-wrapping must never lose a key.
    const work = pool.rewrap({ svm: svmUuid, sources, target: { id: target.row.id, version: to, key: target.key }, rows: rows as { id: string; kek_version: number; wrapped: Buffer }[] });
    work.catch(() => undefined); // a batch nobody awaits (the job stopped) is no unhandled rejection
    return { job, to, after, last: rows[rows.length - 1].id, rows: rows.length, work };
  }

  /** The queue, if it continues from this cursor; otherwise it is dropped (a rollback, a restart, another node's step). */
  function queued(job: string, to: number, after: string): Ahead | undefined {
    const head = queue[0];
    if (head && head.job === job && head.to === to && head.after === after) return head;
    queue = [];
    return undefined;
  }

  /** Tops the queue up to `depth` batches after `from` (the last batch known to be read). */
  async function fill(job: string, svmUuid: string, to: number, from: string, tx?: Conn): Promise<void> {
    let after = queue.length ? queue[queue.length - 1].last : from;
    while (queue.length < depth) {
      const next = await readAhead(job, svmUuid, to, after, tx);
      if (!next) return;
      queue.push(next);
      after = next.last;
    }
  }

  return {
    description: (p) => `rekey-internal of SVM ${String(p.svm_name ?? p.svm_uuid)}`,

    /**
     * Before a rewrap step's transaction: wait here, holding no connection, for the workers to
     * finish the batch the step will write. When none was read ahead (the first step of this
     * process, after a rollback or another node's step), read it now, outside any transaction.
     * Nothing durable happens here; on any error the step redoes the work and reports it.
     */
    async prepare(job, raw) {
      const cursor = raw as Cursor;
      if (cursor === null || cursor.phase !== 'rewrap' || !job.svm_uuid) return;
      try {
        if (!queued(job.uuid, cursor.to, cursor.after)) await fill(job.uuid, job.svm_uuid, cursor.to, cursor.after);
        await queue[0]?.work;
      } catch {
        queue = [];
      }
    },

    async step(job, raw, tx: Tx) {
      const svmUuid = job.svm_uuid!;
      const cursor = raw as Cursor;
      if (cursor === null) {
        queue = [];
        const current = await deps.keks.findActive(svmUuid, tx);
        if (!current) fail('rekey_no_keys');
        const km = await deps.keyManagers.findByUuid(current.key_manager_uuid, tx);
        if (!km) fail('key_manager_missing');
        const to = (await deps.keks.maxVersion(svmUuid, tx)) + 1;
        const row = { id: newId('kek'), svm_uuid: svmUuid, version: to, key_manager_uuid: km.uuid, root_version: km.root_version, state: 'active' as const, created_at: new Date().toISOString() };
        await deps.keks.insert({ ...row, wrapped: deps.keyring.wrapKek(km, row, randomBytes(32)) }, tx);
        for (const k of await deps.keks.listForSvm(svmUuid, tx)) if (k.version < to && k.state === 'active') await deps.keks.setState(svmUuid, k.version, 'retiring', tx);
        await deps.deks.analyzeForRekey(tx);
        const total = await deps.deks.countStillUnder(svmUuid, to, tx);
        return { cursor: { phase: 'rewrap', to, after: '', done: 0, total }, done: false, progress: { done: 0, total }, message: `re-wrapping ${total} keys under KEK version ${to}` };
      }
      if (cursor.phase === 'rewrap') {
        // The batch after this cursor: read ahead (by prepare or an earlier step), or read now.
        let b = queued(job.uuid, cursor.to, cursor.after);
        if (!b) {
          const read = await readAhead(job.uuid, svmUuid, cursor.to, cursor.after, tx);
          if (!read) {
            return { cursor: { phase: 'finish', to: cursor.to, done: cursor.done, total: cursor.total }, done: false, progress: { done: cursor.done, total: cursor.total } };
          }
          queue = [read];
          b = read;
        }
        const { items } = await b.work;
        queue.shift();
        await deps.deks.relaxCommit(tx);
        // Read the next batches now and hand them to the workers: they re-wrap them while this one
        // is written and committed. Whether they are used is decided by the next steps' cursors.
        if (deps.deks.dialect === 'postgres') {
          // On another pooled connection, while this batch's UPDATE runs: PostgreSQL serves both at
          // once. A read that fails only loses its proposal (the next step reads again).
          const reading = fill(job.uuid, svmUuid, cursor.to, b.last).catch(() => {
            queue = [];
          });
          try {
            await deps.deks.rewrapMany(items, cursor.to, tx);
          } finally {
            await reading; // never left running into the next step's read-ahead
          }
        } else {
          await fill(job.uuid, svmUuid, cursor.to, b.last, tx);
          await deps.deks.rewrapMany(items, cursor.to, tx);
        }
        const done = cursor.done + b.rows;
        const total = Math.max(cursor.total, done);
        return { cursor: { ...cursor, after: b.last, done, total }, done: false, progress: { done, total }, message: `re-wrapped ${done} of ${total} keys` };
      }
      // finish: nothing is left under the old versions (keys created meanwhile used the new one). The
      // tenant is walked in slices, one per step; a key still under an old version sends the job back
      // to re-wrapping from the start. Keys created during the walk are under the new version, so a
      // slice once passed stays clean.
      const slice = await deps.deks.sliceStillUnder(svmUuid, cursor.to, cursor.after ?? '', verifySlice, tx);
      if (slice.found) {
        return { cursor: { phase: 'rewrap', to: cursor.to, after: '', done: cursor.done, total: cursor.total }, done: false };
      }
      if (slice.rows === verifySlice) {
        return { cursor: { ...cursor, after: slice.last! }, done: false, progress: { done: cursor.done, total: cursor.total } };
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
