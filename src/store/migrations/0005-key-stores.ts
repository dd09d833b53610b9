/**
 * Frozen in time: keystore configurations (ONTAP /security/key-stores).
 *
 * An SVM may now hold several key manager configurations (one created with create_inactive beside
 * the enabled one, and later the external types), but never more than one enabled: a partial
 * unique index says so in the store itself, so two nodes enabling two configurations of one SVM at
 * the same instant cannot both commit.
 */
import { Kysely, sql } from 'kysely';

export function keyStores() {
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createIndex('key_managers_one_enabled')
        .on('key_managers')
        .column('svm_uuid')
        .unique()
        .where(sql.ref('enabled'), '=', sql.lit(1))
        .execute();
    },
  };
}
