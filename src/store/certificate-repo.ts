/** SQL for installed certificates. */
import type { CertificateTable, Conn } from './schema.js';

export type CertificateRow = CertificateTable;

export interface CertificateFilter {
  svmUuids?: string[];
  type?: string;
  name?: string;
  commonName?: string;
  uuid?: string;
  limit?: number;
}

export function createCertificateRepo(db: Conn, dialect: 'sqlite' | 'postgres' = 'sqlite') {
  return {
    insert: (row: CertificateRow, tx: Conn = db) => tx.insertInto('certificates').values(row).execute(),
    find: (uuid: string, tx: Conn = db) => tx.selectFrom('certificates').selectAll().where('uuid', '=', uuid).executeTakeFirst(),
    /**
     * A certificate read to be named by what `tx` records. On PostgreSQL the row is share-locked until
     * `tx` ends: a concurrent delete (remove) waits for it, or, when it deleted first, this waits for
     * that commit and finds nothing. SQLite runs one writer at a time already.
     */
    findForUse: (uuid: string, tx: Conn) => {
      const q = tx.selectFrom('certificates').selectAll().where('uuid', '=', uuid);
      return (dialect === 'postgres' ? q.forShare() : q).executeTakeFirst();
    },
    findByName: (svmUuid: string, name: string, tx: Conn = db) =>
      tx.selectFrom('certificates').selectAll().where('svm_uuid', '=', svmUuid).where('name', '=', name).executeTakeFirst(),
    /** Certificates of one type whose DER has this SHA-256 (a TLS peer's certificate → its principal). */
    findByFingerprint: (fingerprint: string, type: string, tx: Conn = db) =>
      tx.selectFrom('certificates').selectAll().where('fingerprint', '=', fingerprint).where('type', '=', type).orderBy('created_at').execute(),
    list: (f: CertificateFilter, tx: Conn = db) => {
      let q = tx.selectFrom('certificates').selectAll();
      if (f.svmUuids) q = f.svmUuids.length === 0 ? q.where('uuid', '=', '') : q.where('svm_uuid', 'in', f.svmUuids);
      if (f.type) q = q.where('type', '=', f.type);
      if (f.name) q = q.where('name', '=', f.name);
      if (f.commonName) q = q.where('common_name', '=', f.commonName);
      if (f.uuid) q = q.where('uuid', '=', f.uuid);
      q = q.orderBy('created_at').orderBy('uuid');
      if (f.limit !== undefined) q = q.limit(f.limit);
      return q.execute();
    },
    countForSvm: async (svmUuid: string, tx: Conn = db) =>
      Number((await tx.selectFrom('certificates').select((eb) => eb.fn.countAll<number>().as('n')).where('svm_uuid', '=', svmUuid).executeTakeFirstOrThrow()).n),
    remove: (uuid: string, tx: Conn = db) => tx.deleteFrom('certificates').where('uuid', '=', uuid).execute(),
    /** Key managers whose external (KMIP) configuration names this certificate as its client certificate or a server CA. */
    keyManagersUsing: async (uuid: string, tx: Conn = db): Promise<string[]> => {
      const rows = await tx
        .selectFrom('kmip_configs')
        .select(['key_manager_uuid', 'client_certificate_uuid', 'server_ca_uuids'])
        // server_ca_uuids is a JSON array of uuids (hex and hyphens only, so no LIKE wildcard); parsed below to be exact.
        .where((eb) => eb.or([eb('client_certificate_uuid', '=', uuid), eb('server_ca_uuids', 'like', `%"${uuid}"%`)]))
        .orderBy('key_manager_uuid')
        .execute();
      return rows.filter((r) => r.client_certificate_uuid === uuid || (JSON.parse(r.server_ca_uuids) as string[]).includes(uuid)).map((r) => r.key_manager_uuid);
    },
  };
}
export type CertificateRepo = ReturnType<typeof createCertificateRepo>;
