/**
 * Frozen in time: the Element master key (software encryption at rest) and Element's async-result
 * bookkeeping on jobs.
 *
 * - master_keys: one row per version of the master key, whoever holds its material: the cluster's
 *   internal master key (key_manager_uuid null, material sealed in master_key_seals under each
 *   node's seal) or a root version of the admin SVM's onboard key manager (material in
 *   key_managers/root_seals as before; this row only gives it Element's identity and times).
 * - jobs.async_deleted: GetAsyncResult without keepResult deletes a completed result from the
 *   Element view; the ONTAP job stays.
 */
import { Kysely, sql } from 'kysely';

export function masterKey(dialect: 'sqlite' | 'postgres') {
  const blob = dialect === 'postgres' ? 'bytea' : 'blob';
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('master_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('version', 'integer', (c) => c.notNull().unique())
        .addColumn('key_manager_uuid', 'text')
        .addColumn('root_version', 'integer')
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('decommissioned_at', 'text')
        .execute();
      await db.schema
        .createTable('master_key_seals')
        .addColumn('master_key_id', 'text', (c) => c.notNull().references('master_keys.id').onDelete('cascade'))
        .addColumn('node_id', 'text', (c) => c.notNull())
        .addColumn('blob', sql.raw(blob), (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('master_key_seals_pk', ['master_key_id', 'node_id'])
        .execute();
      await db.schema.alterTable('jobs').addColumn('async_deleted', 'integer', (c) => c.notNull().defaultTo(0)).execute();
    },
  };
}
