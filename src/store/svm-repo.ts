/** SQL for SVMs (tenants). */
import type { Conn, SvmTable } from './schema.js';

export type SvmRow = SvmTable;

export function createSvmRepo(db: Conn) {
  return {
    insert: (row: SvmRow, tx: Conn = db) => tx.insertInto('svms').values(row).execute(),
    findByUuid: (uuid: string, tx: Conn = db) => tx.selectFrom('svms').selectAll().where('uuid', '=', uuid).executeTakeFirst(),
    findByName: (name: string, tx: Conn = db) => tx.selectFrom('svms').selectAll().where('name', '=', name).executeTakeFirst(),
    findAdmin: (tx: Conn = db) => tx.selectFrom('svms').selectAll().where('scope', '=', 'cluster').executeTakeFirst(),
    list: (tx: Conn = db) => tx.selectFrom('svms').selectAll().orderBy('created_at').orderBy('name').execute(),
    remove: (uuid: string, tx: Conn = db) => tx.deleteFrom('svms').where('uuid', '=', uuid).execute(),
  };
}
export type SvmRepo = ReturnType<typeof createSvmRepo>;
