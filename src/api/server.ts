/**
 * Builds the HTTP server (does not listen): error shape, validation, authentication, OpenAPI and
 * routes. Tests and `keysmith serve` both start from here.
 */
import { readFileSync } from 'node:fs';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { KeysmithError } from '../errors.js';
import { lazyChildLogger } from './lazy-logger.js';
import { newId } from '../ids.js';
import type { Services } from '../app.js';
import type { Principal } from '../auth/auth-service.js';
import { sysRoutes } from './routes/sys.js';
import { svmRoutes } from './routes/svms.js';
import { keyManagerRoutes } from './routes/key-managers.js';
import { keyServerRoutes } from './routes/key-servers.js';
import { keyRoutes } from './routes/keys.js';
import { principalRoutes } from './routes/principals.js';
import { auditRoutes } from './routes/audit.js';
import { jobRoutes } from './routes/jobs.js';
import { keyStoreRoutes } from './routes/key-stores.js';
import { certificateRoutes } from './routes/certificates.js';
import { elementRoutes, rpcId } from './routes/element.js';
import { errorBody } from '../element/rpc.js';

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
  interface FastifyContextConfig {
    /** Routes that answer without credentials (health, API reference). */
    public?: boolean;
  }
}

function hasNul(v: unknown, depth = 0): boolean {
  if (typeof v === 'string') return v.includes('\u0000');
  if (!v || typeof v !== 'object' || depth > 32) return false;
  // Object.keys, not Object.entries: it runs on every request, and entries allocates a pair per property.
  const keys = Object.keys(v);
  for (let i = 0; i < keys.length; i++) if (keys[i].includes('\u0000') || hasNul((v as Record<string, unknown>)[keys[i]], depth + 1)) return true;
  return false;
}

/**
 * Request ids: a fresh newId (time + 80 random bits) every 1024 requests, numbered after it in
 * newId's alphabet (two characters). A newId per request cost ~2 µs, a noticeable share of an unwrap.
 */
const REQ_ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
let reqBase = '';
let reqNext = 1024;
function requestId(): string {
  if (reqNext >= 1024) {
    reqBase = newId('req');
    reqNext = 0;
  }
  const n = reqNext++;
  return reqBase + REQ_ALPHABET[n >> 5] + REQ_ALPHABET[n & 31];
}

/** Maps a Fastify/Ajv validation failure to ONTAP's error body. */
function validationError(e: FastifyError): KeysmithError {
  const v = e.validation?.[0];
  const where = e.validationContext === 'querystring' ? '' : '';
  if (v?.keyword === 'additionalProperties') {
    const field = String((v.params as { additionalProperty?: string }).additionalProperty ?? '');
    const path = [v.instancePath.replace(/^\//, '').replace(/\//g, '.'), field].filter(Boolean).join('.');
    return new KeysmithError('unexpected_argument', `Unexpected argument "${path}".`, path);
  }
  const path = (v?.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.');
  const missing = v?.keyword === 'required' ? String((v.params as { missingProperty?: string }).missingProperty ?? '') : '';
  const target = [path, missing].filter(Boolean).join('.') || undefined;
  const message = missing ? `Field "${target}" is required.` : `Field "${target ?? e.validationContext}" ${v?.message ?? 'is invalid'}.`;
  void where;
  return new KeysmithError('invalid_field', message, target);
}

export async function buildServer(s: Services): Promise<FastifyInstance> {
  const https = s.config.tlsCert && s.config.tlsKey ? { cert: readFileSync(s.config.tlsCert), key: readFileSync(s.config.tlsKey) } : null;
  const app = Fastify({
    loggerInstance: s.log,
    genReqId: requestId,
    childLoggerFactory: lazyChildLogger,
    bodyLimit: 64 * 1024 * 1024,
    ...(https ? { https } : {}),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false } },
    // Malformed or over-long URLs are refused by the router before any handler: answer in ONTAP's shape too.
    frameworkErrors: (e: FastifyError, _req: FastifyRequest, reply: FastifyReply) => reply.status(400).type('application/hal+json').send(new KeysmithError('invalid_field', `The URL is malformed or too long (${e.code}).`).toBody()),
  }) as unknown as FastifyInstance;

  app.setErrorHandler(async (error: FastifyError | KeysmithError, req: FastifyRequest, reply: FastifyReply) => {
    let ke: KeysmithError;
    if (error instanceof KeysmithError) ke = error;
    else if ((error as FastifyError).validation) ke = validationError(error as FastifyError);
    else if ((error as FastifyError).code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') ke = new KeysmithError('invalid_field', 'Send the body as application/json.');
    else if ((error as FastifyError).code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || (error as FastifyError).code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (error as FastifyError).statusCode === 400) {
      ke = new KeysmithError('invalid_field', 'The request body is not valid JSON.');
    } else if ((error as FastifyError).statusCode === 413) ke = new KeysmithError('invalid_field', 'The request body is too large.');
    else {
      // A bug or an infrastructure failure: log it for operators, tell the client nothing of its details.
      req.log.error({ err: { message: error.message, code: (error as FastifyError).code, stack: error.stack } }, 'request failed');
      ke = new KeysmithError('internal');
    }
    if (ke.status >= 500 && ke.kind !== 'internal') req.log.warn({ code: ke.code }, ke.message);
    if (ke.status === 401) reply.header('www-authenticate', 'Basic realm="keysmith", Bearer');
    // Every refused call of a known principal leaves an audit event, unless its service already wrote one.
    if (req.principal && !s.audit.settleRequest(req.id)) {
      const p = req.principal;
      const params = (req.params ?? {}) as Record<string, string>;
      await s.audit.record({
        actor: `${p.kind}:${p.name}:${p.id}`,
        requestId: req.id,
        action: `http.${req.method.toLowerCase()}`,
        outcome: 'failure',
        objectId: params.id ?? params.uuid ?? null,
        detail: { route: req.routeOptions.url ?? null, svm: params.svm ?? null, code: ke.code },
      }).catch((e) => req.log.error({ err: { message: (e as Error).message } }, 'audit of a refusal failed'));
    }
    return reply.status(ke.status).type('application/hal+json').send(ke.toBody());
  });
  // The per-request hooks take a callback rather than returning a promise: a promise and its
  // microtask per hook per request are a measurable share of a small request (bench --profile).
  app.addHook('onResponse', (req, _reply, done) => {
    s.audit.settleRequest(req.id);
    done();
  });
  // Nothing is answered before every commit made so far is on disk (store/durability.ts): a created
  // key, a state change or a started job is never reported and then lost to a power failure.
  // If the disk fails, the answer becomes the API's internal error instead (logged here, not in it):
  // ONTAP's body with HTTP 500, or Element's envelope with HTTP 200 on the JSON-RPC routes.
  app.addHook('onSend', (req, reply, payload, done) => {
    const synced = s.store.durability.wait();
    if (!synced) return done(null, payload);
    synced.then(
      () => done(null, payload),
      (e: Error) => {
        req.log.error({ err: { message: e.message } }, 'the store could not make a commit durable');
        const failed = new KeysmithError('internal');
        if (req.routeOptions.url?.startsWith('/json-rpc/')) {
          const { status, body } = errorBody(failed, rpcId(req.body));
          reply.code(status).type('application/json');
          return done(null, JSON.stringify(body));
        }
        reply.code(500).type('application/hal+json');
        done(null, JSON.stringify(failed.toBody()));
      },
    );
  });

  app.setNotFoundHandler((req, reply) => {
    const ke = new KeysmithError('not_found', `No resource at ${req.method} ${req.url.split('?')[0]}.`);
    return reply.status(404).send(ke.toBody());
  });

  await app.register(swagger, {
    openapi: {
      info: {
        title: 'Keysmith API',
        version: '0.1.0',
        description:
          'Keysmith speaks ONTAP-shaped security REST (`/api/security/key-managers`, `/api/svm/svms`, `/api/cluster`) and its own data plane (`/api/v1/...`). Errors are ONTAP error bodies `{"error":{"code","message","target"}}`. Keysmith-only paths under ONTAP resources (backup verify/restore) are marked as such.',
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer' },
          basic: { type: 'http', scheme: 'basic' },
        },
      },
      security: [{ bearer: [] }, { basic: [] }],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { docExpansion: 'list' } });
  app.get('/api/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());

  app.addHook('onRequest', (req, _reply, done) => {
    // One read of routeOptions: Fastify builds a fresh object on every read.
    const route = req.routeOptions;
    if (route.config?.public || req.url.startsWith('/docs')) return done();
    if (!route.url) return done(); // unknown route: let the 404 handler answer
    // A bearer token checked within the cache lifetime answers without a promise; anything else
    // (a lookup, Basic, a refusal) goes through authenticate.
    const cached = s.auth.cachedBearer(req.headers.authorization);
    if (cached) {
      req.principal = cached;
      return done();
    }
    s.auth.authenticate(req.headers.authorization).then(
      (p) => {
        req.principal = p;
        done();
      },
      (e: FastifyError) => done(e),
    );
  });
  // PostgreSQL text cannot hold NUL: refuse it in every input, on both stores alike, before it reaches a query.
  app.addHook('preValidation', (req, _reply, done) => {
    if (hasNul(req.params) || hasNul(req.query) || hasNul(req.body)) return done(new KeysmithError('invalid_field', 'Text must not contain NUL characters.') as unknown as FastifyError);
    done();
  });

  await app.register(sysRoutes(s));
  await app.register(svmRoutes(s));
  await app.register(keyManagerRoutes(s));
  await app.register(keyServerRoutes(s));
  await app.register(keyRoutes(s));
  await app.register(principalRoutes(s));
  await app.register(auditRoutes(s));
  await app.register(jobRoutes(s));
  await app.register(keyStoreRoutes(s));
  await app.register(certificateRoutes(s));
  await app.register(elementRoutes(s));
  return app;
}
