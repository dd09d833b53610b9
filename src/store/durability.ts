/**
 * Commit durability on SQLite without blocking the event loop.
 *
 * better-sqlite3 is synchronous: under `synchronous = FULL` every commit blocks the event loop for
 * the WAL's fsync (about 0.25 ms on a quiet disk, several ms on a busy one), so no request is served
 * while the disk works and commits cannot share an fsync. Keysmith's SQLite connection therefore runs
 * under `synchronous = NORMAL` (a commit is written to the WAL in the OS, which survives a killed
 * process but not yet a power loss), and this module makes the commits durable before anyone is told
 * of them: every answer (HTTP response, KMIP response) first waits for `wait()`, which resolves once
 * the WAL has been fsynced, on libuv's thread pool, by an fsync that started after the last commit.
 *
 * Invariants:
 * - A commit counted before `wait()` is called is on disk when its promise resolves: each fsync
 *   covers the commits counted when it started. Commits made while one runs share the next one
 *   (group commit), so one fsync is in flight at a time.
 * - Commits made inside `uncounted()` are not waited for: the audit events of reads, which are
 *   written to the WAL before the read is answered and reach the disk with the next fsync (or the
 *   next checkpoint), as a file audit log written without fsync does.
 * - An fsync that fails rejects every waiter and turns the connection back to `synchronous = FULL`,
 *   where SQLite itself syncs and reports errors on each commit from then on: failing closed.
 *
 * On PostgreSQL (and SQLite without a WAL file) commits are durable when they return: `wait()` is
 * always undefined.
 */
import { closeSync, fstatSync, fsync, fsyncSync, openSync } from 'node:fs';

export interface Durability {
  /** Counts a commit made just now (called by the store's driver). */
  committed(): void;
  /** Whether an open transaction holds counted writes (a group being committed): nothing is answered until it commits. */
  open(dirty: boolean): void;
  /** A commit failed after its transactions returned: every answer fails from now on (see sqlite-driver.ts). */
  poison(e: unknown): void;
  /** Whether poison() was called: nothing may go on writing from what it read before (the job runner stops). */
  readonly poisoned: boolean;
  /** A promise that resolves once every commit counted so far is on disk; undefined when they are already. */
  wait(): Promise<void> | undefined;
  /** Runs `fn`; commits it makes are not counted (see the header). `fn` must hold the store's connection. */
  uncounted<T>(fn: () => Promise<T>): Promise<T>;
  /** Whether commits are being counted right now (false inside `uncounted`). */
  readonly counting: boolean;
  /** Syncs what is left, synchronously, and lets go of the WAL file. */
  close(): void;
}

/** Durability where every commit is durable when it returns. */
export const SYNCHRONOUS_COMMITS: Durability = {
  committed() {},
  open() {},
  poison() {},
  poisoned: false,
  wait: () => undefined,
  uncounted: (fn) => fn(),
  counting: true,
  close() {},
};

interface Generation {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
  /** The commit count this fsync covers (set when it starts). */
  upTo: number;
}

function generation(): Generation {
  const g = { upTo: 0 } as Generation;
  g.promise = new Promise<void>((resolve, reject) => {
    g.resolve = resolve;
    g.reject = reject;
  });
  // A waiter may be gone (its client disconnected) when an fsync fails: never an unhandled rejection.
  g.promise.catch(() => {});
  return g;
}

/**
 * Durability for a SQLite database in WAL mode whose connection runs under `synchronous = NORMAL`.
 * `onFailure` is called once when an fsync fails (it switches the connection to FULL); `sync` is
 * node:fs's fsync (tests observe it).
 */
export function walDurability(walPath: string, onFailure: (e: unknown) => void, sync: (fd: number, done: (err: unknown) => void) => void = fsync): Durability {
  let commits = 0;
  let synced = 0;
  let counting = true;
  let failed = false;
  let openDirty = false;
  let poisoned: Error | null = null;
  let inFlight: Generation | null = null;
  let next: Generation | null = null;
  let fd = -1;
  let fdUses = 0;

  /**
   * An fd on the WAL file as it is now. SQLite deletes the WAL only when its last connection closes,
   * which Keysmith's never does while serving; still, every 64th use checks that the file the fd
   * names is still linked, and reopens the path if not.
   */
  function walFd(): number {
    if (fd >= 0 && ((++fdUses & 63) !== 0 || fstatSync(fd).nlink > 0)) return fd;
    if (fd >= 0) closeSync(fd);
    fd = -1;
    fd = openSync(walPath, 'r');
    return fd;
  }

  /** Starts the fsync the next waiters need, unless one runs or a dirty group has yet to commit. */
  function maybeStart(): void {
    if (inFlight || !next || openDirty) return;
    const g = next;
    next = null;
    start(g);
  }

  function start(g: Generation): void {
    inFlight = g;
    g.upTo = commits;
    const done = (err: unknown) => {
      inFlight = null;
      if (err) {
        failed = true;
        const pending = next;
        next = null;
        g.reject(err);
        pending?.reject(err);
        onFailure(err);
        return;
      }
      synced = Math.max(synced, g.upTo);
      g.resolve();
      maybeStart();
    };
    try {
      sync(walFd(), done);
    } catch (e) {
      done(e);
    }
  }

  return {
    committed() {
      if (failed) return;
      commits += 1;
      maybeStart();
    },
    open(dirty: boolean) {
      openDirty = dirty;
      if (!dirty) maybeStart();
    },
    poison(e: unknown) {
      poisoned ??= new Error(`the store could not commit (${(e as Error)?.message ?? String(e)}); restart Keysmith`);
      openDirty = false;
      const pending = [inFlight, next];
      next = null;
      for (const g of pending) g?.reject(poisoned);
    },
    wait() {
      if (poisoned) {
        const p = Promise.reject(poisoned);
        p.catch(() => {});
        return p;
      }
      if (failed) return undefined;
      if (!openDirty) {
        if (synced >= commits) return undefined;
        if (inFlight && inFlight.upTo >= commits) return inFlight.promise;
      }
      const g = (next ??= generation());
      maybeStart();
      return g.promise;
    },
    async uncounted<T>(fn: () => Promise<T>): Promise<T> {
      counting = false;
      try {
        return await fn();
      } finally {
        counting = true;
      }
    },
    get counting() {
      return counting;
    },
    get poisoned() {
      return poisoned !== null;
    },
    close() {
      try {
        if (!failed && !poisoned && synced < commits) fsyncSync(walFd());
      } finally {
        if (fd >= 0) closeSync(fd);
        fd = -1;
        synced = commits;
      }
    },
  };
}
