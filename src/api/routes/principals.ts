/** Keysmith's own: API tokens and local users (/api/v1/auth/...). Cluster admins only. */
import type { FastifyInstance } from 'fastify';
import type { Services } from '../../app.js';
import { ROLES, type Role } from '../../auth/auth-service.js';
import type { TokenRow, UserRow } from '../../store/principal-repo.js';
import { fail } from '../../errors.js';
import { actor, requireClusterAdmin } from '../http.js';

const grant = {
  role: { type: 'string', enum: [...ROLES] },
  svms: { type: 'array', items: { type: 'string' }, maxItems: 1000 },
} as const;

function tokenView(t: TokenRow) {
  return { id: t.id, name: t.name, role: t.role, svms: JSON.parse(t.svms), created_at: t.created_at, expires_at: t.expires_at, revoked_at: t.revoked_at, created_by: t.created_by };
}
function userView(u: UserRow) {
  return { id: u.id, name: u.name, role: u.role, svms: JSON.parse(u.svms), created_at: u.created_at };
}

export function principalRoutes(s: Services) {
  /** Resolves SVM names or uuids to uuids; roles other than cluster-admin need them, readonly may omit them. */
  async function svmUuids(role: Role, refs: string[] | undefined): Promise<string[]> {
    if (role === 'cluster-admin') {
      if (refs && refs.length > 0) fail('invalid_value', 'A cluster-admin is not bound to SVMs.', 'svms');
      return [];
    }
    if ((!refs || refs.length === 0) && role !== 'readonly') fail('invalid_field', `Role ${role} needs the SVMs it is bound to.`, 'svms');
    const out: string[] = [];
    for (const r of refs ?? []) {
      const svm = await s.svms.resolve(r);
      if (!svm) fail('invalid_value', `SVM ${r} does not exist.`, 'svms');
      out.push(svm.uuid);
    }
    return [...new Set(out)];
  }

  return async function (app: FastifyInstance) {
    app.post(
      '/api/v1/auth/tokens',
      {
        schema: {
          tags: ['auth'],
          summary: 'Creates an API token; its secret is in this response only.',
          body: {
            type: 'object',
            additionalProperties: false,
            required: ['name', 'role'],
            properties: { name: { type: 'string', minLength: 1, maxLength: 128 }, ...grant, expires_in: { type: 'integer', minimum: 60, maximum: 315360000 } },
          },
        },
      },
      async (req, reply) => {
        requireClusterAdmin(req);
        const b = req.body as { name: string; role: Role; svms?: string[]; expires_in?: number };
        const svms = await svmUuids(b.role, b.svms);
        const who = actor(req);
        let out!: { row: TokenRow; secret: string };
        await s.store.db.transaction().execute(async (tx) => {
          out = await s.auth.createToken({ name: b.name, role: b.role, svms, createdBy: who.actor, expiresAt: b.expires_in ? new Date(Date.now() + b.expires_in * 1000).toISOString() : null }, tx);
          await s.audit.recordIn(tx, { ...who, action: 'token.create', outcome: 'success', objectType: 'token', objectId: out.row.id, detail: { name: b.name, role: b.role, svms } });
        });
        reply.status(201);
        return { ...tokenView(out.row), token: out.secret };
      },
    );

    app.get('/api/v1/auth/tokens', { schema: { tags: ['auth'], summary: 'Lists tokens (never their secrets).' } }, async (req) => {
      requireClusterAdmin(req);
      const records = (await s.repos.principals.listTokens()).map(tokenView);
      return { records, num_records: records.length };
    });

    app.delete('/api/v1/auth/tokens/:id', { schema: { tags: ['auth'], summary: 'Revokes a token.' } }, async (req) => {
      requireClusterAdmin(req);
      const id = (req.params as { id: string }).id;
      const who = actor(req);
      let row!: TokenRow;
      await s.store.db.transaction().execute(async (tx) => {
        row = await s.auth.revokeToken(id, tx);
        await s.audit.recordIn(tx, { ...who, action: 'token.revoke', outcome: 'success', objectType: 'token', objectId: id });
      });
      s.auth.settled({ tokenHash: row.hash });
      return tokenView({ ...row, revoked_at: row.revoked_at ?? new Date().toISOString() });
    });

    app.post(
      '/api/v1/auth/users',
      {
        schema: {
          tags: ['auth'],
          summary: 'Creates a local user who signs in with HTTP Basic.',
          body: {
            type: 'object',
            additionalProperties: false,
            required: ['name', 'password', 'role'],
            properties: { name: { type: 'string', pattern: '^[A-Za-z0-9._@-]{1,64}$' }, password: { type: 'string', minLength: 12, maxLength: 1024 }, ...grant },
          },
        },
      },
      async (req, reply) => {
        requireClusterAdmin(req);
        const b = req.body as { name: string; password: string; role: Role; svms?: string[] };
        const svms = await svmUuids(b.role, b.svms);
        const who = actor(req);
        let row!: UserRow;
        await s.store.db.transaction().execute(async (tx) => {
          row = await s.auth.createUser({ name: b.name, password: b.password, role: b.role, svms }, tx);
          await s.audit.recordIn(tx, { ...who, action: 'user.create', outcome: 'success', objectType: 'user', objectId: row.id, detail: { name: b.name, role: b.role, svms } });
        });
        reply.status(201);
        return userView(row);
      },
    );

    app.get('/api/v1/auth/users', { schema: { tags: ['auth'], summary: 'Lists local users.' } }, async (req) => {
      requireClusterAdmin(req);
      const records = (await s.repos.principals.listUsers()).map(userView);
      return { records, num_records: records.length };
    });

    app.delete('/api/v1/auth/users/:id', { schema: { tags: ['auth'], summary: 'Removes a local user.' } }, async (req) => {
      requireClusterAdmin(req);
      const id = (req.params as { id: string }).id;
      const who = actor(req);
      let row!: UserRow;
      await s.store.db.transaction().execute(async (tx) => {
        row = await s.auth.removeUser(id, tx);
        await s.audit.recordIn(tx, { ...who, action: 'user.delete', outcome: 'success', objectType: 'user', objectId: id });
      });
      s.auth.settled({ userId: id });
      return userView(row);
    });

    app.get('/api/v1/auth/whoami', { schema: { tags: ['auth'], summary: 'The calling principal.' } }, async (req) => {
      const p = req.principal!;
      return { id: p.id, kind: p.kind, name: p.name, role: p.role, svms: p.svms };
    });
  };
}
