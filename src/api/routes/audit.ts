/** The audit log: read with filters, and verify the chain. */
import type { FastifyInstance } from 'fastify';
import type { Services } from '../../app.js';
import { fail } from '../../errors.js';
import { principal, requireClusterRead } from '../http.js';

export function auditRoutes(s: Services) {
  return async function (app: FastifyInstance) {
    app.get(
      '/api/v1/audit/events',
      {
        schema: {
          tags: ['audit'],
          summary: 'Audit events in order; svm-admins see their SVMs’ events only.',
          querystring: {
            type: 'object',
            additionalProperties: false,
            properties: {
              action: { type: 'string' },
              actor: { type: 'string' },
              object_id: { type: 'string' },
              outcome: { type: 'string', enum: ['success', 'failure'] },
              svm: { type: 'string' },
              since: { type: 'string' },
              until: { type: 'string' },
              after: { type: 'string', pattern: '^[0-9]{1,15}$' },
              limit: { type: 'string', pattern: '^[0-9]{1,5}$' },
            },
          },
        },
      },
      async (req) => {
        const p = principal(req);
        if (p.role === 'application') fail('permission_denied');
        const q = req.query as Record<string, string | undefined>;
        let svmUuids: string[] | undefined;
        if (q.svm) {
          const svm = await s.svms.resolve(q.svm);
          svmUuids = svm ? [svm.uuid] : [];
        }
        const clusterWide = p.role === 'cluster-admin' || (p.role === 'readonly' && p.svms.length === 0);
        if (!clusterWide) svmUuids = (svmUuids ?? p.svms).filter((u) => p.svms.includes(u));
        const limit = q.limit === undefined ? 100 : Number(q.limit);
        if (limit < 1 || limit > 10000) fail('invalid_value', 'limit must be 1..10000.', 'limit');
        await s.audit.drain();
        const rows = await s.audit.query({ action: q.action, actor: q.actor, objectId: q.object_id, outcome: q.outcome, since: q.since, until: q.until, svmUuids, afterSeq: q.after === undefined ? undefined : Number(q.after), limit });
        const records = rows.map((r) => ({ ...r, seq: Number(r.seq), detail: r.detail ? JSON.parse(r.detail) : null }));
        return { records, num_records: records.length, ...(records.length === limit ? { next: records[records.length - 1].seq } : {}) };
      },
    );

    app.get('/api/v1/audit/verify', { schema: { tags: ['audit'], summary: 'Walks the hash chain and reports the first break, if any.' } }, async (req) => {
      requireClusterRead(req);
      await s.audit.drain();
      return s.audit.verify();
    });
  };
}
