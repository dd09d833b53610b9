/**
 * SQL for keystore configurations (rows of key_managers seen as ONTAP keystores), the KEKs they
 * wrap while a switch or a migration moves them, and the jobs that move them.
 */
import type { Conn, KekTable, KeyManagerTable } from './schema.js';

const OPEN = ['queued', 'running', 'paused'] as const;

export function createKeyStoreRepo(db: Conn, dialect: 'sqlite' | 'postgres' = 'sqlite') {
  return {
    /**
     * Locks an SVM's configuration rows until tx ends, so that a switch, a migration and a rekey of
     * the same keys, started at once on nodes sharing PostgreSQL, see each other's jobs instead of
     * both passing their checks. SQLite is single-node and runs one transaction at a time already.
     */
    lockConfigs: async (svmUuid: string, tx: Conn): Promise<void> => {
      if (dialect === 'postgres') await tx.selectFrom('key_managers').select('uuid').where('svm_uuid', '=', svmUuid).orderBy('uuid').forUpdate().execute();
    },

    /** Every configuration of an SVM, oldest first. */
    configsForSvm: (svmUuid: string, tx: Conn = db) =>
      tx.selectFrom('key_managers').selectAll().where('svm_uuid', '=', svmUuid).orderBy('created_at').orderBy('uuid').execute(),

    setEnabledState: (uuid: string, enabled: 0 | 1, state: string, now: string, tx: Conn = db) =>
      tx.updateTable('key_managers').set({ enabled, state, updated_at: now }).where('uuid', '=', uuid).execute(),

    setState: (uuid: string, state: string, now: string, tx: Conn = db) =>
      tx.updateTable('key_managers').set({ state, updated_at: now }).where('uuid', '=', uuid).execute(),

    /** The next KEK rows wrapped by any of the given configurations (whatever their tenant). */
    keksWrappedBy: (kmUuids: string[], limit: number, tx: Conn = db): Promise<KekTable[]> =>
      kmUuids.length === 0
        ? Promise.resolve([])
        : tx.selectFrom('keks').selectAll().where('key_manager_uuid', 'in', kmUuids).orderBy('svm_uuid').orderBy('version').limit(limit).execute(),

    countKeksWrappedBy: async (kmUuids: string[], tx: Conn = db): Promise<number> =>
      kmUuids.length === 0
        ? 0
        : Number((await tx.selectFrom('keks').select((eb) => eb.fn.countAll<number>().as('n')).where('key_manager_uuid', 'in', kmUuids).executeTakeFirstOrThrow()).n),

    /** The next KEK rows of one tenant wrapped by one configuration. */
    keksOfSvmUnder: (svmUuid: string, kmUuid: string, limit: number, tx: Conn = db): Promise<KekTable[]> =>
      tx.selectFrom('keks').selectAll().where('svm_uuid', '=', svmUuid).where('key_manager_uuid', '=', kmUuid).orderBy('version').limit(limit).execute(),

    countKeksOfSvmUnder: async (svmUuid: string, kmUuid: string, tx: Conn = db): Promise<number> =>
      Number(
        (
          await tx
            .selectFrom('keks')
            .select((eb) => eb.fn.countAll<number>().as('n'))
            .where('svm_uuid', '=', svmUuid)
            .where('key_manager_uuid', '=', kmUuid)
            .executeTakeFirstOrThrow()
        ).n,
      ),

    /** KEK rows of a tenant wrapped by a configuration that is not one of the tenant's own. */
    countKeksOfSvmBorrowed: async (svmUuid: string, ownKmUuids: string[], tx: Conn = db): Promise<number> => {
      let q = tx.selectFrom('keks').select((eb) => eb.fn.countAll<number>().as('n')).where('svm_uuid', '=', svmUuid);
      if (ownKmUuids.length > 0) q = q.where('key_manager_uuid', 'not in', ownKmUuids);
      return Number((await q.executeTakeFirstOrThrow()).n);
    },

    /**
     * Replaces a KEK's wrapping, only if the row is still wrapped as it was read (a node that lost
     * its lease, or a repeated step, then changes nothing). True when the row was moved.
     */
    moveKek: async (from: Pick<KekTable, 'id' | 'key_manager_uuid' | 'root_version'>, to: Pick<KekTable, 'key_manager_uuid' | 'root_version' | 'wrapped'>, tx: Conn) =>
      Number(
        (
          await tx
            .updateTable('keks')
            .set({ key_manager_uuid: to.key_manager_uuid, root_version: to.root_version, wrapped: to.wrapped })
            .where('id', '=', from.id)
            .where('key_manager_uuid', '=', from.key_manager_uuid)
            .where('root_version', '=', from.root_version)
            .executeTakeFirst()
        ).numUpdatedRows,
      ) === 1,

    /** Queues a paused job again (re-running the operation that started it resumes it from its cursor). */
    requeuePaused: (uuid: string, now: string, tx: Conn) =>
      tx.updateTable('jobs').set({ state: 'queued', message: 'resumed', updated_at: now }).where('uuid', '=', uuid).where('state', '=', 'paused').execute(),

    findJob: (uuid: string, tx: Conn = db) => tx.selectFrom('jobs').selectAll().where('uuid', '=', uuid).executeTakeFirstOrThrow(),

    /** Unfinished jobs of the given types, for one SVM or (svmUuid null) for any. */
    openJobs: (types: string[], svmUuid: string | null, tx: Conn = db) => {
      let q = tx.selectFrom('jobs').select(['uuid', 'type', 'svm_uuid', 'params']).where('type', 'in', types).where('state', 'in', [...OPEN]);
      if (svmUuid !== null) q = q.where('svm_uuid', '=', svmUuid);
      return q.orderBy('handle').execute();
    },
  };
}
export type KeyStoreRepo = ReturnType<typeof createKeyStoreRepo>;
export type KeyStoreConfigRow = KeyManagerTable;
