/**
 * The audit log: append-only and hash-chained.
 *
 * Invariants:
 * - Each event's hash covers the previous event's hash and every field of the event, so an
 *   edited, deleted, inserted or reordered event breaks the chain; the head row (seq, hash) catches
 *   a truncated tail.
 * - A state change is recorded inside the transaction that makes it (`recordIn`): both commit or
 *   neither does.
 * - A read is recorded before its response is sent (`record` resolves once the event is durable);
 *   concurrent reads share one transaction (group commit).
 * - No secret is ever passed in: callers give ids, names and outcomes only.
 *
 * Durability of group commits on SQLite: better-sqlite3 is synchronous, so a commit under
 * `synchronous = FULL` blocks the event loop for the WAL's fsync (milliseconds on ordinary disks,
 * longer than all the rest of a batch of requests). A group commit of read events therefore runs
 * under `synchronous = NORMAL` (the commit is written to the WAL, not yet synced) on the one shared
 * connection, which is switched back to FULL before any other statement can use it; the WAL file is
 * then fsynced on libuv's thread pool, and the batch's callers are answered only after that fsync
 * returns. The event is as durable when its response is sent as under FULL, the chain stays written
 * by one connection (so state changes recorded with `recordIn` need no extra locking), and the event
 * loop serves other requests while the disk works. Events that arrive while the fsync runs are
 * committed together when it returns (see flush and startSync).
 */
import { hash } from 'node:crypto';
import { closeSync, fstatSync, fsync, openSync } from 'node:fs';
import { sql } from 'kysely';
import type { AuditRepo, AuditRow, AuditFilter } from '../store/audit-repo.js';
import type { Conn, Db } from '../store/schema.js';
import { newId } from '../ids.js';

export interface AuditEvent {
  actor: string;
  action: string;
  outcome: 'success' | 'failure';
  requestId?: string | null;
  objectType?: string | null;
  objectId?: string | null;
  svmUuid?: string | null;
  detail?: Record<string, unknown> | null;
}

export const GENESIS = '0'.repeat(64);

/**
 * Event ids: a fresh newId (time + 80 random bits, unique across nodes) every 1024 events, numbered
 * after it in newId's alphabet. A newId per event cost about 1 µs of every audited request.
 */
const ID_ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
let idBase = '';
let idNext = 1024;
function eventId(): string {
  if (idNext >= 1024) {
    idBase = newId('evt');
    idNext = 0;
  }
  const n = idNext++;
  return idBase + ID_ALPHABET[n >> 5] + ID_ALPHABET[n & 31];
}

/** WAL fsyncs of group commits running at once (see startSync). */
const MAX_SYNCS = 1;

export function eventHash(prev: string, r: Omit<AuditRow, 'hash' | 'prev_hash'>): string {
  const canonical = JSON.stringify([
    r.seq,
    r.id,
    r.time,
    r.request_id,
    r.actor,
    r.action,
    r.object_type,
    r.object_id,
    r.svm_uuid,
    r.outcome,
    r.detail,
  ]);
  // One-shot hash of the same bytes as before (prev, newline, canonical): a Hash object per event costs twice as much.
  return hash('sha256', `${prev}\n${canonical}`, 'hex');
}

export interface VerifyReport {
  ok: boolean;
  events: number;
  head: { seq: number; hash: string };
  /** First sequence number at which the chain breaks, and why. */
  broken_at?: number;
  reason?: string;
}

export function createAuditService(deps: { db: Db; repo: AuditRepo; dialect?: 'sqlite' | 'postgres'; now?: () => Date }) {
  const { db, repo } = deps;
  const now = deps.now ?? (() => new Date());
  /** Events committed together; every caller of the batch waits on its one promise. */
  interface Batch {
    events: AuditEvent[];
    done: Promise<void>;
    resolve: () => void;
    reject: (e: unknown) => void;
  }
  function newBatch(): Batch {
    const b = { events: [] } as unknown as Batch;
    b.done = new Promise<void>((resolve, reject) => {
      b.resolve = resolve;
      b.reject = reject;
    });
    return b;
  }
  let queue: Batch | null = null;
  let flushing: Promise<void> | null = null;
  // Requests that already recorded their own failure event, so the HTTP layer does not add a second.
  const failedRequests = new Set<string>();

  async function appendRows(tx: Conn, events: AuditEvent[]): Promise<void> {
    const head = await repo.lockHead(tx);
    let prev = head.hash;
    let seq = head.seq;
    const time = now().toISOString();
    const rows: AuditRow[] = new Array(events.length);
    for (let i = 0; i < events.length; i++) {
      const ev = events[i];
      seq += 1;
      // One literal per row (a spread followed by more properties is slow on Node 20); eventHash reads only the fields it hashes.
      const row: AuditRow = {
        seq,
        id: eventId(),
        time,
        request_id: ev.requestId ?? null,
        actor: ev.actor,
        action: ev.action,
        object_type: ev.objectType ?? null,
        object_id: ev.objectId ?? null,
        svm_uuid: ev.svmUuid ?? null,
        outcome: ev.outcome,
        detail: ev.detail ? JSON.stringify(ev.detail) : null,
        prev_hash: prev,
        hash: '',
      };
      const hash = eventHash(prev, row);
      row.hash = hash;
      rows[i] = row;
      prev = hash;
    }
    await repo.insertRows(rows, tx);
    await repo.setHead(seq, prev, tx);
  }

  // ---- SQLite: the WAL fsync of group commits, off the event loop (see the header).

  /** The WAL file to fsync, or null where commits must stay synchronous (PostgreSQL, in-memory or non-WAL SQLite). */
  let wal: { path: string; fd: number } | null | undefined = deps.dialect === 'sqlite' ? undefined : null;

  async function findWal(): Promise<void> {
    try {
      const mode = (await sql<{ journal_mode: string }>`PRAGMA journal_mode`.execute(db)).rows[0]?.journal_mode;
      const file = (await sql<{ name: string; file: string }>`PRAGMA database_list`.execute(db)).rows.find((r) => r.name === 'main')?.file;
      if (mode !== 'wal' || !file) wal = null;
      else wal = { path: `${file}-wal`, fd: -1 };
    } catch {
      wal = null;
    }
  }

  let fdUses = 0;
  /**
   * An fd on the WAL file as it is now. SQLite deletes the WAL only when its last connection closes,
   * which this one never does while serving; still, every 64th use checks that the file the fd
   * names is still linked, and reopens the path if not.
   */
  function walFd(w: { path: string; fd: number }): number {
    if (w.fd >= 0 && ((++fdUses & 63) !== 0 || fstatSync(w.fd).nlink > 0)) return w.fd;
    if (w.fd >= 0) closeSync(w.fd);
    w.fd = -1;
    w.fd = openSync(w.path, 'r');
    return w.fd;
  }

  /** Committed batches waiting for an fsync to start. */
  let awaitingSync: Batch[] = [];
  /** fsyncs running, each with the batches it makes durable (all committed before it started). */
  const syncs = new Set<Batch[]>();
  /** drain() callers waiting for the fsyncs in flight. */
  let synced: (() => void)[] = [];

  /**
   * Starts an fsync for the batches committed so far (at most MAX_SYNCS at once; measured on this
   * project's 2-core machine, a second concurrent fsync cost more CPU per event than it saved in
   * latency). Each batch is answered by an fsync that started after its commit. An fsync that
   * fails fails every batch not yet answered (a writeback error may be reported to only one of several
   * concurrent fsyncs), and later groups commit synchronously under FULL, where SQLite itself sees
   * any error: failing closed.
   */
  function startSync(): void {
    const batches = awaitingSync;
    awaitingSync = [];
    syncs.add(batches);
    const done = (err: unknown) => {
      syncs.delete(batches);
      if (err) {
        wal = null;
        const failed = [batches, ...syncs, awaitingSync];
        syncs.clear();
        awaitingSync = [];
        for (const list of failed) for (const b of list) b.reject(err);
      }
      if (awaitingSync.length > 0 && syncs.size < MAX_SYNCS) startSync();
      if (!err && queue && !flushing && !(wal && syncs.size >= MAX_SYNCS)) {
        // Events waited for this fsync: commit them and start their fsync first, then answer this
        // one's requests. Writing a group's answers takes longer than a commit, and the next fsync
        // need not wait for it (every request waits for about one and a half fsync cycles).
        // In a microtask, as scheduleFlush does in a later turn: flush clears `flushing` when it ends, after this assignment.
        const next = (flushing = Promise.resolve().then(flush));
        const answer = () => {
          for (const b of batches) b.resolve();
          // As below, once that commit is done (it may have failed and started no fsync).
          if (queue) scheduleFlush();
          else if (syncs.size === 0) for (const s of synced.splice(0)) s();
        };
        void next.then(answer, answer);
        return;
      }
      if (!err) for (const b of batches) b.resolve();
      if (queue) scheduleFlush();
      else if (syncs.size === 0) for (const s of synced.splice(0)) s();
    };
    try {
      fsync(walFd(wal as { path: string; fd: number }), done);
    } catch (e) {
      done(e);
    }
  }

  /** One group commit on SQLite/WAL: committed now without its fsync, answered after the fsync. */
  async function commitDeferred(batch: Batch): Promise<void> {
    await db.connection().execute(async (c) => {
      // Holding the connection: no other statement runs between these three steps.
      await sql`PRAGMA synchronous = NORMAL`.execute(c);
      try {
        await c.transaction().execute((tx) => appendRows(tx, batch.events));
      } finally {
        await sql`PRAGMA synchronous = FULL`.execute(c);
      }
    });
    awaitingSync.push(batch);
    if (syncs.size < MAX_SYNCS) startSync();
  }

  function scheduleFlush(): void {
    // setImmediate, not a microtask: on SQLite every query is synchronous, so only after the
    // event loop has parsed the other waiting requests do their events join this commit.
    if (!flushing) flushing = new Promise<void>((r) => setImmediate(r)).then(flush);
  }

  async function flush(): Promise<void> {
    if (wal === undefined) await findWal();
    while (queue) {
      // Events that arrive while the fsyncs run wait here rather than in the WAL: they could not be
      // answered any sooner, and one commit for all of them costs less than one per turn of the loop.
      // The fsync's completion commits them (scheduleFlush).
      if (wal && syncs.size >= MAX_SYNCS) break;
      const batch = queue;
      queue = null;
      try {
        if (wal) await commitDeferred(batch);
        else {
          await db.transaction().execute((tx) => appendRows(tx, batch.events));
          batch.resolve();
        }
      } catch (e) {
        batch.reject(e);
      }
    }
    flushing = null;
  }

  return {
    /** Records a state change inside the caller's transaction. */
    recordIn: (tx: Conn, ev: AuditEvent) => appendRows(tx, [ev]),
    /** Records a read or a refusal; resolves once the event is durable. */
    record(ev: AuditEvent): Promise<void> {
      if (ev.outcome === 'failure' && ev.requestId) failedRequests.add(ev.requestId);
      const batch = (queue ??= newBatch());
      batch.events.push(ev);
      if (!(wal && syncs.size >= MAX_SYNCS)) scheduleFlush();
      return batch.done;
    },
    /** True when the request recorded a failure event itself; forgets the request either way. */
    settleRequest(requestId: string): boolean {
      return failedRequests.delete(requestId);
    },
    query: (f: AuditFilter) => repo.query(f),
    async drain(): Promise<void> {
      while (flushing || syncs.size > 0 || queue) {
        if (flushing) await flushing;
        else if (syncs.size > 0) await new Promise<void>((r) => synced.push(r));
        else scheduleFlush();
      }
      // Nothing in flight: let go of the WAL file (the store may be closing); the next flush reopens it.
      if (wal && wal.fd >= 0) {
        closeSync(wal.fd);
        wal.fd = -1;
      }
    },
    async verify(): Promise<VerifyReport> {
      const head = await repo.head();
      let prev = GENESIS;
      let expected = 1;
      let n = 0;
      for (;;) {
        const page = await repo.scan(expected - 1, 5000);
        if (page.length === 0) break;
        for (const r of page) {
          const seq = Number(r.seq);
          if (seq !== expected) return { ok: false, events: n, head, broken_at: expected, reason: `event ${expected} is missing` };
          if (r.prev_hash !== prev) return { ok: false, events: n, head, broken_at: seq, reason: `event ${seq} does not follow event ${seq - 1}` };
          const { hash, prev_hash, ...rest } = r;
          void prev_hash;
          if (eventHash(prev, { ...rest, seq }) !== hash) return { ok: false, events: n, head, broken_at: seq, reason: `event ${seq} was altered` };
          prev = hash;
          expected += 1;
          n += 1;
        }
      }
      if (head.seq !== n || head.hash !== prev) {
        return { ok: false, events: n, head, broken_at: n + 1, reason: `the log ends at event ${n} but its head says ${head.seq}` };
      }
      return { ok: true, events: n, head };
    },
  };
}
export type AuditService = ReturnType<typeof createAuditService>;
