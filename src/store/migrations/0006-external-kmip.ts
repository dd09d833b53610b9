/**
 * Frozen in time: external KMIP key managers (ONTAP) and Element KMIP key providers and servers.
 *
 * - kmip_configs: one row per key manager of type 'kmip'. The root key itself lives on the KMIP
 *   server (key_managers.root_id holds its KMIP Unique Identifier); this row says how to reach it.
 *   The certificates are referenced by uuid and their public PEMs copied here, so a restart does not
 *   depend on reading the certificates table (or on a key the KMIP root itself protects).
 * - kmip_node_secrets: what a node needs to connect that is secret (the client certificate's private
 *   key, the servers' KMIP passwords), sealed under that node's seal key, never stored in the clear.
 *   The client key is otherwise sealed under the admin SVM's KEK, which may itself be rooted on this
 *   KMIP server: this copy breaks that circle at start.
 * - kmip_key_servers / kmip_key_providers: Element's objects (integer ids, as Element's are).
 */
import { Kysely, sql } from 'kysely';

export function externalKmip(dialect: 'sqlite' | 'postgres') {
  const blob = dialect === 'postgres' ? 'bytea' : 'blob';
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('kmip_configs')
        .addColumn('key_manager_uuid', 'text', (c) => c.primaryKey().references('key_managers.uuid').onDelete('cascade'))
        .addColumn('servers', 'text', (c) => c.notNull())
        .addColumn('client_certificate_uuid', 'text', (c) => c.notNull())
        .addColumn('client_certificate_pem', 'text', (c) => c.notNull())
        .addColumn('server_ca_uuids', 'text', (c) => c.notNull())
        .addColumn('server_ca_pems', 'text', (c) => c.notNull())
        .addColumn('key_provider_id', 'integer')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('kmip_node_secrets')
        .addColumn('key_manager_uuid', 'text', (c) => c.notNull().references('key_managers.uuid').onDelete('cascade'))
        .addColumn('node_id', 'text', (c) => c.notNull())
        .addColumn('blob', sql.raw(blob), (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('kmip_node_secrets_pk', ['key_manager_uuid', 'node_id'])
        .execute();
      await db.schema
        .createTable('kmip_key_providers')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('kmip_key_servers')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('hostnames', 'text', (c) => c.notNull())
        .addColumn('port', 'integer', (c) => c.notNull())
        .addColumn('ca_pem', 'text', (c) => c.notNull())
        .addColumn('client_certificate_pem', 'text', (c) => c.notNull())
        .addColumn('key_provider_id', 'integer', (c) => c.references('kmip_key_providers.id'))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
    },
  };
}
