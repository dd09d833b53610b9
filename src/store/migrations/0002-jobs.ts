/** Frozen in time: durable jobs (rekey and, later, switch, migrate, restore). */
import { Kysely } from 'kysely';

export function jobs() {
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('jobs')
        .addColumn('uuid', 'text', (c) => c.primaryKey())
        .addColumn('handle', 'integer', (c) => c.notNull().unique())
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('description', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('code', 'integer', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('svm_uuid', 'text')
        .addColumn('params', 'text', (c) => c.notNull())
        .addColumn('cursor', 'text')
        .addColumn('result', 'text')
        .addColumn('progress_done', 'integer', (c) => c.notNull())
        .addColumn('progress_total', 'integer', (c) => c.notNull())
        .addColumn('created_by', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('start_time', 'text')
        .addColumn('end_time', 'text')
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('lease_owner', 'text')
        .addColumn('lease_until', 'bigint')
        .execute();
      await db.schema.createIndex('jobs_state').on('jobs').columns(['state', 'lease_until']).execute();
    },
  };
}
