/**
 * The durable job runner: every long operation is a job row with a cursor; a node claims it with a
 * lease, runs it step by step, and each step commits its work, its cursor and the lease check in
 * one transaction.
 *
 * Invariants:
 * - A step's changes commit only while this node holds the job's lease: a node that lost its lease
 *   (it stalled, another node took over) rolls its step back, so exactly one node executes each step.
 * - A crash at any instant leaves the job at its last committed cursor; the next claim resumes it
 *   from there (at once when the same node restarts: a lease it finds in its own name is its dead
 *   predecessor's, and the runner runs one job at a time). Steps are written so that repeating one
 *   is harmless.
 * - stop() lets the running step finish and releases the lease.
 */
import type { Logger } from 'pino';
import { KeysmithError } from '../errors.js';
import { uuid as newUuid } from '../ids.js';
import type { Db, Tx } from '../store/schema.js';
import type { Durability } from '../store/durability.js';
import type { JobRepo, JobRow } from '../store/job-repo.js';

export interface StepResult {
  cursor: unknown;
  done: boolean;
  progress?: { done: number; total: number };
  result?: unknown;
  message?: string;
}

export interface JobHandler {
  description(params: Record<string, unknown>): string;
  step(job: JobRow, cursor: unknown, tx: Tx): Promise<StepResult>;
  /**
   * Optional work for the next step done before its transaction opens (CPU-bound preparation, such
   * as re-wrapping keys in worker threads), so the transaction holds the store only while it
   * writes. It must change nothing durable: only step() commits. Its errors count as the step's.
   */
  prepare?(job: JobRow, cursor: unknown): Promise<void>;
  /**
   * ONTAP's PATCH /cluster/jobs/{uuid}?action=pause|cancel. Every job resumes from its cursor, so
   * both are allowed unless a handler says otherwise. A paused job keeps its cursor and holds no
   * lease; a cancelled one ends as a failure where its last committed step left it.
   */
  pausable?: boolean;
  cancellable?: boolean;
}

const MAX_ERRORS = 5;

export function createJobRunner(deps: { db: Db; repo: JobRepo; nodeId: string; log: Logger; handlers: Record<string, JobHandler>; pollMs?: number; leaseMs?: number; durability?: Pick<Durability, 'poisoned'> }) {
  const { db, repo, nodeId, log } = deps;
  const LEASE_MS = deps.leaseMs ?? 15_000;
  const pollMs = deps.pollMs ?? 250;
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let stopping = false;
  let kicked = false;
  const errors = new Map<string, number>();

  async function finish(job: JobRow, state: 'success' | 'failure', code: number, message: string, result: unknown, tx?: Tx) {
    const t = new Date().toISOString();
    const patch = { state, code, message, end_time: t, updated_at: t, result: result === undefined ? null : JSON.stringify(result), lease_owner: null, lease_until: null };
    if (tx) return repo.advance(job.uuid, nodeId, patch, tx);
    return db.transaction().execute((t2) => repo.advance(job.uuid, nodeId, patch, t2));
  }

  // Jobs this process is running: a lease in this node's name on any other job is a dead
  // predecessor's, which claimable() hands back at once; never one this process is still running.
  const active = new Set<string>();

  async function runJob(uuid: string): Promise<void> {
    if (active.has(uuid)) return;
    active.add(uuid);
    try {
      await runClaimed(uuid);
    } finally {
      active.delete(uuid);
    }
  }

  async function runClaimed(uuid: string): Promise<void> {
    if (!(await repo.claim(uuid, nodeId, Date.now(), Date.now() + LEASE_MS))) return;
    for (;;) {
      // SQLite's driver is synchronous: without a turn of the event loop between steps, a whole job
      // would run as one chain of microtasks and no request would be served until it ended.
      await new Promise((r) => setImmediate(r));
      // A failed group commit rolled back steps this runner believes done (its cursor, a new KEK it
      // has cached): it must not write on from them. The job resumes from the store after a restart.
      if (deps.durability?.poisoned) {
        log.error({ job: uuid }, 'job stopped: the store could not commit; restart Keysmith');
        return;
      }
      if (stopping) {
        await repo.release(uuid, nodeId);
        return;
      }
      const job = await repo.find(uuid);
      if (!job || job.lease_owner !== nodeId || job.state !== 'running') return;
      const handler = deps.handlers[job.type];
      if (!handler) {
        await finish(job, 'failure', 3, `This node does not know jobs of type ${job.type}.`, undefined);
        return;
      }
      try {
        if (handler.prepare) await handler.prepare(job, job.cursor ? JSON.parse(job.cursor) : null);
        if (deps.durability?.poisoned) return; // as above: poisoned while the step prepared
        const done = await db.transaction().execute(async (tx) => {
          const r = await handler.step(job, job.cursor ? JSON.parse(job.cursor) : null, tx);
          const t = new Date().toISOString();
          const patch: Partial<JobRow> = {
            cursor: JSON.stringify(r.cursor ?? null),
            updated_at: t,
            lease_until: Date.now() + LEASE_MS,
            start_time: job.start_time ?? t,
            ...(r.progress ? { progress_done: r.progress.done, progress_total: r.progress.total } : {}),
            ...(r.message ? { message: r.message } : {}),
          };
          if (!(await repo.advance(uuid, nodeId, patch, tx))) throw new LeaseLost();
          if (r.done) {
            if (!(await finish({ ...job, ...patch } as JobRow, 'success', 0, r.message ?? 'complete', r.result, tx))) throw new LeaseLost();
          }
          return r.done;
        });
        errors.delete(uuid);
        if (done) return;
      } catch (e) {
        if (e instanceof LeaseLost) return;
        if (e instanceof KeysmithError && (e.kind === 'sealed' || e.kind === 'not_synchronized')) {
          // This node cannot open the keys, another node (or this one, once unsealed) can: leave the job.
          await repo.release(uuid, nodeId);
          return;
        }
        if (e instanceof KeysmithError) {
          await finish(job, 'failure', Number(e.code), e.message, undefined);
          return;
        }
        const n = (errors.get(uuid) ?? 0) + 1;
        errors.set(uuid, n);
        log.error({ job: uuid, attempt: n, err: { message: (e as Error).message } }, 'job step failed');
        if (n >= MAX_ERRORS) {
          await finish(job, 'failure', 5, 'Internal error: the job failed repeatedly; see the server log.', undefined);
          return;
        }
        await repo.release(uuid, nodeId);
        return;
      }
    }
  }

  async function tick(): Promise<void> {
    kicked = false;
    try {
      for (const { uuid } of await repo.claimable(Date.now(), nodeId)) {
        if (stopping) break;
        await runJob(uuid);
      }
    } catch (e) {
      log.error({ err: { message: (e as Error).message } }, 'job runner tick failed');
    }
  }

  function schedule(delay: number) {
    if (stopping) return;
    timer = setTimeout(() => {
      timer = null;
      running = tick().finally(() => {
        running = null;
        schedule(kicked ? 0 : pollMs);
      });
    }, delay);
    timer.unref();
  }

  return {
    start(): void {
      stopping = false;
      if (timer || running) return; // already started: one polling loop per runner
      schedule(0);
    },

    /** Records a new job; the runner (here or on another node) picks it up. */
    async submit(input: { type: string; svmUuid: string | null; params: Record<string, unknown>; createdBy: string; total?: number }, tx: Tx): Promise<JobRow> {
      const handler = deps.handlers[input.type];
      if (!handler) throw new Error(`unknown job type ${input.type}`);
      const t = new Date().toISOString();
      const row = await repo.insert(
        {
          uuid: newUuid(),
          type: input.type,
          description: handler.description(input.params),
          state: 'queued',
          code: 0,
          message: 'queued',
          svm_uuid: input.svmUuid,
          params: JSON.stringify(input.params),
          cursor: null,
          result: null,
          progress_done: 0,
          progress_total: input.total ?? 0,
          created_by: input.createdBy,
          created_at: t,
          start_time: null,
          end_time: null,
          updated_at: t,
          lease_owner: null,
          lease_until: null,
        },
        tx,
      );
      return row;
    },

    /** Whether jobs of this type accept an ONTAP job action. */
    supports(type: string, action: 'pause' | 'cancel'): boolean {
      const h = deps.handlers[type];
      if (!h) return false;
      return action === 'pause' ? h.pausable !== false : h.cancellable !== false;
    },

    /** Pause, resume or cancel (ONTAP job actions); false when the job is not in a state that allows it. */
    async control(uuid: string, action: 'pause' | 'resume' | 'cancel', cancelled?: { code: number; message: string }): Promise<boolean> {
      const t = new Date().toISOString();
      if (action === 'pause') return repo.pause(uuid, t);
      if (action === 'cancel') return repo.cancel(uuid, cancelled!.code, cancelled!.message, t);
      const ok = await repo.resume(uuid, t);
      if (ok) this.kick();
      return ok;
    },

    /** Wakes the runner now (after a submit) instead of at its next poll. */
    kick(): void {
      kicked = true;
      if (timer && !running) {
        clearTimeout(timer);
        timer = null;
        schedule(0);
      }
    },

    /** Waits up to `ms` for a job to end; returns its row as it then is. */
    async wait(uuid: string, ms: number): Promise<JobRow | undefined> {
      const until = Date.now() + ms;
      for (;;) {
        const job = await repo.find(uuid);
        if (!job || job.state === 'success' || job.state === 'failure' || Date.now() >= until) return job;
        await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, until - Date.now()))));
      }
    },

    async stop(): Promise<void> {
      stopping = true;
      if (timer) clearTimeout(timer);
      timer = null;
      while (running) await running;
    },
  };
}
export type JobRunner = ReturnType<typeof createJobRunner>;

class LeaseLost extends Error {}
