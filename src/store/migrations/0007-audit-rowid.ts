/**
 * Frozen in time: on SQLite, audit_events keyed by its rowid.
 *
 * 0001 declared `seq bigint primary key`, which SQLite keeps as a separate index beside the table's
 * own rowid B-tree, and `id unique`, a third: every appended event wrote three B-trees, and every
 * audited request's commit three pages to the WAL. `seq integer primary key` makes seq the rowid
 * itself, and the event id loses its index: ids are unique by construction (a fresh random newId
 * every 1024 events, numbered after it; audit-service.ts), nothing looks an event up by id, and
 * the hash chain, not an index, is what proves the log whole. A commit of one event went from
 * about 42 to 31 µs on this project's machine. The rows are copied in seq order, unchanged: the
 * chain, which covers only the values, verifies as before. PostgreSQL's table is left as it is.
 */
import { Kysely, sql } from 'kysely';

export function auditRowid(dialect: 'sqlite' | 'postgres') {
  return {
    async up(db: Kysely<any>): Promise<void> {
      if (dialect !== 'sqlite') return;
      await db.schema
        .createTable('audit_events_next')
        .addColumn('seq', 'integer', (c) => c.primaryKey())
        .addColumn('id', 'text', (c) => c.notNull())
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
