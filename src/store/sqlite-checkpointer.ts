/**
 * WAL checkpoints of the SQLite store, off the event loop.
 *
 * SQLite checkpoints automatically at the end of the commit that takes the WAL past 1000 pages:
 * it copies the WAL's pages into the database file and fsyncs both, inside that commit. The
 * connection is synchronous (better-sqlite3), so under a steady stream of audited reads this
 * stalled the event loop for tens of milliseconds several times a second (measured: 15–48 ms
 * worst-case commits, against 5–9 ms without). Here a worker thread with its own connection to the
 * same file runs passive checkpoints instead, and once that worker runs, the serving connection's
 * automatic checkpoint moves from 1000 to SAFETY_NET pages. A passive checkpoint takes no lock the
 * serving connection waits for. Under a steady stream of writes a checkpoint from another
 * connection rarely catches the WAL's very end, and only a checkpoint that does lets the WAL
 * start over; so the serving connection still checkpoints now and then (every SAFETY_NET pages,
 * about 40 MB), cheaply, since the worker has already copied nearly every page by then. The WAL
 * stays bounded; the stalls become rare and short.
 *
 * If the worker cannot start, or stops, the serving connection checkpoints by itself again
 * (SQLite's default), so the WAL never grows without bound.
 */
import { Worker } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type SQLite from 'better-sqlite3';

/** SQLite's default automatic checkpoint threshold, in pages. */
const DEFAULT_AUTOCHECKPOINT = 1000;
/** The serving connection's own automatic checkpoint while the worker runs, in pages. */
const SAFETY_NET = 10_000;
/** How often the worker checkpoints. */
const INTERVAL_MS = 100;

function workerFile(): string | null {
  const here = dirname(fileURLToPath(import.meta.url));
  const sibling = join(here, 'sqlite-checkpointer-worker.js');
  if (existsSync(sibling)) return sibling;
  const built = resolve(here, '..', '..', 'dist', 'src', 'store', 'sqlite-checkpointer-worker.js');
  return existsSync(built) ? built : null;
}

export interface Checkpointer {
  stop(): Promise<void>;
}

export function startCheckpointer(sqlite: SQLite.Database, file: string): Checkpointer {
  const script = workerFile();
  if (!script) return { stop: async () => {} };
  let stopping = false;
  let worker: Worker | null = null;
  const fallBack = () => {
    try {
      if (sqlite.open) sqlite.pragma(`wal_autocheckpoint = ${DEFAULT_AUTOCHECKPOINT}`);
    } catch {
      /* closing */
    }
  };
  try {
    worker = new Worker(script, { workerData: { keysmithCheckpointer: { file, intervalMs: INTERVAL_MS } } });
  } catch {
    return { stop: async () => {} };
  }
  worker.unref();
  worker.on('message', (m: { ready?: boolean }) => {
    if (m.ready && !stopping) sqlite.pragma(`wal_autocheckpoint = ${SAFETY_NET}`);
  });
  worker.on('error', fallBack);
  worker.on('exit', () => {
    worker = null;
    if (!stopping) fallBack();
  });
  return {
    async stop() {
      stopping = true;
      fallBack(); // the serving connection checkpoints (and SQLite checkpoints at close) again
      const w = worker;
      worker = null;
      if (w) await w.terminate();
    },
  };
}
