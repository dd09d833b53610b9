/** SQL for data encryption keys. */
import { sql } from 'kysely';
import type { Conn, DekTable } from './schema.js';

export type DekRow = DekTable;

export function createDekRepo(db: Conn, dialect: 'sqlite' | 'postgres' = 'sqlite') {
  // The unwrap hot path: compiled once, run with fresh parameters (id, then svm).
  const stateById = db.selectFrom('deks').select(['id', 'state']).where('id', '=', '').where('svm_uuid', '=', '').compile();
  return {
    insert: (row: DekRow, tx: Conn = db) => tx.insertInto('deks').values(row).execute(),
    find: (svmUuid: string, id: string, tx: Conn = db) =>
      tx.selectFrom('deks').selectAll().where('id', '=', id).where('svm_uuid', '=', svmUuid).executeTakeFirst(),
    /** Id and state only: what unwrap needs to decide (the material comes with the request). */
    findState: async (svmUuid: string, id: string, tx: Conn = db): Promise<Pick<DekRow, 'id' | 'state'> | undefined> =>
      (await tx.executeQuery<Pick<DekRow, 'id' | 'state'>>({ ...stateById, parameters: [id, svmUuid] })).rows[0],
    /** Id and state of many keys at once (batch unwrap). */
    findStates: (svmUuid: string, ids: string[], tx: Conn = db) =>
      ids.length === 0
        ? Promise.resolve([] as Pick<DekRow, 'id' | 'state'>[])
        : tx.selectFrom('deks').select(['id', 'state']).where('svm_uuid', '=', svmUuid).where('id', 'in', ids).execute(),
    page: (svmUuid: string, limit: number, after: string | undefined, tx: Conn = db) => {
      let q = tx.selectFrom('deks').selectAll().where('svm_uuid', '=', svmUuid);
      if (after) q = q.where('id', '>', after);
      return q.orderBy('id').limit(limit).execute();
    },
    listAll: (tx: Conn = db) => tx.selectFrom('deks').selectAll().orderBy('id').execute(),
    countForSvm: async (svmUuid: string, tx: Conn = db) =>
      Number(
        (await tx.selectFrom('deks').select((eb) => eb.fn.countAll<number>().as('n')).where('svm_uuid', '=', svmUuid).executeTakeFirstOrThrow()).n,
      ),
    update: (id: string, patch: Partial<DekRow>, tx: Conn = db) => tx.updateTable('deks').set(patch).where('id', '=', id).execute(),
    /** The next keys of a tenant still wrapped under a KEK version older than `below`, in id order. */
    stillUnder: (svmUuid: string, below: number, after: string, limit: number, tx: Conn = db) =>
      tx
        .selectFrom('deks')
        .select(['id', 'wrapped', 'kek_version'])
        .where('svm_uuid', '=', svmUuid)
        .where('id', '>', after)
        .where('kek_version', '<', below)
        .where('wrapped', 'is not', null)
        .orderBy('id')
        .limit(limit)
        .execute(),
    countStillUnder: async (svmUuid: string, below: number, tx: Conn = db) =>
      Number(
        (
          await tx
            .selectFrom('deks')
            .select((eb) => eb.fn.countAll<number>().as('n'))
            .where('svm_uuid', '=', svmUuid)
            .where('kek_version', '<', below)
            .where('wrapped', 'is not', null)
            .executeTakeFirstOrThrow()
        ).n,
      ),
    /**
     * Replaces many keys' wrapped forms, each only if it is still the one that was read. On
     * PostgreSQL one UPDATE … FROM (VALUES …) per batch (a round trip per key would dominate); on
     * SQLite one cached statement per key, which is cheaper than building a large one.
     */
    rewrapMany: async (items: { id: string; fromVersion: number; wrapped: Buffer }[], toVersion: number, tx: Conn) => {
      if (items.length === 0) return;
      if (dialect !== 'postgres') {
        for (const it of items)
          await tx.updateTable('deks').set({ wrapped: it.wrapped, kek_version: toVersion }).where('id', '=', it.id).where('kek_version', '=', it.fromVersion).where('wrapped', 'is not', null).execute();
        return;
      }
      const rows = sql.join(items.map((it) => sql`(${it.id}::text, ${it.fromVersion}::integer, ${it.wrapped}::bytea)`));
      await sql`UPDATE deks AS d SET wrapped = v.wrapped, kek_version = ${toVersion}::integer
        FROM (VALUES ${rows}) AS v(id, from_version, wrapped)
        WHERE d.id = v.id AND d.kek_version = v.from_version AND d.wrapped IS NOT NULL`.execute(tx);
    },
  };
}
export type DekRepo = ReturnType<typeof createDekRepo>;
