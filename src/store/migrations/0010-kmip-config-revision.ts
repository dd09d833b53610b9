/**
 * Frozen in time: kmip_configs.revision, a counter raised by every change of a configuration's row.
 *
 * Several nodes share the store, and each keeps the connection settings of an external KMIP
 * configuration in memory (servers, certificates, its sealed secrets opened). A node that changes
 * them updates its own copy; the others compare the revision their copy was built from with the
 * stored one (one small read per periodic tick, or when the cached servers fail) and rebuild it when
 * they differ. updated_at cannot tell: two changes in the same millisecond, or made on nodes whose
 * clocks disagree, may carry the same time. Existing rows start at 0.
 */
import { Kysely } from 'kysely';

export function kmipConfigRevision() {
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('kmip_configs').addColumn('revision', 'integer', (c) => c.notNull().defaultTo(0)).execute();
    },
  };
}
