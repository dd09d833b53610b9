/** ONTAP /api/svm/svms: data SVMs (tenants). */
import type { FastifyInstance } from 'fastify';
import type { Services } from '../../app.js';
import type { SvmRow } from '../../store/svm-repo.js';
import { fail } from '../../errors.js';
import { actor, authorize, bool, canSee, collectionQuery, maxRecords, principal, requireClusterAdmin, requireOntapRead, selectFields } from '../http.js';

/**
 * aggregates, ipspace and snapshot_policy are served on request only, with what is true of a
 * Keysmith SVM: it owns no storage, lives in the cluster's one network (ONTAP's "Default" IPspace)
 * and takes no snapshots (ONTAP's built-in policy "none"). na_ontap_svm reads all three.
 */
function view(s: SvmRow) {
  return {
    uuid: s.uuid,
    name: s.name,
    subtype: 'default',
    state: 'running',
    aggregates: [],
    ipspace: { name: 'Default' },
    snapshot_policy: { name: 'none' },
    _links: { self: { href: `/api/svm/svms/${s.uuid}` } },
  };
}

const listQuery = collectionQuery({ name: { type: 'string' } });

export function svmRoutes(s: Services) {
  return async function (app: FastifyInstance) {
    app.get('/api/svm/svms', { schema: { tags: ['svm'], summary: 'Lists data SVMs.', querystring: listQuery } }, async (req) => {
      requireOntapRead(req);
      const q = req.query as Record<string, string | undefined>;
      const p = principal(req);
      let rows = (await s.svms.list()).filter((x) => x.scope === 'svm' && canSee(p, x));
      if (q.name) rows = rows.filter((x) => x.name === q.name);
      if (q.uuid) rows = rows.filter((x) => x.uuid === q.uuid);
      const max = maxRecords(q.max_records);
      if (max !== undefined) rows = rows.slice(0, max);
      const records = rows.map((x) => selectFields(view(x), q.fields, { always: ['uuid', 'name', '_links'], defaults: [], expensive: [] }));
      return { records, num_records: records.length, _links: { self: { href: req.url } } };
    });

    app.get('/api/svm/svms/:uuid', { schema: { tags: ['svm'], summary: 'One SVM.', querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' } } } } }, async (req) => {
      const { uuid } = req.params as { uuid: string };
      const svm = await s.svms.resolve(uuid);
      authorize(req, svm && svm.uuid === uuid && svm.scope === 'svm' ? svm : undefined, 'read');
      return selectFields(view(svm!), (req.query as { fields?: string }).fields, { always: ['uuid', 'name', '_links'], defaults: ['subtype', 'state'], expensive: [] });
    });

    app.post(
      '/api/svm/svms',
      {
        schema: {
          tags: ['svm'],
          summary: 'Creates a data SVM.',
          querystring: { type: 'object', additionalProperties: false, properties: { return_records: { type: 'string' }, return_timeout: { type: 'string' } } },
          body: { type: 'object', additionalProperties: false, required: ['name'], properties: { name: { type: 'string' }, comment: { type: 'string' } } },
        },
      },
      async (req, reply) => {
        requireClusterAdmin(req);
        const q = req.query as { return_records?: string };
        const withRecords = bool(q.return_records, 'return_records');
        const { name } = req.body as { name: string };
        const row = await s.svms.create(name, actor(req));
        reply.status(201).header('location', `/api/svm/svms/${row.uuid}`);
        return withRecords ? { num_records: 1, records: [view(row)] } : {};
      },
    );

    app.delete('/api/svm/svms/:uuid', { schema: { tags: ['svm'], summary: 'Deletes a data SVM that owns no keys.' } }, async (req) => {
      const { uuid } = req.params as { uuid: string };
      const svm = await s.svms.resolve(uuid);
      authorize(req, svm && svm.uuid === uuid ? svm : undefined, 'read');
      requireClusterAdmin(req);
      if (!svm) fail('not_found');
      await s.svms.remove(svm, actor(req));
      return {};
    });
  };
}
