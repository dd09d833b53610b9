/**
 * ONTAP /api/security/key-stores (list, read, PATCH enabled=true to switch an SVM's keystore
 * configuration) and POST /api/security/key-managers/{source.uuid}/migrate, the other operation
 * that moves a tenant's KEKs between roots. Both long operations are jobs with ONTAP's
 * return_timeout semantics (answerWithJob); a PATCH that completes within the timeout answers 200.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Services } from '../../app.js';
import type { KeyManagerRow } from '../../store/key-manager-repo.js';
import type { SvmRow } from '../../store/svm-repo.js';
import { fail } from '../../errors.js';
import { KEY_STORE_STATES, KEY_STORE_TYPES } from '../../keymanagers/key-manager.js';
import { actor, authorize, bool, canSee, collectionQuery, maxRecords, principal, requireClusterAdmin, requireOntapRead, returnTimeout, selectFields } from '../http.js';
import { answerWithJob } from './jobs.js';

const FIELDS = { always: ['uuid', '_links'], defaults: ['type', 'location', 'enabled', 'state', 'scope', 'svm', 'configuration'], expensive: [] as string[] };

export function keyStoreRoutes(s: Services) {
  async function load(req: FastifyRequest, uuid: string, access: 'read' | 'manage', what = 'entry'): Promise<{ config: KeyManagerRow; svm: SvmRow }> {
    const config = await s.repos.keyManagers.findByUuid(uuid);
    const svm = config ? await s.svms.resolve(config.svm_uuid) : undefined;
    authorize(req, config ? svm : undefined, access, what);
    if (svm!.scope === 'cluster' && access === 'manage') requireClusterAdmin(req);
    return { config: config!, svm: svm! };
  }

  return async function (app: FastifyInstance) {
    app.get(
      '/api/security/key-stores',
      {
        schema: {
          tags: ['security'],
          summary: 'Lists keystore configurations: every key manager configuration of every SVM, enabled or not (ONTAP).',
          querystring: collectionQuery({
            type: { type: 'string', enum: [...KEY_STORE_TYPES] },
            location: { type: 'string', enum: ['onboard', 'external'] },
            enabled: { type: 'string' },
            state: { type: 'string', enum: [...KEY_STORE_STATES] },
            scope: { type: 'string', enum: ['cluster', 'svm'] },
            'svm.name': { type: 'string' },
            'svm.uuid': { type: 'string' },
            'configuration.uuid': { type: 'string' },
            'configuration.name': { type: 'string' },
          }),
        },
      },
      async (req) => {
        requireOntapRead(req);
        const q = req.query as Record<string, string | undefined>;
        const max = maxRecords(q.max_records);
        returnTimeout(q.return_timeout);
        const withRecords = bool(q.return_records, 'return_records') ?? true;
        const enabled = bool(q.enabled, 'enabled');
        const p = principal(req);
        const records: Record<string, unknown>[] = [];
        for (const { config, svm } of await s.keyStores.list()) {
          if (!canSee(p, svm)) continue;
          const v = s.keyStores.view(config, svm);
          if (q.uuid && v.uuid !== q.uuid) continue;
          if (q.type && v.type !== q.type) continue;
          if (q.location && v.location !== q.location) continue;
          if (enabled !== undefined && v.enabled !== enabled) continue;
          if (q.state && v.state !== q.state) continue;
          if (q.scope && v.scope !== q.scope) continue;
          if (q['svm.name'] && v.svm?.name !== q['svm.name']) continue;
          if (q['svm.uuid'] && v.svm?.uuid !== q['svm.uuid']) continue;
          if (q['configuration.uuid'] && v.configuration.uuid !== q['configuration.uuid']) continue;
          if (q['configuration.name'] && v.configuration.name !== q['configuration.name']) continue;
          if (max !== undefined && records.length >= max) break;
          records.push(selectFields(v, q.fields, FIELDS));
        }
        return withRecords ? { records, num_records: records.length, _links: { self: { href: req.url } } } : { num_records: records.length, _links: { self: { href: req.url } } };
      },
    );

    app.get(
      '/api/security/key-stores/:uuid',
      { schema: { tags: ['security'], summary: 'One keystore configuration (ONTAP).', querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' } } } } },
      async (req) => {
        const { config, svm } = await load(req, (req.params as { uuid: string }).uuid, 'read');
        return selectFields(s.keyStores.view(config, svm), (req.query as { fields?: string }).fields, FIELDS);
      },
    );

    app.patch(
      '/api/security/key-stores/:uuid',
      {
        schema: {
          tags: ['security'],
          summary:
            'Enables a keystore configuration (ONTAP): the SVM switches to it, and a job re-wraps its KEKs under the new root. While a switch is unfinished the SVM is in state "switching" and rekeys are refused (65537610); PATCH again to complete it.',
          querystring: { type: 'object', additionalProperties: false, properties: { return_timeout: { type: 'string' } } },
          body: { type: 'object', additionalProperties: false, properties: { enabled: { type: 'boolean' } } },
        },
      },
      async (req, reply) => {
        returnTimeout((req.query as Record<string, string | undefined>).return_timeout);
        const { config, svm } = await load(req, (req.params as { uuid: string }).uuid, 'manage');
        const body = (req.body ?? {}) as { enabled?: boolean };
        if (body.enabled === undefined) fail('invalid_field', 'Give "enabled": true to enable this configuration.', 'enabled');
        if (body.enabled === false) fail('not_supported', 'A configuration is disabled by enabling another configuration of its SVM.', 'enabled');
        const job = await s.keyStores.enable(config, svm, actor(req));
        if (!job) return {};
        const out = await answerWithJob(s, req, reply, job);
        // A PATCH that completes within return_timeout answers 200, as ONTAP's PATCHes do (answerWithJob speaks for POSTs).
        if (reply.statusCode === 201) reply.status(200);
        return out;
      },
    );

    app.post(
      '/api/security/key-managers/:uuid/migrate',
      {
        schema: {
          tags: ['security'],
          summary:
            "Migrates a data SVM's keys between the admin SVM's key manager (the path's source) and the data SVM's own (the body's uuid), or back (ONTAP). A job: every KEK is re-wrapped under the destination's root; the keys themselves do not change.",
          querystring: { type: 'object', additionalProperties: false, properties: { return_timeout: { type: 'string' }, return_records: { type: 'string' } } },
          body: {
            type: 'object',
            additionalProperties: false,
            required: ['uuid'],
            properties: { uuid: { type: 'string' }, _links: { type: 'object' } },
          },
        },
      },
      async (req, reply) => {
        const q = req.query as Record<string, string | undefined>;
        returnTimeout(q.return_timeout);
        bool(q.return_records, 'return_records');
        const source = await load(req, (req.params as { uuid: string }).uuid, 'manage', 'source key manager');
        const dest = await load(req, (req.body as { uuid: string }).uuid, 'manage', 'destination key manager');
        const job = await s.keyStores.migrate(source.config, source.svm, dest.config, dest.svm, actor(req));
        return answerWithJob(s, req, reply, job);
      },
    );
  };
}
