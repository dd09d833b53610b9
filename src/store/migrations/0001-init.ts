/**
 * Frozen in time: this migration never imports application code and is never edited once
 * released. Later schema changes go in new files registered in migrations/index.ts.
 */
import { Kysely, sql } from 'kysely';

export function init(dialect: 'sqlite' | 'postgres') {
  const blob = dialect === 'postgres' ? 'bytea' : 'blob';
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('meta')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('svms')
        .addColumn('uuid', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('key_managers')
        .addColumn('uuid', 'text', (c) => c.primaryKey())
        .addColumn('svm_uuid', 'text', (c) => c.notNull().references('svms.uuid'))
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('enabled', 'integer', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('kdf', 'text', (c) => c.notNull())
        .addColumn('root_id', 'text', (c) => c.notNull())
        .addColumn('root_version', 'integer', (c) => c.notNull())
        .addColumn('passphrase_seal', sql.raw(blob), (c) => c.notNull())
        .addColumn('backup_seal', sql.raw(blob), (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('key_managers_svm').on('key_managers').column('svm_uuid').execute();
      await db.schema
        .createTable('root_seals')
        .addColumn('key_manager_uuid', 'text', (c) => c.notNull().references('key_managers.uuid').onDelete('cascade'))
        .addColumn('root_version', 'integer', (c) => c.notNull())
        .addColumn('node_id', 'text', (c) => c.notNull())
        .addColumn('blob', sql.raw(blob), (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('root_seals_pk', ['key_manager_uuid', 'root_version', 'node_id'])
        .execute();
      await db.schema
        .createTable('keks')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('svm_uuid', 'text', (c) => c.notNull().references('svms.uuid'))
        .addColumn('version', 'integer', (c) => c.notNull())
        .addColumn('key_manager_uuid', 'text', (c) => c.notNull())
        .addColumn('root_version', 'integer', (c) => c.notNull())
        .addColumn('wrapped', sql.raw(blob), (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('keks_svm_version', ['svm_uuid', 'version'])
        .execute();
      await db.schema
        .createTable('deks')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('svm_uuid', 'text', (c) => c.notNull().references('svms.uuid'))
        .addColumn('name', 'text')
        .addColumn('algorithm', 'text', (c) => c.notNull())
        .addColumn('length', 'integer', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('kek_version', 'integer', (c) => c.notNull())
        .addColumn('wrapped', sql.raw(blob))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('activated_at', 'text')
        .addColumn('deactivated_at', 'text')
        .addColumn('compromised_at', 'text')
        .addColumn('destroyed_at', 'text')
        .execute();
      await db.schema.createIndex('deks_svm_id').on('deks').columns(['svm_uuid', 'id']).execute();
      await db.schema
        .createTable('users')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('password_hash', 'text', (c) => c.notNull())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('svms', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull().unique())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('svms', 'text', (c) => c.notNull())
        .addColumn('created_by', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'text')
        .addColumn('revoked_at', 'text')
        .execute();
      await db.schema
        .createTable('audit_events')
        .addColumn('seq', 'bigint', (c) => c.primaryKey())
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
      await db.schema
        .createTable('audit_head')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('seq', 'bigint', (c) => c.notNull())
        .addColumn('hash', 'text', (c) => c.notNull())
        .execute();
      await db.insertInto('audit_head').values({ id: 1, seq: 0, hash: '0'.repeat(64) }).execute();
      await db.schema
        .createTable('nodes')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('started_at', 'text', (c) => c.notNull())
        .addColumn('last_seen', 'text', (c) => c.notNull())
        .execute();
    },
  };
}
