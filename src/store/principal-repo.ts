/** SQL for local users and API tokens (stored only as hashes). */
import type { Conn, TokenTable, UserTable } from './schema.js';

export type UserRow = UserTable;
export type TokenRow = TokenTable;

export function createPrincipalRepo(db: Conn) {
  return {
    insertUser: (row: UserRow, tx: Conn = db) => tx.insertInto('users').values(row).execute(),
    findUserByName: (name: string, tx: Conn = db) => tx.selectFrom('users').selectAll().where('name', '=', name).executeTakeFirst(),
    findUser: (id: string, tx: Conn = db) => tx.selectFrom('users').selectAll().where('id', '=', id).executeTakeFirst(),
    listUsers: (tx: Conn = db) => tx.selectFrom('users').selectAll().orderBy('name').execute(),
    removeUser: (id: string, tx: Conn = db) => tx.deleteFrom('users').where('id', '=', id).execute(),
    insertToken: (row: TokenRow, tx: Conn = db) => tx.insertInto('tokens').values(row).execute(),
    findTokenByHash: (hash: string, tx: Conn = db) => tx.selectFrom('tokens').selectAll().where('hash', '=', hash).executeTakeFirst(),
    findToken: (id: string, tx: Conn = db) => tx.selectFrom('tokens').selectAll().where('id', '=', id).executeTakeFirst(),
    listTokens: (tx: Conn = db) => tx.selectFrom('tokens').selectAll().orderBy('created_at').execute(),
    revokeToken: (id: string, now: string, tx: Conn = db) =>
      tx.updateTable('tokens').set({ revoked_at: now }).where('id', '=', id).where('revoked_at', 'is', null).execute(),
    countPrincipals: async (tx: Conn = db) => {
      const t = await tx.selectFrom('tokens').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
      const u = await tx.selectFrom('users').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
      return Number(t.n) + Number(u.n);
    },
  };
}
export type PrincipalRepo = ReturnType<typeof createPrincipalRepo>;
