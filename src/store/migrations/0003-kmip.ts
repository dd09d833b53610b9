/**
 * Frozen in time: installed certificates (ONTAP /api/security/certificates), and what KMIP needs
 * beside the DEK rows it serves (objects served over KMIP are rows of `deks`).
 *
 * - certificates: PEM text, the SHA-256 fingerprint of its DER (how a TLS client certificate is
 *   matched to a principal), parsed facts, and an optional private key sealed under the admin
 *   tenant's KEK (never stored in the clear).
 * - deks.object_type: the KMIP Object Type of a key; NULL is a Symmetric Key (every row before this
 *   migration, and every key made over REST).
 * - kmip_attributes: the attributes KMIP clients set (Name, x- custom attributes, Object Group,
 *   Cryptographic Usage Mask, Link, …), one row per (object, name, index). `value` is a searchable
 *   text form (Name Value for a Name, the text of a Text String, decimal numbers); `raw` is the
 *   exact TTLV of the value, which is what is served back.
 */
import { Kysely, sql } from 'kysely';

export function kmip(dialect: 'sqlite' | 'postgres') {
  const blob = dialect === 'postgres' ? 'bytea' : 'blob';
  return {
    async up(db: Kysely<any>): Promise<void> {
      await db.schema
        .createTable('certificates')
        .addColumn('uuid', 'text', (c) => c.primaryKey())
        // An SVM's certificates go with it (as in ONTAP).
        .addColumn('svm_uuid', 'text', (c) => c.notNull().references('svms.uuid').onDelete('cascade'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('public_certificate', 'text', (c) => c.notNull())
        .addColumn('fingerprint', 'text', (c) => c.notNull())
        .addColumn('common_name', 'text')
        .addColumn('serial_number', 'text', (c) => c.notNull())
        .addColumn('ca', 'text')
        .addColumn('expiry_time', 'text', (c) => c.notNull())
        .addColumn('key_size', 'integer')
        .addColumn('private_key', sql.raw(blob))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('certificates_svm_name', ['svm_uuid', 'name'])
        .execute();
      await db.schema.createIndex('certificates_fingerprint').on('certificates').columns(['fingerprint', 'type']).execute();

      await db.schema.alterTable('deks').addColumn('object_type', 'text').execute();

      await db.schema
        .createTable('kmip_attributes')
        .addColumn('object_id', 'text', (c) => c.notNull().references('deks.id').onDelete('cascade'))
        .addColumn('svm_uuid', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('idx', 'integer', (c) => c.notNull())
        .addColumn('value', 'text', (c) => c.notNull())
        .addColumn('raw', sql.raw(blob), (c) => c.notNull())
        .addPrimaryKeyConstraint('kmip_attributes_pk', ['object_id', 'name', 'idx'])
        .execute();
      // Locate by Name or by a custom attribute within a tenant.
      await db.schema.createIndex('kmip_attributes_lookup').on('kmip_attributes').columns(['svm_uuid', 'name', 'value']).execute();
    },
  };
}
