/**
 * ONTAP /api/security/certificates: install (PEM), list, read and delete certificates. A `client`
 * certificate installed for an SVM authorises a KMIP client presenting it (application role on
 * that SVM); client_ca/server_ca/root_ca certificates are trust anchors for Keysmith's own TLS.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Services } from '../../app.js';
import { CERTIFICATE_TYPES, certificateView } from '../../certificates/certificate-service.js';
import { fail } from '../../errors.js';
import type { SvmRow } from '../../store/svm-repo.js';
import { actor, authorize, canSee, collectionQuery, maxRecords, principal, requireOntapRead, selectFields } from '../http.js';

const svmRef = { type: 'object', additionalProperties: false, properties: { name: { type: 'string' }, uuid: { type: 'string' } } } as const;

const FIELDS = { always: ['uuid', 'name', '_links'], defaults: ['svm', 'scope', 'type', 'common_name', 'serial_number', 'ca', 'expiry_time'], expensive: [] as string[] };

const listQuery = collectionQuery({
  name: { type: 'string' },
  type: { type: 'string' },
  common_name: { type: 'string' },
  serial_number: { type: 'string' },
  scope: { type: 'string' },
  'svm.name': { type: 'string' },
  'svm.uuid': { type: 'string' },
});

export function certificateRoutes(s: Services) {
  async function svmOf(req: FastifyRequest, ref: { name?: string; uuid?: string } | undefined): Promise<SvmRow> {
    if (ref && ref.name === undefined && ref.uuid === undefined) fail('invalid_field', 'svm needs a name or a uuid.', 'svm');
    const svm = ref ? await s.svms.resolve(ref.uuid ?? ref.name!) : await s.svms.admin();
    if (svm && ref?.uuid !== undefined && ref.name !== undefined && svm.name !== ref.name) fail('invalid_field', 'svm.name and svm.uuid name different SVMs.', 'svm');
    return authorize(req, svm, 'manage', 'svm');
  }

  return async function (app: FastifyInstance) {
    app.post(
      '/api/security/certificates',
      {
        schema: {
          tags: ['security'],
          summary: 'Installs a PEM certificate (and, for client and server certificates, its private key). Keysmith cannot create or sign certificates.',
          description:
            'Types: client_ca, server_ca, root_ca (trust anchors), client and server. A certificate of type `client` installed for an SVM (or for the cluster when `svm` is omitted) authorises KMIP clients: a TLS client of the KMIP server that presents exactly this certificate (same SHA-256 fingerprint, shown as the Keysmith field `fingerprint_sha256`) acts with the application role on that SVM: it creates, registers, reads and uses that SVM\'s keys. The certificate must also be issued by the KMIP server\'s configured client CA. A private key is stored sealed under the admin SVM\'s key hierarchy and is never returned. `expiry_time`, `key_size` and `hash_function` describe certificate creation and are ignored on install; `common_name`, when given, must match the certificate.',
          querystring: { type: 'object', additionalProperties: false, properties: { return_records: { type: 'string' }, return_timeout: { type: 'string' } } },
          body: {
            type: 'object',
            additionalProperties: false,
            required: ['type', 'public_certificate'],
            properties: {
              svm: svmRef,
              type: { type: 'string', enum: [...CERTIFICATE_TYPES] },
              public_certificate: { type: 'string', maxLength: 65536 },
              private_key: { type: 'string', maxLength: 65536 },
              name: { type: 'string', minLength: 1, maxLength: 255 },
              common_name: { type: 'string' },
              // Sent by automation that also creates certificates; they describe creation and are
              // ignored when a certificate is installed.
              expiry_time: { type: 'string' },
              key_size: { type: 'integer' },
              hash_function: { type: 'string' },
            },
          },
        },
      },
      async (req, reply) => {
        const b = req.body as { svm?: { name?: string; uuid?: string }; type: string; public_certificate: string; private_key?: string; name?: string; common_name?: string };
        const svm = await svmOf(req, b.svm);
        const row = await s.certificates.install(svm, b, actor(req));
        reply.status(201).header('location', `/api/security/certificates/${row.uuid}`);
        const q = req.query as { return_records?: string };
        return q.return_records === 'true' ? { num_records: 1, records: [certificateView(row, svm)] } : {};
      },
    );

    app.get('/api/security/certificates', { schema: { tags: ['security'], summary: 'Lists installed certificates.', querystring: listQuery } }, async (req) => {
      requireOntapRead(req);
      const q = req.query as Record<string, string | undefined>;
      const p = principal(req);
      const svms = (await s.svms.list()).filter((x) => canSee(p, x));
      const byUuid = new Map(svms.map((x) => [x.uuid, x]));
      let allowed = svms;
      if (q['svm.name'] !== undefined) allowed = allowed.filter((x) => x.name === q['svm.name']);
      if (q['svm.uuid'] !== undefined) allowed = allowed.filter((x) => x.uuid === q['svm.uuid']);
      if (q.scope !== undefined) allowed = allowed.filter((x) => x.scope === q.scope);
      let rows = await s.certificates.list({ svmUuids: allowed.map((x) => x.uuid), type: q.type, name: q.name, commonName: q.common_name, uuid: q.uuid });
      if (q.serial_number !== undefined) rows = rows.filter((r) => r.serial_number === q.serial_number!.toUpperCase());
      const max = maxRecords(q.max_records);
      if (max !== undefined) rows = rows.slice(0, max);
      const records = rows.map((r) => selectFields(certificateView(r, byUuid.get(r.svm_uuid)!) as unknown as Record<string, unknown>, q.fields, FIELDS));
      return { records, num_records: records.length, _links: { self: { href: req.url } } };
    });

    app.get(
      '/api/security/certificates/:uuid',
      { schema: { tags: ['security'], summary: 'One installed certificate (never its private key).', querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' } } } } },
      async (req) => {
        const { uuid } = req.params as { uuid: string };
        const row = await s.certificates.get(uuid);
        const svm = authorize(req, row ? await s.svms.resolve(row.svm_uuid) : undefined, 'read');
        return selectFields(certificateView(row!, svm) as unknown as Record<string, unknown>, (req.query as { fields?: string }).fields, { ...FIELDS, defaults: [...FIELDS.defaults, 'public_certificate', 'key_size'] });
      },
    );

    app.delete('/api/security/certificates/:uuid', { schema: { tags: ['security'], summary: 'Deletes an installed certificate (and its private key). Refused (3735683) while an external key manager configuration names it as its client certificate or a server CA certificate.' } }, async (req) => {
      const { uuid } = req.params as { uuid: string };
      const row = await s.certificates.get(uuid);
      authorize(req, row ? await s.svms.resolve(row.svm_uuid) : undefined, 'manage');
      await s.certificates.remove(row!, actor(req));
      return {};
    });
  };
}
