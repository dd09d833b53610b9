/** SQL for KMIP: attributes of the keys served over KMIP, and Locate. */
import { sql, type CompiledQuery } from 'kysely';
import type SQLite from 'better-sqlite3';
import type { Conn, KmipAttributeTable } from './schema.js';
import type { DekRow } from './dek-repo.js';

export type KmipAttributeRow = KmipAttributeTable;

export interface LocateFilter {
  svmUuid: string;
  /** deks.object_type values to match; null stands for a Symmetric Key (NULL column). */
  objectType?: string | null;
  states?: string[];
  algorithm?: string;
  length?: number;
  /** Stored attributes that must all be present with these searchable values. */
  attributes: { name: string; value: string }[];
  /** One object by its id (Locate by Unique Identifier). */
  id?: string;
  offset: number;
  limit: number;
  /** Only the first `within` matches (oldest first) are paged and counted. */
  within: number;
  /** Also count the matches (up to `within`). */
  count: boolean;
}

/** A precompiled query with fresh parameters (a literal: `{ ...q, parameters }` is slow on Node 20). */
const withParameters = (q: CompiledQuery, parameters: readonly unknown[]): CompiledQuery => ({ sql: q.sql, query: q.query, queryId: q.queryId, parameters });

const ATTRIBUTE_COLUMNS = ['object_id', 'svm_uuid', 'name', 'idx', 'value', 'raw'] as const;

/**
 * `raw`: SQLite's connection itself (Store.sqlite). An object read outside any transaction runs on it
 * directly while no transaction is open there (so it sees only committed rows, as through Kysely),
 * skipping Kysely's executor and connection lock: a fifth of a KMIP Get's server time at 8 connections.
 */
export function createKmipRepo(db: Conn, raw?: SQLite.Database) {
  // The per-operation lookups of Get/Encrypt/Decrypt, compiled once and run with fresh parameters:
  // building a Kysely query costs more than SQLite takes to run it.
  const objectById = db.selectFrom('deks').selectAll().where('id', '=', '').where('svm_uuid', '=', '').compile();
  const direct = raw;
  const objectNow = direct?.prepare<[string, string], DekRow>(objectById.sql);
  const attributesOf = db.selectFrom('kmip_attributes').selectAll().where('object_id', '=', '').orderBy('name').orderBy('idx').compile();
  const namedOf = db.selectFrom('kmip_attributes').selectAll().where('object_id', '=', '').where('name', '=', '').orderBy('idx').compile();
  // INSERTs of 1..CHUNK rows (a Create's template attributes), compiled on first use, columns in ATTRIBUTE_COLUMNS order.
  const CHUNK = 16;
  const template = Object.fromEntries(ATTRIBUTE_COLUMNS.map((c) => [c, c === 'idx' ? 0 : ''])) as unknown as KmipAttributeRow;
  const inserts: CompiledQuery[] = [];
  const insertOf = (n: number) => (inserts[n] ??= db.insertInto('kmip_attributes').values(new Array<KmipAttributeRow>(n).fill(template)).compile());
  return {
    /** A key of a tenant, as dek-repo's find reads it. */
    findObject: async (svmUuid: string, id: string, tx?: Conn): Promise<DekRow | undefined> => {
      if (!tx && direct && !direct.inTransaction) return objectNow!.get(id, svmUuid);
      return (await (tx ?? db).executeQuery<DekRow>(withParameters(objectById, [id, svmUuid]))).rows[0];
    },
    insertMany: async (rows: KmipAttributeRow[], tx: Conn = db): Promise<void> => {
      for (let i = 0; i < rows.length; i += CHUNK) {
        const n = Math.min(CHUNK, rows.length - i);
        const parameters: unknown[] = new Array(n * ATTRIBUTE_COLUMNS.length);
        let k = 0;
        for (let j = i; j < i + n; j++) for (const c of ATTRIBUTE_COLUMNS) parameters[k++] = rows[j][c];
        await tx.executeQuery(withParameters(insertOf(n), parameters));
      }
    },
    list: async (objectId: string, tx: Conn = db): Promise<KmipAttributeRow[]> => (await tx.executeQuery<KmipAttributeRow>(withParameters(attributesOf, [objectId]))).rows,
    listNamed: async (objectId: string, name: string, tx: Conn = db): Promise<KmipAttributeRow[]> => (await tx.executeQuery<KmipAttributeRow>(withParameters(namedOf, [objectId, name]))).rows,
    remove: (objectId: string, name: string, idx: number, tx: Conn = db) =>
      tx.deleteFrom('kmip_attributes').where('object_id', '=', objectId).where('name', '=', name).where('idx', '=', idx).executeTakeFirst(),
    replace: (row: KmipAttributeRow, tx: Conn = db) =>
      tx.updateTable('kmip_attributes').set({ value: row.value, raw: row.raw }).where('object_id', '=', row.object_id).where('name', '=', row.name).where('idx', '=', row.idx).executeTakeFirst(),
    /**
     * Ids of a tenant's keys matching every filter, oldest first: the page [offset, offset + limit)
     * of the first `within` matches, and with `count` how many of those there are. The page is cut
     * by the database, so no more ids than it holds are read.
     */
    locate: async (f: LocateFilter, tx: Conn = db): Promise<{ ids: string[]; count?: number }> => {
      let q = tx.selectFrom('deks').select('deks.id').where('deks.svm_uuid', '=', f.svmUuid);
      if (f.id !== undefined) q = q.where('deks.id', '=', f.id);
      if (f.objectType === null) q = q.where('deks.object_type', 'is', null);
      else if (f.objectType !== undefined) q = q.where('deks.object_type', '=', f.objectType);
      if (f.states) q = q.where('deks.state', 'in', f.states);
      if (f.algorithm !== undefined) q = q.where('deks.algorithm', '=', f.algorithm);
      if (f.length !== undefined) q = q.where('deks.length', '=', f.length);
      for (const a of f.attributes)
        q = q.where(({ exists, selectFrom }) =>
          exists(
            selectFrom('kmip_attributes')
              .select('kmip_attributes.idx')
              .whereRef('kmip_attributes.object_id', '=', 'deks.id')
              .where('kmip_attributes.svm_uuid', '=', f.svmUuid)
              .where('kmip_attributes.name', '=', a.name)
              .where('kmip_attributes.value', '=', a.value),
          ),
        );
      const limit = Math.max(0, Math.min(f.limit, f.within - f.offset));
      if (!f.count) return { ids: limit === 0 ? [] : (await q.orderBy('deks.id').limit(limit).offset(f.offset).execute()).map((r) => r.id) };
      const first = q.orderBy('deks.id').limit(f.within).as('m');
      if (limit > 0) {
        // The page and the count in one statement (one snapshot): the window counts before LIMIT applies.
        const rows = await tx.selectFrom(first).select(['m.id', sql<number | string>`count(*) over ()`.as('n')]).orderBy('m.id').limit(limit).offset(f.offset).execute();
        if (rows.length > 0 || f.offset === 0) return { ids: rows.map((r) => r.id), count: rows.length > 0 ? Number(rows[0].n) : 0 };
      }
      // An empty page carries no count: count on its own.
      const c = await tx.selectFrom(first).select((eb) => eb.fn.countAll<number | string>().as('n')).executeTakeFirstOrThrow();
      return { ids: [], count: Number(c.n) };
    },
  };
}
export type KmipRepo = ReturnType<typeof createKmipRepo>;
