/**
 * Frozen in time: kmip_configs.root_kcv, the key-check value of an external root.
 *
 * Nothing proved that the key a KMIP server returns for key_managers.root_id is the root that wraps
 * the tenant's KEKs: a server holding another object under that id, or another server after a
 * change of settings, would have had new KEKs wrapped under a key that is not the tenant's root.
 * root_kcv holds HMAC-SHA256 of a fixed label under a key derived from the root (lower-case hex; see
 * rootCheck in keymanagers/kmip-key-manager.ts); it identifies the root without revealing it. Every
 * fetched root is compared with it before use.
 *
 * Rows made before this migration get NULL: a migration cannot reach the KMIP server. The value is
 * filled in by the application at its first start after the upgrade, once the fetched root has opened
 * a KEK it wraps (AES-GCM: no other key can), or, when it wraps none yet, as it is.
 */
import { Kysely } from 'kysely';

export function kmipRootCheck() {
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema.alterTable('kmip_configs').addColumn('root_kcv', 'text').execute();
    },
  };
}
