/** Keysmith's data plane: /api/v1/svms/{svm}/keys, data keys and unwrap. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Services } from '../../app.js';
import { keyView, type KeyAction } from '../../hierarchy/dek-service.js';
import { fail } from '../../errors.js';
import { actor, authorize, type Access } from '../http.js';

const svmParam = { type: 'object', properties: { svm: { type: 'string' } }, required: ['svm'] } as const;
const keyParams = { type: 'object', properties: { svm: { type: 'string' }, id: { type: 'string' } }, required: ['svm', 'id'] } as const;
const lengthProp = { type: 'integer', enum: [128, 256] } as const;

export function keyRoutes(s: Services) {
  async function tenant(req: FastifyRequest, access: Access) {
    const ref = (req.params as { svm: string }).svm;
    return authorize(req, await s.svms.resolve(ref), access, 'svm');
  }

  return async function (app: FastifyInstance) {
    app.post(
      '/api/v1/svms/:svm/keys',
      {
        schema: {
          tags: ['keys'],
          summary: 'Creates a DEK (no plaintext is returned).',
          params: svmParam,
          body: {
            type: 'object',
            additionalProperties: false,
            properties: { name: { type: 'string', maxLength: 255 }, length: lengthProp, state: { type: 'string', enum: ['pre-active', 'active'] } },
          },
        },
      },
      async (req, reply) => {
        const svm = await tenant(req, 'data');
        const b = (req.body ?? {}) as { name?: string; length?: number; state?: 'pre-active' | 'active' };
        const row = await s.deks.create(svm, b, actor(req));
        reply.status(201).header('location', `/api/v1/svms/${svm.uuid}/keys/${row.id}`);
        return keyView(row, svm);
      },
    );

    app.get(
      '/api/v1/svms/:svm/keys',
      {
        schema: {
          tags: ['keys'],
          summary: 'Lists key metadata, a page at a time (`next` is the cursor for `after`).',
          params: svmParam,
          querystring: { type: 'object', additionalProperties: false, properties: { limit: { type: 'string', pattern: '^[0-9]{1,4}$' }, after: { type: 'string', maxLength: 64 } } },
        },
      },
      async (req) => {
        const svm = await tenant(req, 'read');
        const q = req.query as { limit?: string; after?: string };
        const limit = q.limit === undefined ? 100 : Number(q.limit);
        if (limit < 1 || limit > 1000) fail('invalid_value', 'limit must be 1..1000.', 'limit');
        const { rows, next } = await s.deks.list(svm, limit, q.after, actor(req));
        return { records: rows.map((r) => keyView(r, svm)), num_records: rows.length, ...(next ? { next } : {}) };
      },
    );

    app.get('/api/v1/svms/:svm/keys/:id', { schema: { tags: ['keys'], summary: 'Key metadata.', params: keyParams } }, async (req) => {
      const svm = await tenant(req, 'read');
      return keyView(await s.deks.get(svm, (req.params as { id: string }).id, actor(req)), svm);
    });

    app.post(
      '/api/v1/svms/:svm/keys/:id/state',
      {
        schema: {
          tags: ['keys'],
          summary: 'Changes a key’s state: activate, deactivate, compromise or destroy (KMIP transitions).',
          params: keyParams,
          body: { type: 'object', additionalProperties: false, required: ['action'], properties: { action: { type: 'string', enum: ['activate', 'deactivate', 'compromise', 'destroy'] } } },
        },
      },
      async (req) => {
        const svm = await tenant(req, 'manage');
        const row = await s.deks.transition(svm, (req.params as { id: string }).id, (req.body as { action: KeyAction }).action, actor(req));
        return keyView(row, svm);
      },
    );

    app.delete('/api/v1/svms/:svm/keys/:id', { schema: { tags: ['keys'], summary: 'Destroys a key that is not active; its material is erased.', params: keyParams } }, async (req) => {
      const svm = await tenant(req, 'manage');
      return keyView(await s.deks.transition(svm, (req.params as { id: string }).id, 'destroy', actor(req)), svm);
    });

    app.post(
      '/api/v1/svms/:svm/data-keys',
      {
        schema: {
          tags: ['keys'],
          summary: 'Generates a data key: its plaintext (returned this once) and its wrapped form to store beside the data.',
          params: svmParam,
          body: { type: 'object', additionalProperties: false, properties: { name: { type: 'string', maxLength: 255 }, length: lengthProp } },
        },
      },
      async (req, reply) => {
        const svm = await tenant(req, 'data');
        const out = await s.deks.generateDataKey(svm, (req.body ?? {}) as { name?: string; length?: number }, actor(req));
        reply.status(201);
        return { key_id: out.row.id, plaintext: out.plaintext.toString('base64'), wrapped: out.wrapped, kek_version: out.row.kek_version };
      },
    );

    app.post(
      '/api/v1/svms/:svm/unwrap',
      {
        schema: {
          tags: ['keys'],
          summary: 'Unwraps a wrapped data key.',
          params: svmParam,
          body: { type: 'object', additionalProperties: false, required: ['wrapped'], properties: { wrapped: { type: 'string', maxLength: 4096 } } },
          // A response schema lets Fastify serialize with a compiled serializer instead of JSON.stringify (every unwrap).
          response: { 200: { type: 'object', required: ['key_id', 'plaintext'], properties: { key_id: { type: 'string' }, plaintext: { type: 'string', description: 'base64' } } } },
        },
      },
      async (req) => {
        const svm = await tenant(req, 'data');
        const out = await s.deks.unwrap(svm, (req.body as { wrapped: string }).wrapped, actor(req));
        return { key_id: out.row.id, plaintext: out.plaintext.toString('base64') };
      },
    );

    app.post(
      '/api/v1/svms/:svm/unwrap-batch',
      {
        schema: {
          tags: ['keys'],
          summary: 'Unwraps many wrapped data keys in one request; each result is a key or an error.',
          params: svmParam,
          body: {
            type: 'object',
            additionalProperties: false,
            required: ['wrapped'],
            properties: { wrapped: { type: 'array', minItems: 1, maxItems: 10000, items: { type: 'string', maxLength: 4096 } } },
          },
        },
      },
      async (req) => {
        const svm = await tenant(req, 'data');
        const results = await s.deks.unwrapBatch(svm, (req.body as { wrapped: string[] }).wrapped, actor(req));
        return {
          records: results.map((r) => ('plaintext' in r ? { key_id: r.key_id, plaintext: r.plaintext.toString('base64') } : r)),
          num_records: results.length,
        };
      },
    );
  };
}
