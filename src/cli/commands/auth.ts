/** `keysmith token` and `keysmith user`: API tokens and local users (/api/v1/auth/*). */
import type { Command } from 'commander';
import type { Client } from '../client.js';
import { act, clientCommand, collect, intFlag } from '../command.js';
import { checkNoSecretFlags, readSecrets, refuseSecretFlags } from '../input.js';

const ROLES = 'cluster-admin, svm-admin, readonly or application';

interface TokenRecord {
  id: string;
  name: string;
  role: string;
  svms: string[];
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
  created_by: string | null;
  token?: string;
}

interface UserRecord {
  id: string;
  name: string;
  role: string;
  svms: string[];
  created_at: string;
}

/** SVM uuid → name, for tables; uuids stay as they are when the names cannot be read. */
async function svmNames(client: Client): Promise<(uuids: string[]) => string[]> {
  const names = new Map<string, string>();
  try {
    const r = await client.request<{ records: { uuid: string; name: string }[] }>('GET', '/api/svm/svms');
    for (const s of r.records) names.set(s.uuid, s.name);
  } catch {
    /* the table just shows uuids */
  }
  return (uuids) => uuids.map((u) => names.get(u) ?? u);
}

const grantOptions = (cmd: Command) =>
  cmd
    .requiredOption('--name <name>', 'name')
    .requiredOption('--role <role>', ROLES)
    .option('--svm <svm>', 'an SVM (name or uuid) the role is bound to; repeat for several', collect);

export function registerAuth(program: Command): void {
  const token = program.command('token').description('manage API tokens');

  grantOptions(clientCommand(token, 'create', 'create an API token (its secret is printed this once)'))
    .option('--expires-in <seconds>', 'lifetime in seconds (60 .. 315360000); default: no expiry')
    .action(
      act(async ({ client, out }, opts) => {
        const body: Record<string, unknown> = { name: opts.name, role: opts.role };
        if (opts.svm) body.svms = opts.svm;
        const expires = intFlag(opts.expiresIn, '--expires-in');
        if (expires !== undefined) body.expires_in = expires;
        const t = await client.request<TokenRecord>('POST', '/api/v1/auth/tokens', { body });
        if (out.json) return out.data(t);
        const names = await svmNames(client);
        out.fields([
          ['id', t.id],
          ['name', t.name],
          ['role', t.role],
          ['svms', names(t.svms)],
          ['expires', t.expires_at ?? 'never'],
          ['token', t.token],
        ]);
        out.note('keysmith: the token is shown this once: store it now');
      }),
    );

  clientCommand(token, 'list', 'list API tokens (never their secrets)').action(
    act(async ({ client, out }) => {
      const r = await client.request<{ records: TokenRecord[] }>('GET', '/api/v1/auth/tokens');
      if (out.json) return out.data(r.records);
      const names = await svmNames(client);
      const status = (t: TokenRecord) => (t.revoked_at ? 'revoked' : t.expires_at && Date.parse(t.expires_at) <= Date.now() ? 'expired' : 'valid');
      out.table(r.records, [
        ['ID', (t) => t.id],
        ['NAME', (t) => t.name],
        ['ROLE', (t) => t.role],
        ['SVMS', (t) => names(t.svms)],
        ['STATUS', status],
        ['CREATED', (t) => t.created_at],
        ['EXPIRES', (t) => t.expires_at],
      ]);
    }),
  );

  clientCommand(token, 'revoke <id>', 'revoke an API token').action(
    act(async ({ client, out }, _opts, id) => {
      const t = await client.request<TokenRecord>('DELETE', `/api/v1/auth/tokens/${encodeURIComponent(id)}`);
      if (out.json) return out.data(t);
      out.line(`revoked token ${t.id} (${t.name})`);
    }),
  );

  const user = program.command('user').description('manage local users (HTTP Basic sign-in)');

  refuseSecretFlags(grantOptions(clientCommand(user, 'create', 'create a local user')), ['password'])
    .option('--password-stdin', 'read the password from stdin (else KEYSMITH_PASSWORD)')
    .action(
      act(async (ctx, opts) => {
        checkNoSecretFlags(opts, ['password'], 'Use --password-stdin, or set KEYSMITH_PASSWORD.');
        const [password] = await readSecrets({ stdinFlag: '--password-stdin', envNames: ['KEYSMITH_PASSWORD'], labels: ['password'] }, !!opts.passwordStdin, ctx.env);
        const body: Record<string, unknown> = { name: opts.name, role: opts.role, password };
        if (opts.svm) body.svms = opts.svm;
        const u = await ctx.client.request<UserRecord>('POST', '/api/v1/auth/users', { body });
        if (ctx.out.json) return ctx.out.data(u);
        const names = await svmNames(ctx.client);
        ctx.out.fields([
          ['id', u.id],
          ['name', u.name],
          ['role', u.role],
          ['svms', names(u.svms)],
        ]);
      }),
    );

  clientCommand(user, 'list', 'list local users').action(
    act(async ({ client, out }) => {
      const r = await client.request<{ records: UserRecord[] }>('GET', '/api/v1/auth/users');
      if (out.json) return out.data(r.records);
      const names = await svmNames(client);
      out.table(r.records, [
        ['ID', (u) => u.id],
        ['NAME', (u) => u.name],
        ['ROLE', (u) => u.role],
        ['SVMS', (u) => names(u.svms)],
        ['CREATED', (u) => u.created_at],
      ]);
    }),
  );

  clientCommand(user, 'delete <id>', 'remove a local user').action(
    act(async ({ client, out }, _opts, id) => {
      const u = await client.request<UserRecord>('DELETE', `/api/v1/auth/users/${encodeURIComponent(id)}`);
      if (out.json) return out.data(u);
      out.line(`deleted user ${u.name} (${u.id})`);
    }),
  );
}
