/**
 * Installed certificates (ONTAP /api/security/certificates): CA certificates that Keysmith trusts
 * and client/server certificates it presents or recognises.
 *
 * Invariants:
 * - Only a single well-formed PEM X.509 certificate is stored; anything else is refused before any
 *   write. Facts shown (common name, serial, expiry, issuer) are parsed from it, never taken from
 *   the caller.
 * - A private key (client and server types only) must parse and match the certificate; it is
 *   stored only sealed under the admin tenant's KEK, bound to the certificate's uuid, and is never
 *   returned by the API, logged or audited.
 * - A certificate named by an external key manager's configuration (client certificate or server
 *   CA) is not deleted while that configuration exists (ONTAP 3735683), checked in the deleting
 *   transaction.
 * - A certificate of type `client` installed for an SVM makes a TLS client presenting exactly that
 *   certificate (same SHA-256 of its DER) a principal with the application role on that SVM: this
 *   is how KMIP clients are authorised.
 */
import { X509Certificate, createHash, createPrivateKey, type KeyObject } from 'node:crypto';
import { KeysmithError, fail } from '../errors.js';
import { uuid as newUuid } from '../ids.js';
import type { AuditService } from '../audit/audit-service.js';
import type { Db } from '../store/schema.js';
import type { CertificateFilter, CertificateRepo, CertificateRow } from '../store/certificate-repo.js';
import type { SvmRow } from '../store/svm-repo.js';
import type { DekService } from '../hierarchy/dek-service.js';
import type { Actor } from '../keymanagers/onboard-service.js';

export const CERTIFICATE_TYPES = ['client_ca', 'server_ca', 'client', 'server', 'root_ca'] as const;
export type CertificateType = (typeof CERTIFICATE_TYPES)[number];
const WITH_KEY: CertificateType[] = ['client', 'server'];
const PRIVATE_KEY_PURPOSE = 'certificate-private-key';
const MAX_PEM = 64 * 1024;

export interface ParsedCertificate {
  x509: X509Certificate;
  pem: string;
  fingerprint: string;
  commonName: string | null;
  serialNumber: string;
  issuerCommonName: string | null;
  expiryTime: string;
  keySize: number | null;
}

function cnOf(dn: string): string | null {
  for (const line of dn.split('\n')) if (line.startsWith('CN=')) return line.slice(3);
  return null;
}

/** SHA-256 of a certificate's DER, lower-case hex: how a TLS peer is matched to an installed certificate. */
export function fingerprintOf(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex');
}

/** Parses one PEM certificate; null when the text is not exactly one well-formed certificate. */
export function parseCertificatePem(text: unknown): ParsedCertificate | null {
  if (typeof text !== 'string' || text.length === 0 || text.length > MAX_PEM) return null;
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
  if (!blocks || blocks.length !== 1) return null;
  // Nothing but white space may surround the one block (no stray keys or second objects).
  if (text.replace(blocks[0], '').trim() !== '') return null;
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(blocks[0]);
  } catch {
    return null;
  }
  const pub = x509.publicKey;
  const keySize = pub.asymmetricKeyDetails?.modulusLength ?? null;
  return {
    x509,
    pem: x509.toString(),
    fingerprint: fingerprintOf(x509.raw),
    commonName: cnOf(x509.subject),
    serialNumber: x509.serialNumber.toUpperCase(),
    issuerCommonName: cnOf(x509.issuer),
    expiryTime: new Date(x509.validTo).toISOString().replace(/\.\d{3}Z$/, 'Z'),
    keySize,
  };
}

export interface CertificateView {
  uuid: string;
  name: string;
  svm?: { uuid: string; name: string };
  scope: 'cluster' | 'svm';
  type: string;
  common_name: string | null;
  serial_number: string;
  ca: string | null;
  expiry_time: string;
  key_size: number | null;
  public_certificate: string;
  fingerprint_sha256: string;
  _links: { self: { href: string } };
}

export function certificateView(row: CertificateRow, svm: SvmRow): CertificateView {
  return {
    uuid: row.uuid,
    name: row.name,
    ...(svm.scope === 'svm' ? { svm: { uuid: svm.uuid, name: svm.name } } : {}),
    scope: svm.scope,
    type: row.type,
    common_name: row.common_name,
    serial_number: row.serial_number,
    ca: row.ca,
    expiry_time: row.expiry_time,
    key_size: row.key_size,
    public_certificate: row.public_certificate,
    fingerprint_sha256: row.fingerprint,
    _links: { self: { href: `/api/security/certificates/${row.uuid}` } },
  };
}

export function createCertificateService(deps: {
  db: Db;
  repo: CertificateRepo;
  audit: AuditService;
  deks: Pick<DekService, 'sealSecret' | 'openSecret'>;
  svms: { admin(): Promise<SvmRow | undefined>; resolve(ref: string): Promise<SvmRow | undefined> };
}) {
  const { db, repo, audit } = deps;
  /**
   * Bumped when this node installs or deletes a certificate, so holders of a principal derived
   * from one (open KMIP connections) look again at once; changes made elsewhere (another node, an
   * SVM deleted with its certificates) reach them through their short time-to-live.
   */
  let revision = 0;

  return {
    revision: () => revision,

    async install(svm: SvmRow, input: { type: string; public_certificate: string; name?: string; private_key?: string; common_name?: string }, who: Actor): Promise<CertificateRow> {
      if (!(CERTIFICATE_TYPES as readonly string[]).includes(input.type)) fail('invalid_value', `type must be one of ${CERTIFICATE_TYPES.join(', ')}.`, 'type');
      const parsed = parseCertificatePem(input.public_certificate);
      if (!parsed) fail('certificate_malformed', undefined, 'public_certificate');
      if (input.common_name !== undefined && input.common_name !== parsed.commonName) fail('invalid_value', `common_name "${input.common_name}" is not the certificate's common name.`, 'common_name');
      let key: KeyObject | undefined;
      if (input.private_key !== undefined) {
        if (!WITH_KEY.includes(input.type as CertificateType)) fail('invalid_field', `A private key can only be installed with a certificate of type client or server.`, 'private_key');
        try {
          if (input.private_key.length > MAX_PEM) throw new Error('too long');
          key = createPrivateKey({ key: input.private_key, format: 'pem' });
        } catch {
          fail('certificate_key_invalid', 'The private key is not a well-formed unencrypted PEM private key.', 'private_key');
        }
        if (!parsed.x509.checkPrivateKey(key)) fail('certificate_key_invalid', 'The private key does not belong to the certificate.', 'private_key');
      }
      const name = input.name ?? `${parsed.commonName ?? 'certificate'}_${parsed.serialNumber}`;
      if (name.length === 0 || name.length > 255) fail('invalid_value', 'name must be 1..255 characters.', 'name');
      const row: CertificateRow = {
        uuid: newUuid(),
        svm_uuid: svm.uuid,
        name,
        type: input.type,
        public_certificate: parsed.pem,
        fingerprint: parsed.fingerprint,
        common_name: parsed.commonName,
        serial_number: parsed.serialNumber,
        ca: parsed.issuerCommonName,
        expiry_time: parsed.expiryTime,
        key_size: parsed.keySize,
        private_key: null,
        created_at: new Date().toISOString(),
      };
      // Read outside the transaction: SQLite has one connection, which the transaction holds.
      const admin = key ? await deps.svms.admin() : undefined;
      if (key && !admin) throw new Error('the admin SVM is missing');
      await db.transaction().execute(async (tx) => {
        if (await repo.findByName(svm.uuid, name, tx)) throw new KeysmithError('duplicate', `A certificate named ${name} already exists in this SVM.`, 'name');
        const installed = await repo.findByFingerprint(parsed.fingerprint, input.type, tx);
        const same = installed.find((c) => c.svm_uuid === svm.uuid);
        if (same) throw new KeysmithError('duplicate', `This certificate is already installed as ${same.name} (${same.uuid}).`, 'public_certificate');
        // A client certificate is who a KMIP client is: installed for one SVM only, or anyone who can
        // install a (public) certificate in their own SVM could take over another SVM's devices.
        if (input.type === 'client' && installed.length > 0) throw new KeysmithError('duplicate', 'This certificate is already installed as a client certificate of another SVM.', 'public_certificate');
        if (key && admin) {
          row.private_key = await deps.deks.sealSecret(admin, PRIVATE_KEY_PURPOSE, row.uuid, key.export({ format: 'der', type: 'pkcs8' }) as Buffer, tx);
        }
        await repo.insert(row, tx);
        await audit.recordIn(tx, {
          ...who,
          action: 'certificate.install',
          outcome: 'success',
          objectType: 'certificate',
          objectId: row.uuid,
          svmUuid: svm.uuid,
          detail: { name, type: row.type, common_name: row.common_name, serial_number: row.serial_number, fingerprint: row.fingerprint, private_key: key !== undefined },
        });
      });
      revision += 1;
      return row;
    },

    list: (f: CertificateFilter) => repo.list(f),
    get: (uuid: string) => repo.find(uuid),

    async remove(row: CertificateRow, who: Actor): Promise<void> {
      await db.transaction().execute(async (tx) => {
        // Deleted first, then checked in the same transaction: the delete holds the row's lock
        // (PostgreSQL) until the end, and a configuration naming it that committed before the check
        // is seen; the refusal throws and rolls the delete back.
        await repo.remove(row.uuid, tx);
        const users = await repo.keyManagersUsing(row.uuid, tx);
        if (users.length > 0) throw new KeysmithError('certificate_in_use', `Cannot remove this certificate while external key manager is configured: key manager ${users.join(', ')} uses it.`);
        await audit.recordIn(tx, { ...who, action: 'certificate.delete', outcome: 'success', objectType: 'certificate', objectId: row.uuid, svmUuid: row.svm_uuid, detail: { name: row.name, type: row.type } });
      });
      revision += 1;
    },

    /** The installed private key of a client or server certificate (for Keysmith's own TLS clients). */
    async privateKey(row: CertificateRow): Promise<KeyObject | null> {
      if (!row.private_key) return null;
      const admin = await deps.svms.admin();
      if (!admin) return null;
      const der = await deps.deks.openSecret(admin, PRIVATE_KEY_PURPOSE, row.uuid, row.private_key);
      return der ? createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }) : null;
    },

    /**
     * The principal a TLS client certificate stands for: the SVM of the `client` certificate
     * installed with the same fingerprint (install refuses a second SVM; the oldest wins for rows
     * installed before it did).
     */
    async clientPrincipal(der: Buffer): Promise<{ certificate: CertificateRow; svm: SvmRow } | null> {
      const fp = fingerprintOf(der);
      for (const c of await repo.findByFingerprint(fp, 'client')) {
        const svm = await deps.svms.resolve(c.svm_uuid);
        if (svm) return { certificate: c, svm };
      }
      return null;
    },
  };
}
export type CertificateService = ReturnType<typeof createCertificateService>;
