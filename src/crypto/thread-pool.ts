/**
 * The worker-thread plumbing both crypto pools share: rewrap-pool.ts (the re-wraps of a rekey) and
 * hierarchy/unwrap-pool.ts (batch unwraps). Each pool decides how to cut its work into chunks and
 * what a chunk holds; this module finds the compiled worker, starts workers on demand, sends chunks
 * round-robin and hands back each worker's answers in the order it was sent them, ends idle
 * workers, and gives up on threads for good when the build cannot load.
 *
 * Invariants:
 * - A worker that dies rejects every chunk it still owed; the pool's caller redoes that work in its
 *   own thread, so no caller depends on threads being available.
 * - A worker keeps the process alive only while it owes an answer; idle workers end after idleMs.
 */
import { Worker, type ResourceLimits, type Transferable } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The compiled worker script: next to the calling module when it runs from dist/, else the tree's
 * dist/src/<dir>/ (tests run the TypeScript sources, and a worker thread cannot load TypeScript).
 */
export function compiledWorker(moduleUrl: string, file: string, dir: string): string | null {
  const here = dirname(fileURLToPath(moduleUrl));
  const sibling = join(here, file);
  if (existsSync(sibling)) return sibling;
  const built = resolve(here, '..', '..', 'dist', 'src', dir, file);
  return existsSync(built) ? built : null;
}

export interface ThreadPoolOptions {
  /** Named in errors: "<name> worker failed: …". */
  name: string;
  /** The compiled worker (compiledWorker); null: no threads, callers do the work themselves. */
  file: string | null;
  size: number;
  workerData: unknown;
  resourceLimits?: ResourceLimits;
  idleMs?: number;
}

interface Slot<Res> {
  worker: Worker;
  /** Answers come in the order the chunks were sent. */
  pending: { resolve(r: Res): void; reject(e: Error): void }[];
}

export function createThreadPool<Req, Res>(opts: ThreadPoolOptions) {
  const idleMs = opts.idleMs ?? 5_000;
  let slots: Slot<Res>[] = [];
  let next = 0;
  let idle: NodeJS.Timeout | null = null;
  let inflight = 0;
  let disabled = opts.file === null || opts.size <= 0;
  let answered = false; // some worker has answered once: the build loads

  function spawn(): Slot<Res> {
    const worker = new Worker(opts.file!, { workerData: opts.workerData, ...(opts.resourceLimits ? { resourceLimits: opts.resourceLimits } : {}) });
    const slot: Slot<Res> = { worker, pending: [] };
    const fail = (e: Error) => {
      slots = slots.filter((s) => s !== slot);
      for (const p of slot.pending.splice(0)) p.reject(e);
    };
    worker.on('message', (r: Res) => {
      answered = true;
      slot.pending.shift()?.resolve(r);
      if (slot.pending.length === 0) worker.unref();
    });
    worker.on('error', (e) => fail(new Error(`${opts.name} worker failed: ${e.message}`)));
    worker.on('exit', (code) => fail(new Error(`${opts.name} worker exited (code ${code})`)));
    worker.unref();
    return slot;
  }

  function armIdle() {
    if (idle) clearTimeout(idle);
    idle = setTimeout(() => {
      idle = null;
      if (inflight > 0) return armIdle();
      const gone = slots;
      slots = [];
      for (const s of gone) void s.worker.terminate();
    }, idleMs);
    idle.unref();
  }

  return {
    size: opts.size,
    /** False once threads proved unusable here (no build, no threads): callers work in their own thread. */
    usable: () => !disabled,

    /** Starts workers until `n` run (at most size); returns how many run. */
    ensure(n: number): number {
      while (!disabled && slots.length < Math.min(n, opts.size)) {
        try {
          slots.push(spawn());
        } catch {
          disabled = true; // no threads here
        }
      }
      return slots.length;
    },

    /** Sends one chunk to the next worker (ensure() first); `transfer` moves buffers instead of copying them. */
    send(req: Req, transfer?: readonly Transferable[]): Promise<Res> {
      const slot = slots[next++ % slots.length];
      return new Promise<Res>((res, rej) => {
        slot.pending.push({ resolve: res, reject: rej });
        slot.worker.ref(); // a pending answer keeps the process alive
        slot.worker.postMessage(req, transfer);
      });
    },

    /** A send was rejected: if no worker ever answered, the build does not load, so stop trying threads. */
    failed(): void {
      if (!answered) disabled = true;
    },

    /** Runs `fn` as one use of the pool: idle workers are not ended while it runs. */
    async hold<T>(fn: () => Promise<T>): Promise<T> {
      inflight += 1;
      try {
        return await fn();
      } finally {
        inflight -= 1;
        armIdle();
      }
    },

    /** Ends the workers now (tests, shutdown); the pool starts new ones if used again. */
    async close(): Promise<void> {
      if (idle) clearTimeout(idle);
      idle = null;
      const gone = slots;
      slots = [];
      await Promise.all(gone.map((s) => s.worker.terminate()));
    },
  };
}
export type ThreadPool<Req, Res> = ReturnType<typeof createThreadPool<Req, Res>>;
