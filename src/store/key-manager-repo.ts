/** SQL for key managers and the per-node seals of their root keys. */
import type { Conn, KeyManagerTable, RootSealTable } from './schema.js';

export type KeyManagerRow = KeyManagerTable;

export function createKeyManagerRepo(db: Conn) {
  return {
    insert: (row: KeyManagerRow, tx: Conn = db) => tx.insertInto('key_managers').values(row).execute(),
    findByUuid: (uuid: string, tx: Conn = db) =>
      tx.selectFrom('key_managers').selectAll().where('uuid', '=', uuid).executeTakeFirst(),
    findEnabledForSvm: (svmUuid: string, tx: Conn = db) =>
      tx.selectFrom('key_managers').selectAll().where('svm_uuid', '=', svmUuid).where('enabled', '=', 1).executeTakeFirst(),
    list: (tx: Conn = db) => tx.selectFrom('key_managers').selectAll().orderBy('created_at').execute(),
    /** Key managers whose root is the object `rootId` (for external ones: on some key server). */
    findByRootId: (rootId: string, tx: Conn = db) => tx.selectFrom('key_managers').selectAll().where('root_id', '=', rootId).execute(),
    count: async (tx: Conn = db) =>
      Number((await tx.selectFrom('key_managers').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n),
    /**
     * Replaces the passphrase seal made for root version `rootVersion`; false (nothing written) when
     * the key manager has moved to another root version meanwhile (a master-key rekey), since a
     * seal of the old root would leave the passphrase unable to open the current one.
     */
    updatePassphraseSeal: async (uuid: string, rootVersion: number, kdf: string, seal: Buffer, backupSeal: Buffer, now: string, tx: Conn = db) => {
      const r = await tx
        .updateTable('key_managers')
        .set({ kdf, passphrase_seal: seal, backup_seal: backupSeal, updated_at: now })
        .where('uuid', '=', uuid)
        .where('root_version', '=', rootVersion)
        .executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    remove: (uuid: string, tx: Conn = db) => tx.deleteFrom('key_managers').where('uuid', '=', uuid).execute(),
    upsertSeal: async (row: RootSealTable, tx: Conn = db) => {
      await tx
        .deleteFrom('root_seals')
        .where('key_manager_uuid', '=', row.key_manager_uuid)
        .where('root_version', '=', row.root_version)
        .where('node_id', '=', row.node_id)
        .execute();
      await tx.insertInto('root_seals').values(row).execute();
    },
    findSeal: (kmUuid: string, rootVersion: number, nodeId: string, tx: Conn = db) =>
      tx
        .selectFrom('root_seals')
        .selectAll()
        .where('key_manager_uuid', '=', kmUuid)
        .where('root_version', '=', rootVersion)
        .where('node_id', '=', nodeId)
        .executeTakeFirst(),
    removeSeals: (kmUuid: string, tx: Conn = db) => tx.deleteFrom('root_seals').where('key_manager_uuid', '=', kmUuid).execute(),
  };
}
export type KeyManagerRepo = ReturnType<typeof createKeyManagerRepo>;
