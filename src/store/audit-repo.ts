/** SQL for the append-only audit log and its chain head. */
import { sql } from 'kysely';
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

export function createAuditRepo(db: Conn, dialect: 'sqlite' | 'postgres') {
  return {
    /** Reads the head; on PostgreSQL the row stays locked until the transaction ends, serializing appenders across nodes. */
    lockHead: async (tx: Conn) => {
      const q = tx.selectFrom('audit_head').select(['seq', 'hash']).where('id', '=', 1);
      const row = await (dialect === 'postgres' ? q.forUpdate() : q).executeTakeFirstOrThrow();
      return { seq: Number(row.seq), hash: row.hash };
    },
    setHead: (seq: number, hash: string, tx: Conn) => tx.updateTable('audit_head').set({ seq, hash }).where('id', '=', 1).execute(),
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
