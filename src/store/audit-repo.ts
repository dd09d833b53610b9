/** SQL for the append-only audit log and its chain head. */
import { sql, type CompiledQuery } from 'kysely';
import type SQLite from 'better-sqlite3';
import type { AuditEventTable, Conn } from './schema.js';

export type AuditRow = AuditEventTable;

export interface AuditFilter {
  action?: string;
  actor?: string;
  objectId?: string;
  svmUuids?: string[];
  outcome?: string;
  since?: string;
  until?: string;
  afterSeq?: number;
  limit: number;
}

/** A precompiled query with fresh parameters (a literal: `{ ...q, parameters }` is slow on Node 20). */
const withParameters = (q: CompiledQuery, parameters: readonly unknown[]): CompiledQuery => ({ sql: q.sql, query: q.query, queryId: q.queryId, parameters });

const AUDIT_COLUMNS = ['seq', 'id', 'time', 'request_id', 'actor', 'action', 'object_type', 'object_id', 'svm_uuid', 'outcome', 'detail', 'prev_hash', 'hash'] as const;

/** Synchronous appends on SQLite's raw connection (see appendNow in audit-service.ts). */
export interface DirectAppender {
  /** True while a transaction is open on the connection: appending now would join it. */
  busy(): boolean;
  /** In one transaction: reads the head, inserts the rows `chain` makes after it, moves the head. */
  append(chain: (head: { seq: number; hash: string }) => AuditRow[]): void;
}

/** Writes a row's values into `out` from `k` in AUDIT_COLUMNS order (named fields: a loop over the names cost 2 µs an event). */
function packRow(out: unknown[], k: number, r: AuditRow): number {
  out[k] = r.seq;
  out[k + 1] = r.id;
  out[k + 2] = r.time;
  out[k + 3] = r.request_id;
  out[k + 4] = r.actor;
  out[k + 5] = r.action;
  out[k + 6] = r.object_type;
  out[k + 7] = r.object_id;
  out[k + 8] = r.svm_uuid;
  out[k + 9] = r.outcome;
  out[k + 10] = r.detail;
  out[k + 11] = r.prev_hash;
  out[k + 12] = r.hash;
  return k + 13;
}

export function directAppender(raw: SQLite.Database): DirectAppender {
  const CHUNK = 32;
  const inserts: SQLite.Statement[] = [];
  const insertOf = (n: number) =>
    (inserts[n] ??= raw.prepare(`insert into "audit_events" (${AUDIT_COLUMNS.map((c) => `"${c}"`).join(', ')}) values ${Array.from({ length: n }, () => `(${AUDIT_COLUMNS.map(() => '?').join(', ')})`).join(', ')}`));
  const head = raw.prepare<[], { seq: number; hash: string }>('select "seq", "hash" from "audit_head" where "id" = 1');
  const setHead = raw.prepare('update "audit_head" set "seq" = ?, "hash" = ? where "id" = 1');
  const append = raw.transaction((chain: (head: { seq: number; hash: string }) => AuditRow[]) => {
    const h = head.get();
    if (!h) throw new Error('the audit head row is missing');
    const rows = chain({ seq: Number(h.seq), hash: h.hash });
    for (let i = 0; i < rows.length; i += CHUNK) {
      const n = Math.min(CHUNK, rows.length - i);
      const parameters: unknown[] = new Array(n * AUDIT_COLUMNS.length);
      let k = 0;
      for (let j = i; j < i + n; j++) k = packRow(parameters, k, rows[j]);
      insertOf(n).run(parameters);
    }
    const last = rows[rows.length - 1];
    setHead.run(last.seq, last.hash);
  });
  return {
    busy: () => raw.inTransaction,
    append: (chain) => append.immediate(chain),
  };
}

export function createAuditRepo(db: Conn, dialect: 'sqlite' | 'postgres') {
  // SQLite: INSERTs of 1..CHUNK rows compiled once each (columns in AUDIT_COLUMNS order) and run
  // with fresh parameters; compiling a multi-row INSERT for every group commit costs more than running it.
  const CHUNK = 32;
  const template = Object.fromEntries(AUDIT_COLUMNS.map((c) => [c, c === 'seq' ? 0 : ''])) as unknown as AuditRow;
  const inserts: CompiledQuery[] = [];
  const insertOf = (n: number) => (inserts[n] ??= db.insertInto('audit_events').values(new Array<AuditRow>(n).fill(template)).compile());
  const headSelect = db.selectFrom('audit_head').select(['seq', 'hash']).where('id', '=', 1).compile();
  const headUpdate = db.updateTable('audit_head').set({ seq: 0, hash: '' }).where('id', '=', 1).compile();
  return {
    /** Appends rows: on SQLite in precompiled chunks; on PostgreSQL multi-row INSERTs, one round trip per 500. */
    insertRows: async (rows: AuditRow[], tx: Conn) => {
      if (dialect === 'postgres') {
        for (let i = 0; i < rows.length; i += 500) await tx.insertInto('audit_events').values(rows.slice(i, i + 500)).execute();
        return;
      }
      for (let i = 0; i < rows.length; i += CHUNK) {
        const n = Math.min(CHUNK, rows.length - i);
        const parameters: unknown[] = new Array(n * AUDIT_COLUMNS.length);
        let k = 0;
        for (let j = i; j < i + n; j++) k = packRow(parameters, k, rows[j]);
        await tx.executeQuery(withParameters(insertOf(n), parameters));
      }
    },
    /** Reads the head; on PostgreSQL the row stays locked until the transaction ends, serializing appenders across nodes. */
    lockHead: async (tx: Conn) => {
      const row =
        dialect === 'postgres'
          ? await tx.selectFrom('audit_head').select(['seq', 'hash']).where('id', '=', 1).forUpdate().executeTakeFirstOrThrow()
          : (await tx.executeQuery<{ seq: number; hash: string }>(headSelect)).rows[0];
      if (!row) throw new Error('the audit head row is missing');
      return { seq: Number(row.seq), hash: row.hash };
    },
    setHead: async (seq: number, hash: string, tx: Conn) => {
      await tx.executeQuery(withParameters(headUpdate, [seq, hash, 1]));
    },
    insertMany: (rows: AuditRow[], tx: Conn) => tx.insertInto('audit_events').values(rows).execute(),
    query: (f: AuditFilter, tx: Conn = db) => {
      let q = tx.selectFrom('audit_events').selectAll();
      if (f.action) q = q.where('action', '=', f.action);
      if (f.actor) q = q.where('actor', '=', f.actor);
      if (f.objectId) q = q.where('object_id', '=', f.objectId);
      if (f.outcome) q = q.where('outcome', '=', f.outcome);
      if (f.svmUuids) q = f.svmUuids.length === 0 ? q.where(sql<boolean>`1 = 0`) : q.where('svm_uuid', 'in', f.svmUuids);
      if (f.since) q = q.where('time', '>=', f.since);
      if (f.until) q = q.where('time', '<=', f.until);
      if (f.afterSeq !== undefined) q = q.where('seq', '>', f.afterSeq);
      return q.orderBy('seq').limit(f.limit).execute();
    },
    /** All events in order, in pages, for verification. */
    scan: (afterSeq: number, limit: number, tx: Conn = db) =>
      tx.selectFrom('audit_events').selectAll().where('seq', '>', afterSeq).orderBy('seq').limit(limit).execute(),
    head: async (tx: Conn = db) => {
      const row = await tx.selectFrom('audit_head').select(['seq', 'hash']).where('id', '=', 1).executeTakeFirstOrThrow();
      return { seq: Number(row.seq), hash: row.hash };
    },
  };
}
export type AuditRepo = ReturnType<typeof createAuditRepo>;
