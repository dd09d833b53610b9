/** SQL for external KMIP key managers (their connection settings and node secrets) and Element's KMIP key providers and servers. */
import { sql } from 'kysely';
import type { Conn, KmipConfigTable, KmipKeyProviderTable, KmipKeyServerTable, KmipNodeSecretTable } from './schema.js';

export type KmipConfigRow = KmipConfigTable;
export type KmipKeyProviderRow = KmipKeyProviderTable;
export type KmipKeyServerRow = KmipKeyServerTable;

export function createKmipServerRepo(db: Conn) {
  return {
    insertConfig: (row: KmipConfigRow, tx: Conn = db) => tx.insertInto('kmip_configs').values(row).execute(),
    findConfig: (kmUuid: string, tx: Conn = db) => tx.selectFrom('kmip_configs').selectAll().where('key_manager_uuid', '=', kmUuid).executeTakeFirst(),
    listConfigs: (tx: Conn = db) => tx.selectFrom('kmip_configs').selectAll().execute(),
    /** Every change of settings raises the row's revision: other nodes rebuild their cached settings when it moves (configRevisions). */
    updateConfig: (kmUuid: string, patch: Partial<Omit<KmipConfigRow, 'key_manager_uuid' | 'revision'>>, tx: Conn = db) =>
      tx
        .updateTable('kmip_configs')
        .set({ ...patch, revision: sql<number>`revision + 1` })
        .where('key_manager_uuid', '=', kmUuid)
        .execute(),
    /** The revision of every configuration: what a node compares its cached settings with, without reading them. */
    configRevisions: async (tx: Conn = db) =>
      new Map((await tx.selectFrom('kmip_configs').select(['key_manager_uuid', 'revision']).execute()).map((r) => [r.key_manager_uuid, Number(r.revision ?? 0)])),
    configsForProvider: (providerId: number, tx: Conn = db) => tx.selectFrom('kmip_configs').selectAll().where('key_provider_id', '=', providerId).execute(),
    /**
     * Records the key-check value of a configuration made before 0009 (root_kcv NULL). False when
     * one is recorded already (another node was first): the caller compares with that one.
     */
    setRootCheck: async (kmUuid: string, kcv: string, tx: Conn = db) => {
      const r = await tx.updateTable('kmip_configs').set({ root_kcv: kcv }).where('key_manager_uuid', '=', kmUuid).where('root_kcv', 'is', null).executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** One KEK wrapped under a configuration's root (the proof a fetched root is the one in use), if any. */
    findKekOf: (kmUuid: string, rootVersion: number, tx: Conn = db) =>
      tx.selectFrom('keks').selectAll().where('key_manager_uuid', '=', kmUuid).where('root_version', '=', rootVersion).limit(1).executeTakeFirst(),

    upsertNodeSecret: async (row: KmipNodeSecretTable, tx: Conn = db) => {
      await tx.deleteFrom('kmip_node_secrets').where('key_manager_uuid', '=', row.key_manager_uuid).where('node_id', '=', row.node_id).execute();
      await tx.insertInto('kmip_node_secrets').values(row).execute();
    },
    findNodeSecret: (kmUuid: string, nodeId: string, tx: Conn = db) =>
      tx.selectFrom('kmip_node_secrets').selectAll().where('key_manager_uuid', '=', kmUuid).where('node_id', '=', nodeId).executeTakeFirst(),
    /** Other nodes' copies are stale once the secrets change: they must be made again where they are needed. */
    removeNodeSecrets: (kmUuid: string, tx: Conn = db) => tx.deleteFrom('kmip_node_secrets').where('key_manager_uuid', '=', kmUuid).execute(),

    // Element key providers and key servers. Ids are Element's small integers: the next one is taken
    // inside the inserting transaction, and the primary key refuses a concurrent duplicate.
    nextProviderId: async (tx: Conn = db) => Number((await tx.selectFrom('kmip_key_providers').select((eb) => eb.fn.max<number>('id').as('m')).executeTakeFirst())?.m ?? 0) + 1,
    nextServerId: async (tx: Conn = db) => Number((await tx.selectFrom('kmip_key_servers').select((eb) => eb.fn.max<number>('id').as('m')).executeTakeFirst())?.m ?? 0) + 1,
    insertProvider: (row: KmipKeyProviderRow, tx: Conn = db) => tx.insertInto('kmip_key_providers').values(row).execute(),
    findProvider: (id: number, tx: Conn = db) => tx.selectFrom('kmip_key_providers').selectAll().where('id', '=', id).executeTakeFirst(),
    findProviderByName: (name: string, tx: Conn = db) => tx.selectFrom('kmip_key_providers').selectAll().where('name', '=', name).executeTakeFirst(),
    listProviders: (tx: Conn = db) => tx.selectFrom('kmip_key_providers').selectAll().orderBy('id').execute(),
    removeProvider: (id: number, tx: Conn = db) => tx.deleteFrom('kmip_key_providers').where('id', '=', id).execute(),
    insertServer: (row: KmipKeyServerRow, tx: Conn = db) => tx.insertInto('kmip_key_servers').values(row).execute(),
    findServer: (id: number, tx: Conn = db) => tx.selectFrom('kmip_key_servers').selectAll().where('id', '=', id).executeTakeFirst(),
    listServers: (tx: Conn = db) => tx.selectFrom('kmip_key_servers').selectAll().orderBy('id').execute(),
    serversOfProvider: (providerId: number, tx: Conn = db) => tx.selectFrom('kmip_key_servers').selectAll().where('key_provider_id', '=', providerId).orderBy('id').execute(),
    updateServer: (id: number, patch: Partial<Omit<KmipKeyServerRow, 'id'>>, tx: Conn = db) => tx.updateTable('kmip_key_servers').set(patch).where('id', '=', id).execute(),
    removeServer: (id: number, tx: Conn = db) => tx.deleteFrom('kmip_key_servers').where('id', '=', id).execute(),
  };
}
export type KmipServerRepo = ReturnType<typeof createKmipServerRepo>;
