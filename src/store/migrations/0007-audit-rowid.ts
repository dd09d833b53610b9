/**
 * Frozen in time: on SQLite, audit_events keyed by its rowid.
 *
 * 0001 declared `seq bigint primary key`, which SQLite keeps as a separate index beside the table's
 * own rowid B-tree: every appended event wrote three B-trees (table, seq, id). `seq integer primary
 * key` makes seq the rowid itself, so an event writes two, and each audited request's commit writes
 * one page fewer to the WAL. The rows are copied in seq order, unchanged: the hash chain, which
 * covers only the values, verifies as before. PostgreSQL's table is left as it is.
 */
import { Kysely, sql } from 'kysely';

export function auditRowid(dialect: 'sqlite' | 'postgres') {
  return {
    async up(db: Kysely<any>): Promise<void> {
      if (dialect !== 'sqlite') return;
      await db.schema
        .createTable('audit_events_next')
        .addColumn('seq', 'integer', (c) => c.primaryKey())
        .addColumn('id', 'text', (c) => c.notNull().unique())
        .addColumn('time', 'text', (c) => c.notNull())
        .addColumn('request_id', 'text')
        .addColumn('actor', 'text', (c) => c.notNull())
        .addColumn('action', 'text', (c) => c.notNull())
        .addColumn('object_type', 'text')
        .addColumn('object_id', 'text')
        .addColumn('svm_uuid', 'text')
        .addColumn('outcome', 'text', (c) => c.notNull())
        .addColumn('detail', 'text')
        .addColumn('prev_hash', 'text', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull())
        .execute();
      const columns = sql.raw('seq, id, time, request_id, actor, action, object_type, object_id, svm_uuid, outcome, detail, prev_hash, hash');
      await sql`INSERT INTO audit_events_next (${columns}) SELECT ${columns} FROM audit_events ORDER BY seq`.execute(db);
      await db.schema.dropTable('audit_events').execute();
      await db.schema.alterTable('audit_events_next').renameTo('audit_events').execute();
    },
  };
}
