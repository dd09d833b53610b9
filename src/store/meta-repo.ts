/** SQL for cluster-wide settings (cluster uuid, schema facts) and node registrations. */
import type { Conn } from './schema.js';

export function createMetaRepo(db: Conn) {
  return {
    get: async (key: string, tx: Conn = db) =>
      (await tx.selectFrom('meta').select('value').where('key', '=', key).executeTakeFirst())?.value,
    setIfAbsent: async (key: string, value: string, tx: Conn = db) => {
      await tx.insertInto('meta').values({ key, value }).onConflict((oc) => oc.column('key').doNothing()).execute();
      return (await tx.selectFrom('meta').select('value').where('key', '=', key).executeTakeFirstOrThrow()).value;
    },
    touchNode: async (id: string, name: string, now: string, tx: Conn = db) => {
      await tx
        .insertInto('nodes')
        .values({ id, name, started_at: now, last_seen: now })
        .onConflict((oc) => oc.column('id').doUpdateSet({ name, started_at: now, last_seen: now }))
        .execute();
    },
    listNodes: (tx: Conn = db) => tx.selectFrom('nodes').selectAll().orderBy('started_at').execute(),
  };
}
export type MetaRepo = ReturnType<typeof createMetaRepo>;
