/**
 * The audit log: append-only and hash-chained.
 *
 * Invariants:
 * - Each event's hash covers the previous event's hash and every field of the event, so an
 *   edited, deleted, inserted or reordered event breaks the chain; the head row (seq, hash) catches
 *   a truncated tail.
 * - A state change is recorded inside the transaction that makes it (`recordIn`): both commit or
 *   neither does.
 * - A read is recorded before its response is sent: `record` resolves once its event is committed;
 *   concurrent reads share one transaction (group commit).
 * - No secret is ever passed in: callers give ids, names and outcomes only.
 *
 * Durability of reads' events (see store/durability.ts): on SQLite a group of read events is
 * committed to the WAL, which survives a killed process, and is not waited for on the disk unless
 * `fsyncReads` is set: it reaches the disk with the next fsync of any state change, or the next
 * checkpoint. That is what a file audit log written without fsync gives; `fsyncReads` makes each
 * read wait for the fsync (one per group, off the event loop) at about 0.25 ms more per read on one
 * connection. State changes are recorded in their own transaction and are as durable as it is.
 */
import { hash } from 'node:crypto';
import type { AuditRepo, AuditRow, AuditFilter, DirectAppender } from '../store/audit-repo.js';
import type { Conn, Db } from '../store/schema.js';
import { SYNCHRONOUS_COMMITS, type Durability } from '../store/durability.js';
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

export function createAuditService(deps: { db: Db; repo: AuditRepo; direct?: DirectAppender; durability?: Durability; fsyncReads?: boolean; now?: () => Date }) {
  const { db, repo } = deps;
  const durability = deps.durability ?? SYNCHRONOUS_COMMITS;
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

  /** The rows that follow `head` for these events, chained. */
  function chainRows(head: { seq: number; hash: string }, events: AuditEvent[]): AuditRow[] {
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
    return rows;
  }

  async function appendRows(tx: Conn, events: AuditEvent[]): Promise<void> {
    const rows = chainRows(await repo.lockHead(tx), events);
    const last = rows[rows.length - 1];
    await repo.insertRows(rows, tx);
    await repo.setHead(last.seq, last.hash, tx);
  }

  /**
   * SQLite: commits a group at once on the raw connection, when no transaction is open on it (one
   * held across awaits by another caller must finish first: false, use the Kysely path). Nothing
   * else can run in between, as better-sqlite3 is synchronous; it skips Kysely's executor, its
   * connection lock and a promise per statement, most of a small group commit's cost.
   */
  function appendNow(events: AuditEvent[]): boolean {
    const direct = deps.direct;
    if (!direct || direct.busy()) return false;
    direct.append((head) => chainRows(head, events));
    if (deps.fsyncReads) durability.committed();
    return true;
  }

  /**
   * One group commit of read events. Held on the store's connection, so that no other statement's
   * commit is left uncounted; with `fsyncReads`, answered once the fsync that covers it returns.
   */
  async function commitGroup(batch: Batch): Promise<void> {
    if (appendNow(batch.events)) {
      const synced = deps.fsyncReads ? durability.wait() : undefined;
      if (synced) synced.then(batch.resolve, batch.reject);
      else batch.resolve();
    } else if (deps.fsyncReads) {
      await db.transaction().execute((tx) => appendRows(tx, batch.events));
      // The next group commits while this one's fsync runs, and joins the fsync after it.
      const synced = durability.wait();
      if (synced) synced.then(batch.resolve, batch.reject);
      else batch.resolve();
    } else {
      await db.connection().execute((c) => durability.uncounted(() => c.transaction().execute((tx) => appendRows(tx, batch.events))));
      batch.resolve();
    }
  }

  function scheduleFlush(): void {
    // setImmediate, not a microtask: on SQLite every query is synchronous, so only after the
    // event loop has parsed the other waiting requests do their events join this commit.
    if (!flushing) flushing = new Promise<void>((r) => setImmediate(r)).then(flush);
  }

  async function flush(): Promise<void> {
    while (queue) {
      const batch = queue;
      queue = null;
      try {
        await commitGroup(batch);
      } catch (e) {
        batch.reject(e);
      }
    }
    flushing = null;
  }

  return {
    /** Records a state change inside the caller's transaction. */
    recordIn: (tx: Conn, ev: AuditEvent) => appendRows(tx, [ev]),
    /** Records a read or a refusal; resolves once the event is committed (see the header). */
    record(ev: AuditEvent): Promise<void> {
      if (ev.outcome === 'failure' && ev.requestId) failedRequests.add(ev.requestId);
      const batch = (queue ??= newBatch());
      batch.events.push(ev);
      scheduleFlush();
      return batch.done;
    },
    /** True when the request recorded a failure event itself; forgets the request either way. */
    settleRequest(requestId: string): boolean {
      return failedRequests.delete(requestId);
    },
    query: (f: AuditFilter) => repo.query(f),
    /** Resolves once every event recorded so far is committed and on disk. */
    async drain(): Promise<void> {
      while (flushing || queue) {
        if (flushing) await flushing;
        else scheduleFlush();
      }
      await durability.wait();
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
