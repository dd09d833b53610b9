/**
 * The audit log: append-only and hash-chained.
 *
 * Invariants:
 * - Each event's hash covers the previous event's hash and every field of the event, so an
 *   edited, deleted, inserted or reordered event breaks the chain; the head row (seq, hash) catches
 *   a truncated tail.
 * - A state change is recorded inside the transaction that makes it (`recordIn`): both commit or
 *   neither does.
 * - A read is recorded before its response is sent (`record` resolves after commit); concurrent
 *   reads share one transaction (group commit).
 * - No secret is ever passed in: callers give ids, names and outcomes only.
 */
import { createHash } from 'node:crypto';
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
  return createHash('sha256').update(prev).update('\n').update(canonical).digest('hex');
}

export interface VerifyReport {
  ok: boolean;
  events: number;
  head: { seq: number; hash: string };
  /** First sequence number at which the chain breaks, and why. */
  broken_at?: number;
  reason?: string;
}

export function createAuditService(deps: { db: Db; repo: AuditRepo; now?: () => Date }) {
  const { db, repo } = deps;
  const now = deps.now ?? (() => new Date());
  let queue: { ev: AuditEvent; resolve: () => void; reject: (e: unknown) => void }[] = [];
  let flushing: Promise<void> | null = null;
  // Requests that already recorded their own failure event, so the HTTP layer does not add a second.
  const failedRequests = new Set<string>();

  async function appendRows(tx: Conn, events: AuditEvent[]): Promise<void> {
    const head = await repo.lockHead(tx);
    let prev = head.hash;
    let seq = head.seq;
    const time = now().toISOString();
    const rows: AuditRow[] = events.map((ev) => {
      seq += 1;
      const base = {
        seq,
        id: newId('evt'),
        time,
        request_id: ev.requestId ?? null,
        actor: ev.actor,
        action: ev.action,
        object_type: ev.objectType ?? null,
        object_id: ev.objectId ?? null,
        svm_uuid: ev.svmUuid ?? null,
        outcome: ev.outcome,
        detail: ev.detail ? JSON.stringify(ev.detail) : null,
      };
      const hash = eventHash(prev, base);
      const row = { ...base, prev_hash: prev, hash };
      prev = hash;
      return row;
    });
    // Keep each INSERT well under the bind-parameter limits of both databases.
    for (let i = 0; i < rows.length; i += 500) await repo.insertMany(rows.slice(i, i + 500), tx);
    await repo.setHead(seq, prev, tx);
  }

  async function flush(): Promise<void> {
    while (queue.length > 0) {
      const batch = queue;
      queue = [];
      try {
        await db.transaction().execute((tx) => appendRows(tx, batch.map((b) => b.ev)));
        for (const b of batch) b.resolve();
      } catch (e) {
        for (const b of batch) b.reject(e);
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
      return new Promise<void>((resolve, reject) => {
        queue.push({ ev, resolve, reject });
        // setImmediate, not a microtask: on SQLite every query is synchronous, so only after the
        // event loop has parsed the other waiting requests do their events join this commit.
        if (!flushing) flushing = new Promise<void>((r) => setImmediate(r)).then(flush);
      });
    },
    /** True when the request recorded a failure event itself; forgets the request either way. */
    settleRequest(requestId: string): boolean {
      return failedRequests.delete(requestId);
    },
    query: (f: AuditFilter) => repo.query(f),
    async drain(): Promise<void> {
      while (flushing) await flushing;
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
