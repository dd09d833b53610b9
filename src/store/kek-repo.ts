/** SQL for tenant KEK versions. */
import type { CompiledQuery } from 'kysely';
import type { Conn, KekTable } from './schema.js';

export type KekRow = KekTable;

export function createKekRepo(db: Conn) {
  // Every key creation reads the tenant's active version: compiled once.
  const active = db.selectFrom('keks').selectAll().where('svm_uuid', '=', '').where('state', '=', 'active').orderBy('version', 'desc').limit(1).compile();
  return {
    insert: (row: KekRow, tx: Conn = db) => tx.insertInto('keks').values(row).execute(),
    /** Inserts unless the tenant already has that version (a concurrent first use created it). */
    insertIfAbsent: (row: KekRow, tx: Conn = db) =>
      tx.insertInto('keks').values(row).onConflict((oc) => oc.columns(['svm_uuid', 'version']).doNothing()).execute(),
    findActive: async (svmUuid: string, tx: Conn = db): Promise<KekRow | undefined> =>
      (await tx.executeQuery<KekRow>({ sql: active.sql, query: active.query, queryId: active.queryId, parameters: [svmUuid, 'active', 1] })).rows[0],
    findVersion: (svmUuid: string, version: number, tx: Conn = db) =>
      tx.selectFrom('keks').selectAll().where('svm_uuid', '=', svmUuid).where('version', '=', version).executeTakeFirst(),
    maxVersion: async (svmUuid: string, tx: Conn = db) =>
      Number((await tx.selectFrom('keks').select((eb) => eb.fn.max<number>('version').as('v')).where('svm_uuid', '=', svmUuid).executeTakeFirst())?.v ?? 0),
    setState: (svmUuid: string, version: number, state: KekRow['state'], tx: Conn = db) =>
      tx.updateTable('keks').set({ state }).where('svm_uuid', '=', svmUuid).where('version', '=', version).execute(),
    listForSvm: (svmUuid: string, tx: Conn = db) =>
      tx.selectFrom('keks').selectAll().where('svm_uuid', '=', svmUuid).orderBy('version').execute(),
    listAll: (tx: Conn = db) => tx.selectFrom('keks').selectAll().orderBy('svm_uuid').orderBy('version').execute(),
    countForKeyManager: async (kmUuid: string, tx: Conn = db) =>
      Number(
        (
          await tx
            .selectFrom('keks')
            .select((eb) => eb.fn.countAll<number>().as('n'))
            .where('key_manager_uuid', '=', kmUuid)
            .executeTakeFirstOrThrow()
        ).n,
      ),
    removeForSvm: (svmUuid: string, tx: Conn = db) => tx.deleteFrom('keks').where('svm_uuid', '=', svmUuid).execute(),
  };
}
export type KekRepo = ReturnType<typeof createKekRepo>;
