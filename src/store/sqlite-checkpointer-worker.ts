/**
 * The checkpointing thread of the SQLite store (see sqlite-checkpointer.ts): its own connection
 * to the store's file, a passive checkpoint every interval. Passive checkpoints never wait for
 * the serving connection; a busy one (another checkpoint running) is simply tried again next time.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import SQLite from 'better-sqlite3';

const cfg = (workerData as { keysmithCheckpointer?: { file: string; intervalMs: number } } | null)?.keysmithCheckpointer;

if (!isMainThread && parentPort && cfg) {
  const db = new SQLite(cfg.file, { fileMustExist: true });
  // FULL: a checkpoint fsyncs the WAL before it copies and the database file after.
  db.pragma('synchronous = FULL');
  db.pragma('wal_autocheckpoint = 0');
  db.pragma('busy_timeout = 0');
  const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
  const timer = setInterval(() => {
    try {
      checkpoint.get();
    } catch {
      /* busy: next time */
    }
  }, cfg.intervalMs);
  parentPort.postMessage({ ready: true });
  parentPort.on('close', () => {
    clearInterval(timer);
    db.close();
  });
}
