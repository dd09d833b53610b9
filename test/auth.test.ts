/**
 * Authentication over real HTTP on both stores: API tokens (secret shown once, stored as SHA-256,
 * revocation and expiry), local users (argon2id, HTTP Basic, back-off), validation of grants, whoami.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { STORES, noteSecret, startWithOkm, type TestServer } from './helpers.js';

const sha256hex = (s: string) => createHash('sha256').update(s).digest('hex');
const basic = (name: string, password: string) => ({ authorization: `Basic ${Buffer.from(`${name}:${password}`).toString('base64')}` });
const password = () => {
  const p = `pw-${randomBytes(12).toString('base64url')}`;
  noteSecret(p);
  return p;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function expectError(res: { status: number; body: any }, status: number, code: string) {
  const where = JSON.stringify(res.body);
  expect(res.status, where).toBe(status);
  expect(Object.keys(res.body ?? {}), where).toEqual(['error']);
  expect(res.body.error.code, where).toBe(code);
  expect(typeof res.body.error.message, where).toBe('string');
}

describe.each(STORES)('auth on %s', (store) => {
  let s: TestServer;
  let A: { uuid: string; name: string };
  const db = () => s.app.services.store.db as any;
  const countTokens = async () => (await db().selectFrom('tokens').selectAll().execute()).length;
  const countUsers = async () => (await db().selectFrom('users').selectAll().execute()).length;
  async function newToken(body: Record<string, unknown>) {
    const r = await s.call('POST', '/api/v1/auth/tokens', body);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    noteSecret(r.body.token);
    return r.body as { id: string; token: string; expires_at: string | null; revoked_at: string | null; role: string; svms: string[] };
  }

  beforeAll(async () => {
    s = await startWithOkm({ store });
    const r = await s.call('POST', '/api/svm/svms', { name: 'authsvm' });
    expect(r.status).toBe(201);
    A = { uuid: r.headers.get('location')!.split('/').pop()!, name: 'authsvm' };
  });
  afterAll(() => s?.close());

  describe('tokens', () => {
    it('creates a token whose secret is shown once and starts with ks_', async () => {
      const t = await newToken({ name: 'ci', role: 'readonly', svms: [A.name] });
      expect(t.token).toMatch(/^ks_[A-Za-z0-9_-]{40,}$/);
      expect(t.role).toBe('readonly');
      expect(t.svms).toEqual([A.uuid]); // names resolve to uuids
      expect(t.expires_at).toBeNull();
      expect(t.revoked_at).toBeNull();
      expect(JSON.stringify(t)).not.toContain(sha256hex(t.token));
      expect(Object.keys(t)).not.toContain('hash');
      const me = await s.call('GET', '/api/v1/auth/whoami', undefined, t.token);
      expect(me.status).toBe(200);
      expect(me.body).toEqual({ id: t.id, kind: 'token', name: 'ci', role: 'readonly', svms: [A.uuid] });
      // Two tokens never share a secret.
      const t2 = await newToken({ name: 'ci', role: 'readonly' });
      expect(t2.token).not.toBe(t.token);
      expect(t2.id).not.toBe(t.id);
    });

    it('lists tokens without their secrets or hashes, and the store keeps only the SHA-256', async () => {
      const t = await newToken({ name: 'listed', role: 'application', svms: [A.uuid] });
      const list = await s.call('GET', '/api/v1/auth/tokens');
      expect(list.status).toBe(200);
      const text = JSON.stringify(list.body);
      const rec = list.body.records.find((r: any) => r.id === t.id);
      expect(rec).toMatchObject({ id: t.id, name: 'listed', role: 'application', svms: [A.uuid], revoked_at: null });
      expect(list.body.num_records).toBe(list.body.records.length);
      for (const secret of [t.token, s.token]) {
        expect(text).not.toContain(secret);
        expect(text).not.toContain(sha256hex(secret));
      }
      for (const r of list.body.records) {
        expect(r).not.toHaveProperty('hash');
        expect(r).not.toHaveProperty('token');
        expect(r).not.toHaveProperty('secret');
      }
      const rows = await db().selectFrom('tokens').selectAll().where('id', '=', t.id).execute();
      expect(rows).toHaveLength(1);
      expect(rows[0].hash).toBe(sha256hex(t.token));
      expect(JSON.stringify(rows)).not.toContain(t.token);
      const all = JSON.stringify(await db().selectFrom('tokens').selectAll().execute());
      expect(all).not.toContain(s.token);
      expect(all).toContain(sha256hex(s.token));
    });

    it('revocation takes effect at once, even for a token just used (cached)', async () => {
      const t = await newToken({ name: 'soon-revoked', role: 'cluster-admin' });
      expect((await s.call('GET', '/api/svm/svms', undefined, t.token)).status).toBe(200);
      const del = await s.call('DELETE', `/api/v1/auth/tokens/${t.id}`);
      expect(del.status).toBe(200);
      expect(del.body.id).toBe(t.id);
      expect(typeof del.body.revoked_at).toBe('string');
      expect(JSON.stringify(del.body)).not.toContain(t.token);
      expect(JSON.stringify(del.body)).not.toContain(sha256hex(t.token));
      const r = await s.call('GET', '/api/svm/svms', undefined, t.token);
      expectError(r, 401, '12');
      expect(r.headers.get('www-authenticate')).toMatch(/Bearer/);
      expectError(await s.call('POST', `/api/v1/svms/${A.uuid}/keys`, {}, t.token), 401, '12');
      const list = await s.call('GET', '/api/v1/auth/tokens');
      expect(list.body.records.find((x: any) => x.id === t.id).revoked_at).toEqual(expect.any(String));
      const row = await db().selectFrom('tokens').selectAll().where('id', '=', t.id).executeTakeFirst();
      expect(row.revoked_at).toEqual(expect.any(String));
    });

    it('revoking a token that does not exist is a 404 and changes nothing', async () => {
      const n = await countTokens();
      expectError(await s.call('DELETE', '/api/v1/auth/tokens/tok_00000000000000000000000000'), 404, '4');
      expect(await countTokens()).toBe(n);
    });

    it('expires tokens: expires_in sets expires_at, and an expired token is refused with code 12', async () => {
      const before = Date.now();
      const t = await newToken({ name: 'short', role: 'readonly', expires_in: 60 });
      const at = Date.parse(t.expires_at!);
      expect(at).toBeGreaterThanOrEqual(before + 59_000);
      expect(at).toBeLessThanOrEqual(Date.now() + 61_000);
      // A token not yet expired works (checked on a second token, so this one is never cached).
      const live = await newToken({ name: 'live', role: 'readonly', expires_in: 3600 });
      expect((await s.call('GET', '/api/v1/auth/whoami', undefined, live.token)).status).toBe(200);
      await db().updateTable('tokens').set({ expires_at: new Date(Date.now() - 1000).toISOString() }).where('id', '=', t.id).execute();
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, t.token), 401, '12');
      expectError(await s.call('GET', '/api/security/key-managers', undefined, t.token), 401, '12');
    });

    it('refuses missing, garbage and malformed credentials with code 10', async () => {
      const variants: (Record<string, string> | null)[] = [
        null,
        { authorization: 'Bearer' },
        { authorization: 'Bearer    ' },
        { authorization: `Bearer ks_${randomBytes(32).toString('base64url')}` },
        { authorization: `Bearer ${sha256hex(s.token)}` }, // the stored hash is not a credential
        { authorization: `Token ${s.token}` },
        { authorization: s.token },
        { authorization: `Basic ${Buffer.from('no-colon-here').toString('base64')}` },
        { authorization: 'Basic' },
      ];
      for (const h of variants) {
        const r = h === null ? await s.call('GET', '/api/v1/auth/whoami', undefined, null) : await s.call('GET', '/api/v1/auth/whoami', undefined, null, h);
        expectError(r, 401, '10');
        expect(r.headers.get('www-authenticate')).toMatch(/Basic/);
      }
    });

    it('accepts the bearer scheme case-insensitively', async () => {
      const r = await s.call('GET', '/api/v1/auth/whoami', undefined, null, { authorization: `bearer ${s.token}` });
      expect(r.status).toBe(200);
      expect(r.body.role).toBe('cluster-admin');
    });
  });

  describe('users', () => {
    it('stores passwords as argon2id hashes and never shows them', async () => {
      const pw = password();
      const r = await s.call('POST', '/api/v1/auth/users', { name: 'alice', password: pw, role: 'svm-admin', svms: [A.name] });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      expect(r.body).toMatchObject({ name: 'alice', role: 'svm-admin', svms: [A.uuid] });
      expect(JSON.stringify(r.body)).not.toContain(pw);
      expect(r.body).not.toHaveProperty('password_hash');
      expect(r.body).not.toHaveProperty('password');
      const row = await db().selectFrom('users').selectAll().where('name', '=', 'alice').executeTakeFirst();
      expect(row.password_hash).toMatch(/^\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$/);
      expect(JSON.stringify(row)).not.toContain(pw);
      const list = await s.call('GET', '/api/v1/auth/users');
      expect(list.status).toBe(200);
      expect(list.body.records.map((u: any) => u.name)).toContain('alice');
      expect(JSON.stringify(list.body)).not.toContain('$argon2');
      expect(JSON.stringify(list.body)).not.toContain(pw);

      // Basic works on the data plane and on ONTAP routes, within the user's SVM.
      const me = await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('alice', pw));
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ id: r.body.id, kind: 'user', name: 'alice', role: 'svm-admin', svms: [A.uuid] });
      const dk = await s.call('POST', `/api/v1/svms/${A.name}/data-keys`, {}, null, basic('alice', pw));
      expect(dk.status, JSON.stringify(dk.body)).toBe(201);
      noteSecret(dk.body.plaintext);
      const un = await s.call('POST', `/api/v1/svms/${A.uuid}/unwrap`, { wrapped: dk.body.wrapped }, null, basic('alice', pw));
      expect(un.status).toBe(200);
      expect(un.body.plaintext).toBe(dk.body.plaintext);
      const svms = await s.call('GET', '/api/svm/svms', undefined, null, basic('alice', pw));
      expect(svms.status).toBe(200);
      expect(svms.body.records.map((x: any) => x.name)).toEqual([A.name]);
      const kms = await s.call('GET', '/api/security/key-managers', undefined, null, basic('alice', pw));
      expect(kms.status).toBe(200);
      expect(kms.body.records).toEqual([]); // the cluster's key manager is not hers to see
      // ...and her role still binds her: cluster-level operations are refused.
      expectError(await s.call('POST', '/api/svm/svms', { name: 'alices' }, null, basic('alice', pw)), 403, '6');
      expectError(await s.call('GET', '/api/v1/svms/cluster1/keys', undefined, null, basic('alice', pw)), 404, '4');
    });

    it('refuses a wrong password and an unknown user alike', async () => {
      const pw = `a:b:${randomBytes(12).toString('hex')}`; // a colon in a password is not a separator
      noteSecret(pw);
      expect((await s.call('POST', '/api/v1/auth/users', { name: 'bob', password: pw, role: 'readonly' })).status).toBe(201);
      const wrong = await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('bob', `${pw}x`));
      expectError(wrong, 401, '10');
      const unknown = await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('nobody-such', pw));
      expectError(unknown, 401, '10');
      expect(unknown.body.error.message).toBe(wrong.body.error.message);
      expect(unknown.headers.get('www-authenticate')).toBe(wrong.headers.get('www-authenticate'));
      // The right password works.
      expect((await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('bob', pw))).status).toBe(200);
      // A token secret is not a password, and a password is not a bearer token.
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('bob', s.token)), 401, '10');
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, pw), 401, '10');
    });

    it('backs off after repeated failures: even the right password gets 429 code 11 for a while', async () => {
      const pw = password();
      expect((await s.call('POST', '/api/v1/auth/users', { name: 'carol', password: pw, role: 'readonly' })).status).toBe(201);
      for (let i = 0; i < 5; i++) expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('carol', `wrong-${i}-${pw}`)), 401, '10');
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('carol', pw)), 429, '11');
      expectError(await s.call('GET', '/api/svm/svms', undefined, null, basic('carol', pw)), 429, '11');
      // Another user is not affected.
      const dpw = password();
      expect((await s.call('POST', '/api/v1/auth/users', { name: 'dave', password: dpw, role: 'readonly' })).status).toBe(201);
      expect((await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('dave', dpw))).status).toBe(200);
      // The lock ends; one more failure locks it again, for longer.
      await sleep(1100);
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('carol', `wrong-again-${pw}`)), 401, '10');
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('carol', pw)), 429, '11');
      await sleep(300); // well inside the 2 s lock, even on a loaded machine
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('carol', pw)), 429, '11');
      await sleep(1800);
      const ok = await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('carol', pw));
      expect(ok.status, JSON.stringify(ok.body)).toBe(200);
      expect(ok.body.name).toBe('carol');
    });

    it('an unknown name locks out like a known one, and guesses sent at once all count', async () => {
      // Six guesses in one burst, for a name that does not exist: each is counted although all are in flight together.
      const guesses = Array.from({ length: 7 }, () => password());
      const burst = await Promise.all(guesses.slice(0, 6).map((g) => s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('ghost', g))));
      for (const r of burst) expect([401, 429]).toContain(r.status);
      expectError(burst[0], 401, '10');
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('ghost', guesses[6])), 429, '11');
    });

    it('a removed user can no longer sign in, at once', async () => {
      const pw = password();
      const r = await s.call('POST', '/api/v1/auth/users', { name: 'erin', password: pw, role: 'readonly' });
      expect((await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('erin', pw))).status).toBe(200);
      const del = await s.call('DELETE', `/api/v1/auth/users/${r.body.id}`);
      expect(del.status).toBe(200);
      expect(JSON.stringify(del.body)).not.toContain('$argon2');
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('erin', pw)), 401, '10');
      expectError(await s.call('DELETE', `/api/v1/auth/users/${r.body.id}`), 404, '4');
    });

    it('refuses a duplicate name (409 code 1) and a short password (code 2)', async () => {
      const pw = password();
      expect((await s.call('POST', '/api/v1/auth/users', { name: 'frank', password: pw, role: 'readonly' })).status).toBe(201);
      const n = await countUsers();
      expectError(await s.call('POST', '/api/v1/auth/users', { name: 'frank', password: password(), role: 'readonly' }), 409, '1');
      expectError(await s.call('POST', '/api/v1/auth/users', { name: 'grace', password: 'short', role: 'readonly' }), 400, '2');
      expectError(await s.call('POST', '/api/v1/auth/users', { name: 'bad name!', password: password(), role: 'readonly' }), 400, '2');
      expect(await countUsers()).toBe(n);
    });
    it('drops a principal checked between a removal and its commit once the removal has committed (settled)', async () => {
      const pw = password();
      const u = await s.call('POST', '/api/v1/auth/users', { name: 'window-user', password: pw, role: 'readonly', svms: [A.name] });
      expect(u.status, JSON.stringify(u.body)).toBe(201);
      const auth = s.app.services.auth;
      const before = auth.revision();
      expect((await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('window-user', pw))).status).toBe(200);
      // The row goes as a removal's commit would, while this node still holds the principal it
      // verified in between: it keeps answering from that memory until the removal is settled.
      await db().deleteFrom('users').where('id', '=', u.body.id).execute();
      expect((await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('window-user', pw))).status).toBe(200);
      auth.settled({ userId: u.body.id });
      expect(auth.revision()).toBeGreaterThan(before);
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null, basic('window-user', pw)), 401, '10');
    });
  });

  describe('grant validation', () => {
    it('refuses bad roles and SVM bindings, and changes nothing', async () => {
      const nt = await countTokens();
      const nu = await countUsers();
      const pw = password();
      for (const path of ['/api/v1/auth/tokens', '/api/v1/auth/users']) {
        const base = path.endsWith('users') ? { name: 'val', password: pw } : { name: 'val' };
        expectError(await s.call('POST', path, { ...base, role: 'root' }), 400, '2');
        expectError(await s.call('POST', path, { ...base, role: 'Cluster-Admin' }), 400, '2');
        expectError(await s.call('POST', path, { ...base }), 400, '2');
        expectError(await s.call('POST', path, { ...base, role: 'svm-admin' }), 400, '2');
        expectError(await s.call('POST', path, { ...base, role: 'svm-admin', svms: [] }), 400, '2');
        expectError(await s.call('POST', path, { ...base, role: 'application' }), 400, '2');
        expectError(await s.call('POST', path, { ...base, role: 'svm-admin', svms: ['no-such-svm'] }), 400, '262197');
        expectError(await s.call('POST', path, { ...base, role: 'readonly', svms: [A.name, 'no-such-svm'] }), 400, '262197');
        expectError(await s.call('POST', path, { ...base, role: 'cluster-admin', svms: [A.name] }), 400, '262197');
        expectError(await s.call('POST', path, { ...base, role: 'readonly', svms: 'authsvm' }), 400, '2');
        expectError(await s.call('POST', path, { ...base, role: 'readonly', admin: true }), 400, '262179');
      }
      expectError(await s.call('POST', '/api/v1/auth/tokens', { name: '', role: 'readonly' }), 400, '2');
      expectError(await s.call('POST', '/api/v1/auth/tokens', { name: 'x', role: 'readonly', expires_in: 59 }), 400, '2');
      expectError(await s.call('POST', '/api/v1/auth/tokens', { name: 'x', role: 'readonly', expires_in: '3600' }), 400, '2');
      expectError(await s.call('POST', '/api/v1/auth/tokens', { name: 'x', role: 'readonly', expires_in: 1.5e2 + 0.5 }), 400, '2');
      expect(await countTokens()).toBe(nt);
      expect(await countUsers()).toBe(nu);
    });

    it('binds by name or uuid, and readonly may be cluster-wide', async () => {
      const t = await newToken({ name: 'both', role: 'svm-admin', svms: [A.name, A.uuid] });
      expect(t.svms).toEqual([A.uuid]);
      const ro = await newToken({ name: 'ro-all', role: 'readonly' });
      expect(ro.svms).toEqual([]);
      const me = await s.call('GET', '/api/v1/auth/whoami', undefined, ro.token);
      expect(me.body).toMatchObject({ role: 'readonly', svms: [] });
    });
  });

  describe('whoami', () => {
    it('answers for every kind of principal and refuses anonymous callers', async () => {
      const me = await s.call('GET', '/api/v1/auth/whoami');
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ kind: 'token', role: 'cluster-admin', svms: [] });
      expect(me.body.id).toMatch(/^tok_/);
      expect(Object.keys(me.body).sort()).toEqual(['id', 'kind', 'name', 'role', 'svms']);
      const app = await newToken({ name: 'app', role: 'application', svms: [A.uuid] });
      expect((await s.call('GET', '/api/v1/auth/whoami', undefined, app.token)).body).toEqual({ id: app.id, kind: 'token', name: 'app', role: 'application', svms: [A.uuid] });
      expectError(await s.call('GET', '/api/v1/auth/whoami', undefined, null), 401, '10');
    });
  });
});
