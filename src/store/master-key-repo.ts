/** SQL for the Element master key: its versions, the internal key's node seals, and the root rotation of the admin key manager. */
import { sql } from 'kysely';
import type { Conn, KekTable, MasterKeySealTable, MasterKeyTable } from './schema.js';

export type MasterKeyRow = MasterKeyTable;

export function createMasterKeyRepo(db: Conn, dialect: 'sqlite' | 'postgres' = 'sqlite') {
  return {
    /** Inserts unless a row with that id or version exists (a concurrent node wrote it first). */
    insertIfAbsent: (row: MasterKeyRow, tx: Conn = db) => tx.insertInto('master_keys').values(row).onConflict((oc) => oc.doNothing()).execute(),
    find: (id: string, tx: Conn = db) => tx.selectFrom('master_keys').selectAll().where('id', '=', id).executeTakeFirst(),
    list: (tx: Conn = db) => tx.selectFrom('master_keys').selectAll().orderBy('version').execute(),
    maxVersion: async (tx: Conn = db) => Number((await tx.selectFrom('master_keys').select((eb) => eb.fn.max<number>('version').as('v')).executeTakeFirst())?.v ?? 0),
    /** The newest active internal master key (no key manager behind it). */
    activeInternal: (tx: Conn = db) =>
      tx.selectFrom('master_keys').selectAll().where('key_manager_uuid', 'is', null).where('state', '=', 'active').orderBy('version', 'desc').executeTakeFirst(),
    forRoot: (kmUuid: string, rootVersion: number, tx: Conn = db) =>
      tx.selectFrom('master_keys').selectAll().where('key_manager_uuid', '=', kmUuid).where('root_version', '=', rootVersion).executeTakeFirst(),
    decommission: (id: string, at: string, tx: Conn = db) =>
      tx.updateTable('master_keys').set({ state: 'decommissioned', decommissioned_at: at }).where('id', '=', id).where('state', '=', 'active').execute(),
    /** Decommissions every version of a key manager's root older than `below` (an interrupted or cancelled rekey may have left several). */
    decommissionRootsBelow: (kmUuid: string, below: number, at: string, tx: Conn) =>
      tx.updateTable('master_keys').set({ state: 'decommissioned', decommissioned_at: at }).where('key_manager_uuid', '=', kmUuid).where('root_version', '<', below).where('state', '=', 'active').execute(),
    /** Decommissions every active internal master key (and drops its seals): a key manager now holds the master key. */
    async retireInternal(at: string, tx: Conn = db) {
      const rows = await tx.selectFrom('master_keys').select('id').where('key_manager_uuid', 'is', null).where('state', '=', 'active').execute();
      for (const r of rows) {
        await tx.deleteFrom('master_key_seals').where('master_key_id', '=', r.id).execute();
        await tx.updateTable('master_keys').set({ state: 'decommissioned', decommissioned_at: at }).where('id', '=', r.id).execute();
      }
      return rows.length;
    },
    insertSeal: (row: MasterKeySealTable, tx: Conn = db) => tx.insertInto('master_key_seals').values(row).onConflict((oc) => oc.doNothing()).execute(),
    findSeal: (id: string, nodeId: string, tx: Conn = db) =>
      tx.selectFrom('master_key_seals').selectAll().where('master_key_id', '=', id).where('node_id', '=', nodeId).executeTakeFirst(),
    removeSeals: (id: string, tx: Conn = db) => tx.deleteFrom('master_key_seals').where('master_key_id', '=', id).execute(),

    /** Switches a key manager to a new root version, only if it is still at `from` (false: someone else moved it). */
    async advanceRoot(kmUuid: string, from: number, patch: { root_version: number; passphrase_seal: Buffer; backup_seal: Buffer; updated_at: string }, tx: Conn): Promise<boolean> {
      const r = await tx.updateTable('key_managers').set(patch).where('uuid', '=', kmUuid).where('root_version', '=', from).executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** The next KEKs of a key manager still wrapped under a root version older than `below`, in id order. */
    keksUnderRoot: (kmUuid: string, below: number, after: string, limit: number, tx: Conn = db): Promise<Pick<KekTable, 'id' | 'svm_uuid' | 'version' | 'root_version' | 'wrapped'>[]> =>
      tx
        .selectFrom('keks')
        .select(['id', 'svm_uuid', 'version', 'root_version', 'wrapped'])
        .where('key_manager_uuid', '=', kmUuid)
        .where('root_version', '<', below)
        .where('id', '>', after)
        .orderBy('id')
        .limit(limit)
        .execute(),
    countKeksUnderRoot: async (kmUuid: string, below: number, tx: Conn = db) =>
      Number(
        (await tx.selectFrom('keks').select((eb) => eb.fn.countAll<number>().as('n')).where('key_manager_uuid', '=', kmUuid).where('root_version', '<', below).executeTakeFirstOrThrow()).n,
      ),
    countKeks: async (kmUuid: string, tx: Conn = db) =>
      Number((await tx.selectFrom('keks').select((eb) => eb.fn.countAll<number>().as('n')).where('key_manager_uuid', '=', kmUuid).executeTakeFirstOrThrow()).n),
    /** Replaces a KEK's wrapped form, only if it is still under the root version it was read with. */
    rewrapKek: (kmUuid: string, id: string, fromRoot: number, toRoot: number, wrapped: Buffer, tx: Conn) =>
      tx.updateTable('keks').set({ wrapped, root_version: toRoot }).where('id', '=', id).where('key_manager_uuid', '=', kmUuid).where('root_version', '=', fromRoot).execute(),
    /**
     * PostgreSQL: waits for every transaction writing KEKs to end and keeps new ones out until this
     * one commits, so a KEK wrapped under the old root by a transaction that read the key manager
     * before the switch cannot appear after the last count. (SQLite runs one writer at a time.)
     */
    async lockKeks(tx: Conn): Promise<void> {
      if (dialect === 'postgres') await sql`LOCK TABLE keks IN SHARE MODE`.execute(tx);
    },
    removeRootSealsBelow: (kmUuid: string, below: number, tx: Conn) =>
      tx.deleteFrom('root_seals').where('key_manager_uuid', '=', kmUuid).where('root_version', '<', below).execute(),
  };
}
export type MasterKeyRepo = ReturnType<typeof createMasterKeyRepo>;
