/**
 * ONTAP /api/security/key-managers/{uuid}/key-servers: the primary key servers of an external (KMIP)
 * key manager — list, read, add, modify, remove. Every change is checked against the servers
 * before it is recorded (keymanagers/kmip-config-service.ts changeServers); on an onboard key
 * manager each answers 65536828.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Services } from '../../app.js';
import { fail } from '../../errors.js';
import { actor, authorize, bool, maxRecords, requireClusterAdmin, returnTimeout, selectFields } from '../http.js';

const serverProps = {
  server: { type: 'string' },
  timeout: { type: 'integer' },
  username: { type: 'string' },
  password: { type: 'string' },
  secondary_key_servers: { type: 'array', items: { type: 'string' } },
} as const;

const FIELDS = { always: ['server', '_links'], defaults: ['timeout', 'username', 'secondary_key_servers'], expensive: ['connectivity'] };

export function keyServerRoutes(s: Services) {
  async function load(req: FastifyRequest, access: 'read' | 'manage') {
    const km = await s.repos.keyManagers.findByUuid((req.params as { uuid: string }).uuid);
    const svm = km ? await s.svms.resolve(km.svm_uuid) : undefined;
    authorize(req, km ? svm : undefined, access);
    if (svm!.scope === 'cluster' && access === 'manage') requireClusterAdmin(req);
    return km!;
  }
  const wantsConnectivity = (fields: string | undefined) => !!fields && fields.split(',').some((f) => f.trim() === '**' || f.trim().startsWith('connectivity'));

  return async function (app: FastifyInstance) {
    app.get(
      '/api/security/key-managers/:uuid/key-servers',
      {
        schema: {
          tags: ['security'],
          summary: 'Lists the key servers of an external key manager (ONTAP).',
          querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' }, max_records: { type: 'string' }, return_records: { type: 'string' }, return_timeout: { type: 'string' }, server: { type: 'string' } } },
        },
      },
      async (req) => {
        const q = req.query as Record<string, string | undefined>;
        const max = maxRecords(q.max_records);
        returnTimeout(q.return_timeout);
        const km = await load(req, 'read');
        let records = await s.externalKmip.keyServers(km, { connectivity: wantsConnectivity(q.fields), nodeName: s.config.nodeName });
        if (q.server) records = records.filter((r) => r.server === q.server);
        if (max !== undefined) records = records.slice(0, max);
        const out = records.map((r) => selectFields(r, q.fields?.replace(/connectivity[\w.]*/g, 'connectivity'), FIELDS));
        return { records: out, num_records: out.length, _links: { self: { href: req.url } } };
      },
    );

    app.get(
      '/api/security/key-managers/:uuid/key-servers/:server',
      { schema: { tags: ['security'], summary: 'One key server of an external key manager (ONTAP).', querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' } } } } },
      async (req) => {
        const q = req.query as Record<string, string | undefined>;
        const km = await load(req, 'read');
        const name = (req.params as { server: string }).server;
        const rec = (await s.externalKmip.keyServers(km, { connectivity: wantsConnectivity(q.fields), nodeName: s.config.nodeName })).find((r) => r.server === name || r.server === `${name}:5696`);
        if (!rec) fail('not_found', `Key server ${name} is not configured in this key manager.`, 'server');
        return selectFields(rec, q.fields?.replace(/connectivity[\w.]*/g, 'connectivity'), FIELDS);
      },
    );

    app.post(
      '/api/security/key-managers/:uuid/key-servers',
      {
        schema: {
          tags: ['security'],
          summary: 'Adds primary key servers to an external key manager; each must hold its root key (ONTAP).',
          querystring: { type: 'object', additionalProperties: false, properties: { return_records: { type: 'string' }, return_timeout: { type: 'string' } } },
          body: {
            type: 'object',
            additionalProperties: false,
            properties: { ...serverProps, records: { type: 'array', items: { type: 'object', additionalProperties: false, properties: serverProps } } },
          },
        },
      },
      async (req, reply) => {
        const q = req.query as Record<string, string | undefined>;
        const withRecords = bool(q.return_records, 'return_records');
        returnTimeout(q.return_timeout);
        const km = await load(req, 'manage');
        const b = req.body as Record<string, unknown> & { records?: Record<string, unknown>[] };
        if (b.records !== undefined && b.server !== undefined) fail('invalid_field', 'Give server or records, not both.', 'records');
        const { records, ...one } = b;
        const add = records ?? [one];
        if (add.length === 0 || add.some((r) => r.server === undefined)) fail('invalid_field', 'Each key server needs server.', 'server');
        await s.externalKmip.changeServers(km, { add }, actor(req));
        reply.status(201);
        if (!withRecords) return {};
        const names = new Set(add.map((r) => String(r.server)));
        const recs = (await s.externalKmip.keyServers(km)).filter((r) => names.has(String(r.server)) || names.has(String(r.server).replace(/:5696$/, '')));
        return { num_records: recs.length, records: recs };
      },
    );

    app.patch(
      '/api/security/key-managers/:uuid/key-servers/:server',
      {
        schema: {
          tags: ['security'],
          summary: 'Updates a primary key server (timeout, username, password, secondaries), checked against the server (ONTAP).',
          body: { type: 'object', additionalProperties: false, properties: { timeout: serverProps.timeout, username: serverProps.username, password: serverProps.password, secondary_key_servers: serverProps.secondary_key_servers } },
        },
      },
      async (req) => {
        const km = await load(req, 'manage');
        const patch = (req.body ?? {}) as Record<string, unknown>;
        if (Object.keys(patch).length === 0) fail('invalid_field', 'Nothing to change.', 'server');
        await s.externalKmip.changeServers(km, { modify: { server: (req.params as { server: string }).server, patch } }, actor(req));
        return {};
      },
    );

    app.delete('/api/security/key-managers/:uuid/key-servers/:server', { schema: { tags: ['security'], summary: 'Removes a primary key server from an external key manager (ONTAP).' } }, async (req) => {
      const km = await load(req, 'manage');
      await s.externalKmip.changeServers(km, { remove: (req.params as { server: string }).server }, actor(req));
      return {};
    });
  };
}
