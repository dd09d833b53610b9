/**
 * Element JSON-RPC: `POST /json-rpc/12.5` and `/json-rpc/12.7`. The same credentials as the REST
 * API (bearer token or HTTP Basic, as Element clients send), answered in Element's envelope: every
 * refusal, from authentication to a refused rekey, is `{"error":{"code","name","message"},"id"}`.
 * Method errors come with HTTP 200 as Element's do; only authentication failures use HTTP 401.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Services } from '../../app.js';
import { KeysmithError } from '../../errors.js';
import { ElementError, Params, errorBody, parseEnvelope, type RpcId } from '../../element/rpc.js';
import { findMethod } from '../../element/methods.js';
import { actor, principal } from '../http.js';

export const ELEMENT_VERSIONS = ['12.5', '12.7'] as const;

export function elementRoutes(s: Services) {
  return async function (app: FastifyInstance) {
    // This plugin's own error handler: failures before the handler runs (authentication, a body
    // that is not JSON) are answered in Element's shape too.
    app.setErrorHandler(async (error: FastifyError | KeysmithError, req: FastifyRequest, reply: FastifyReply) => {
      let e: unknown = error;
      if (!(error instanceof KeysmithError) && !(error instanceof ElementError)) {
        const fe = error as FastifyError;
        if (fe.statusCode === 400 || fe.statusCode === 415 || fe.code?.startsWith('FST_ERR_CTP')) e = new ElementError('xUnknownRPCMethod', 'The request body is not a JSON-RPC object (send application/json).');
        else if (fe.statusCode === 413) e = new ElementError('xUnknownRPCMethod', 'The request body is too large.');
        else req.log.error({ err: { message: error.message, code: fe.code, stack: error.stack } }, 'element request failed');
      }
      const { status, body } = errorBody(e, rpcId(req.body));
      if (status === 401) reply.header('www-authenticate', 'Basic realm="keysmith", Bearer');
      await auditRefusal(req, body.error.name);
      return reply.status(status).send(body);
    });

    async function auditRefusal(req: FastifyRequest, name: string) {
      if (!req.principal || s.audit.settleRequest(req.id)) return;
      const p = req.principal;
      const method = typeof (req.body as { method?: unknown } | undefined)?.method === 'string' ? String((req.body as { method: string }).method).slice(0, 128) : null;
      await s.audit
        .record({ actor: `${p.kind}:${p.name}:${p.id}`, requestId: req.id, action: 'element.call', outcome: 'failure', detail: { route: req.routeOptions.url ?? null, method, error: name } })
        .catch((err) => req.log.error({ err: { message: (err as Error).message } }, 'audit of a refusal failed'));
    }

    for (const version of ELEMENT_VERSIONS) {
      app.post(
        `/json-rpc/${version}`,
        {
          schema: {
            tags: ['element'],
            summary: `Element ${version} JSON-RPC: RekeySoftwareEncryptionAtRestMasterKey, GetSoftwareEncryptionAtRestInfo, GetAsyncResult, ListAsyncResults.`,
            body: { type: 'object', properties: { method: { type: 'string' }, params: { type: 'object' }, id: {} } },
          },
          // Element's envelope is validated by the handler, so each failure gets Element's error name.
          validatorCompiler: () => () => true,
        },
        async (req, reply) => {
          const p = principal(req);
          const env = parseEnvelope(req.body);
          const found = findMethod(env.method);
          if (!found) throw new ElementError('xUnknownAPIMethod', `Unknown method: ${env.method}.`);
          const params = new Params(env.params);
          const result = await found[1](s, { params, principal: p, actor: actor(req) });
          const unused = params.unused();
          return reply.send({ id: env.id, result, ...(unused ? { unusedParameters: unused } : {}) });
        },
      );
    }
  };
}

export function rpcId(body: unknown): RpcId {
  const id = (body as { id?: unknown } | undefined)?.id;
  return typeof id === 'string' || typeof id === 'number' ? id : null;
}
