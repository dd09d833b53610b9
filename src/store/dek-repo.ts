/** SQL for data encryption keys. */
import { CompiledQuery } from 'kysely';
import type { Conn, DekTable } from './schema.js';

export type DekRow = DekTable;

/** Keys per re-wrap statement: 3 parameters each stays far below SQLite's 32,766-parameter limit. */
const REWRAP_CHUNK = 2000;
// The blobs travel as one bytea (node-postgres sends a Buffer parameter in binary) cut by offsets and
// lengths, and the ids and numbers as one text each, split by PostgreSQL: array parameters are
// escaped element by element in JavaScript (a bytea[] as hex text, twice the bytes), which cost more
// of the event loop than the rest of a re-wrap step.
const ID_SEPARATOR = '\x1f';
const PG_REWRAP = `UPDATE deks AS d SET wrapped = substring($4::bytea from v.off for v.len), kek_version = $1::integer
  FROM unnest(string_to_array($2::text, chr(31)), string_to_array($3::text, ',')::integer[], string_to_array($5::text, ',')::integer[], string_to_array($6::text, ',')::integer[])
    AS v(id, from_version, off, len)
  WHERE d.id = v.id AND d.kek_version = v.from_version AND d.wrapped IS NOT NULL AND d.id BETWEEN $7::text AND $8::text`;
const sqliteRewraps = new Map<number, string>();
function sqliteRewrap(n: number): string {
  let text = sqliteRewraps.get(n);
  if (!text) {
    text = `UPDATE deks SET wrapped = v.column3, kek_version = ? FROM (VALUES ${Array.from({ length: n }, () => '(?, ?, ?)').join(', ')}) AS v
      WHERE deks.id = v.column1 AND deks.kek_version = v.column2 AND deks.wrapped IS NOT NULL`;
    if (sqliteRewraps.size > 64) sqliteRewraps.clear(); // sizes other than full chunks are one-offs
    sqliteRewraps.set(n, text);
  }
  return text;
}

/** The columns of deks, in the order insert() passes them. */
const DEK_COLUMNS = ['id', 'svm_uuid', 'name', 'algorithm', 'length', 'state', 'kek_version', 'wrapped', 'created_at', 'updated_at', 'activated_at', 'deactivated_at', 'compromised_at', 'destroyed_at', 'object_type'] as const;
/** A precompiled query with fresh parameters. */
const withParameters = (q: CompiledQuery, parameters: readonly unknown[]): CompiledQuery => ({ sql: q.sql, query: q.query, queryId: q.queryId, parameters });

export function createDekRepo(db: Conn, dialect: 'sqlite' | 'postgres' = 'sqlite') {
  // The unwrap hot path: compiled once, run with fresh parameters (id, then svm).
  const stateById = db.selectFrom('deks').select(['id', 'state']).where('id', '=', '').where('svm_uuid', '=', '').compile();
  // Every key creation (REST and KMIP): compiled once with every column, run with the row's values in DEK_COLUMNS order.
  const insertRow = db.insertInto('deks').values(Object.fromEntries(DEK_COLUMNS.map((c) => [c, null])) as unknown as DekRow).compile();
  const byId = db.selectFrom('deks').selectAll().where('id', '=', '').where('svm_uuid', '=', '').compile();
  return {
    /** Which store this is: PostgreSQL may be shared by several nodes, SQLite has one. */
    dialect,
    insert: async (row: DekRow, tx: Conn = db): Promise<void> => {
      await tx.executeQuery(withParameters(insertRow, [row.id, row.svm_uuid, row.name, row.algorithm, row.length, row.state, row.kek_version, row.wrapped, row.created_at, row.updated_at, row.activated_at, row.deactivated_at, row.compromised_at, row.destroyed_at, row.object_type ?? null]));
    },
    find: async (svmUuid: string, id: string, tx: Conn = db): Promise<DekRow | undefined> => (await tx.executeQuery<DekRow>(withParameters(byId, [id, svmUuid]))).rows[0],
    /** Id and state only: what unwrap needs to decide (the material comes with the request). */
    findState: async (svmUuid: string, id: string, tx: Conn = db): Promise<Pick<DekRow, 'id' | 'state'> | undefined> =>
      (await tx.executeQuery<Pick<DekRow, 'id' | 'state'>>({ sql: stateById.sql, query: stateById.query, queryId: stateById.queryId, parameters: [id, svmUuid] })).rows[0],
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
    /**
     * PostgreSQL: the caller's transaction commits without waiting for its WAL to reach the disk. For
     * a rekey's re-wrap steps only: each is redone from the saved cursor if a crash loses it, nothing
     * is answered on it, and PostgreSQL's WAL is written in order, so the job's last step (a
     * synchronous commit) makes every step before it durable before the old KEK versions are retired.
     */
    relaxCommit: async (tx: Conn) => {
      if (dialect === 'postgres') await tx.executeQuery(CompiledQuery.raw('SET LOCAL synchronous_commit = off', []));
    },
    /**
     * Before a rekey walks a tenant's keys: on PostgreSQL, fresh planner statistics. Without them (a
     * table just bulk-loaded, before autovacuum's analyze) the planner reads each batch with a
     * bitmap scan of every row after the cursor and a sort, so a rekey costs O(n²); with them each
     * batch walks the primary key from the cursor. ANALYZE samples a bounded number of rows and
     * takes no lock that blocks reads or writes. SQLite plans this read on the index without it.
     */
    analyzeForRekey: async (tx: Conn = db) => {
      if (dialect === 'postgres') await tx.executeQuery(CompiledQuery.raw('ANALYZE deks', []));
    },
    /** Whether any key of a tenant still holds material under a KEK version older than `below` (stops at the first). */
    anyStillUnder: async (svmUuid: string, below: number, tx: Conn = db) =>
      (await tx
        .selectFrom('deks')
        .select('id')
        .where('svm_uuid', '=', svmUuid)
        .where('kek_version', '<', below)
        .where('wrapped', 'is not', null)
        .limit(1)
        .executeTakeFirst()) !== undefined,
    /**
     * The ids after `after` in id order, up to `limit` of them, and whether any of those keys still
     * holds material under a KEK version older than `below`: a bounded slice of a check over the
     * whole tenant, so no single statement walks every key (see rekey-job's verify phase).
     */
    sliceStillUnder: async (svmUuid: string, below: number, after: string, limit: number, tx: Conn = db): Promise<{ last: string | null; rows: number; found: boolean }> => {
      const rows = await tx
        .selectFrom('deks')
        .select((eb) => ['id', 'kek_version', eb('wrapped', 'is not', null).as('material')])
        .where('svm_uuid', '=', svmUuid)
        .where('id', '>', after)
        .orderBy('id')
        .limit(limit)
        .execute();
      // `material` is 1/0 on SQLite, true/false on PostgreSQL.
      return { last: rows.length ? rows[rows.length - 1].id : null, rows: rows.length, found: rows.some((r) => r.kek_version < below && Boolean(r.material)) };
    },
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
     * Replaces many keys' wrapped forms, each only if it still holds material under the version it
     * was read with (a key destroyed or re-wrapped meanwhile is left alone). `items` come in the
     * order stillUnder returned them, so the first and last ids bound the batch in the store's own
     * collation order. One statement per REWRAP_CHUNK keys, its text built once per size:
     * - PostgreSQL: UPDATE … FROM unnest(ids, versions, offsets, lengths) cutting the blobs out of
     *   one bytea, confined to the batch's id range so the planner joins against that range of the
     *   primary key instead of scanning the table; a few parameters whatever the batch size.
     * - SQLite: UPDATE … FROM (VALUES …), each key found through the primary key; one statement
     *   instead of one per key saves the per-query cost, which is larger than the update itself.
     */
    rewrapMany: async (items: { id: string; fromVersion: number; wrapped: Buffer }[], toVersion: number, tx: Conn) => {
      if (items.length === 0) return;
      for (let at = 0; at < items.length; at += REWRAP_CHUNK) {
        const part = items.slice(at, at + REWRAP_CHUNK);
        if (dialect === 'postgres') {
          const offsets: number[] = new Array(part.length);
          const lengths: number[] = new Array(part.length);
          let pos = 1; // substring counts from 1
          for (let i = 0; i < part.length; i++) {
            offsets[i] = pos;
            lengths[i] = part[i].wrapped.length;
            pos += lengths[i];
          }
          const blobs = Buffer.concat(part.map((it) => it.wrapped));
          const ids = part.map((it) => it.id).join(ID_SEPARATOR);
          // Key ids are newId()s ([0-9a-z_]); one holding the separator would be cut in two and never match.
          if (part.some((it) => it.id.includes(ID_SEPARATOR))) throw new Error('a key id holds the re-wrap separator');
          const query = CompiledQuery.raw(PG_REWRAP, [toVersion, ids, part.map((it) => it.fromVersion).join(','), blobs, offsets.join(','), lengths.join(','), part[0].id, part[part.length - 1].id]);
          await tx.executeQuery(query);
        } else {
          const params: unknown[] = [toVersion];
          for (const it of part) params.push(it.id, it.fromVersion, it.wrapped);
          await tx.executeQuery(CompiledQuery.raw(sqliteRewrap(part.length), params));
        }
      }
    },
  };
}
export type DekRepo = ReturnType<typeof createDekRepo>;
