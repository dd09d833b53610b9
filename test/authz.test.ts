/**
 * The one authorization matrix: every documented route × every kind of caller, over real HTTP.
 *
 * Each row names a route (method + OpenAPI path template), builds its path and body, says which
 * tenant it touches, and gives the expected answer for each principal. The routes are read from the
 * served OpenAPI document, so a route without a row here fails the test.
 *
 * Rules checked on every call:
 * - another tenant's object → 404 code "4"; a visible object with the wrong role → 403 code "6";
 *   no or garbage credentials → 401 code "10"; a revoked or expired token → 401 code "12";
 * - every refusal is an ONTAP error body {error:{code,message}} and changes nothing in the store
 *   (and never seals the node).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { PASSPHRASE, STORES, noteSecret, startWithOkm, type TestServer } from './helpers.js';
import { makePki, type Pki } from './kmip/pki.js';

type Role5 = 'admin' | 'svmAdminA' | 'readonlyAll' | 'readonlyA' | 'appA';
type Unauth = 'none' | 'garbage' | 'revoked' | 'expired';
type Who = Role5 | Unauth;
const ROLES5: Role5[] = ['admin', 'svmAdminA', 'readonlyAll', 'readonlyA', 'appA'];
const UNAUTH: Record<Unauth, { status: number; code: string }> = {
  none: { status: 401, code: '10' },
  garbage: { status: 401, code: '10' },
  revoked: { status: 401, code: '12' },
  expired: { status: 401, code: '12' },
};

/**
 * 'ok' is any 2xx; a number is the exact status (403/404 are refusals, others are business answers
 * after authorization passed); 'skip' where the call would destroy the fixture (the admin revoking itself).
 */
type Expect = 'ok' | 'skip' | number;
const REFUSAL_CODE: Record<number, string> = { 403: '6', 404: '4', 401: '10' };

interface Ctx {
  s: TestServer;
  tokens: Record<Role5 | 'revoked' | 'expired' | 'garbage', string>;
  ids: Record<Role5, string>;
  A: { uuid: string; name: string };
  B: { uuid: string; name: string };
  cluster: { uuid: string; name: string };
  km: { A: string; B: string; cluster: string };
  key: { A: string; B: string; cluster: string };
  wrapped: { A: string; B: string };
  backup: string;
  /** A user the refused callers try to delete (only the admin's call needs a fresh one each time). */
  victimUser?: string;
  /** A finished rekey-internal job per tenant, made on first use by the job rows. */
  jobs?: Partial<Record<'A' | 'B' | 'cluster', string>>;
  /** An installed certificate per tenant, made on first use by the certificate rows. */
  certs?: Partial<Record<'A' | 'B', string>>;
}

interface Row {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  /** OpenAPI path template, e.g. /api/v1/svms/{svm}/keys/{id}. */
  route: string;
  /** What the row touches, for the test's name. */
  what: string;
  /** Builds the concrete path (with query) and body; may create fresh objects (as admin) that the call consumes. */
  build: (c: Ctx, who: Who) => Promise<{ path: string; body?: unknown }> | { path: string; body?: unknown };
  expect: Record<Role5, Expect>;
  /** Checks a successful answer for one principal. */
  check?: (c: Ctx, who: Role5, body: any) => void | Promise<void>;
  /** Runs after a successful call (e.g. unseal after seal). */
  after?: (c: Ctx) => Promise<void>;
  /** Element JSON-RPC: refusals are Element error bodies (403 → HTTP 200 xPermissionDenied; 401 → HTTP 401 xUnauthorized). */
  element?: boolean;
}

/** Expected answers in the order admin, svm-admin of A, readonly (cluster-wide), readonly of A, application of A. */
const E = (admin: Expect, svmAdminA: Expect, readonlyAll: Expect, readonlyA: Expect, appA: Expect): Record<Role5, Expect> => ({ admin, svmAdminA, readonlyAll, readonlyA, appA });
const ADMIN_ONLY = E('ok', 403, 403, 403, 403);

const KM_PASSPHRASE = PASSPHRASE; // one passphrase for every key manager so a single unseal opens them all

async function admin(c: Ctx, method: string, path: string, body?: unknown) {
  const r = await c.s.call(method, path, body);
  if (r.status >= 300) throw new Error(`setup ${method} ${path} failed: ${r.status} ${JSON.stringify(r.body)}`);
  return r;
}
async function freshSvm(c: Ctx): Promise<string> {
  const r = await admin(c, 'POST', '/api/svm/svms', { name: `f${randomBytes(5).toString('hex')}` });
  return r.headers.get('location')!.split('/').pop()!;
}
async function freshKey(c: Ctx, svm: string): Promise<string> {
  return (await admin(c, 'POST', `/api/v1/svms/${svm}/keys`, { state: 'pre-active' })).body.id;
}
async function freshKeyManager(c: Ctx): Promise<string> {
  const svm = await freshSvm(c);
  await admin(c, 'POST', '/api/security/key-managers', { svm: { uuid: svm }, onboard: { passphrase: KM_PASSPHRASE } });
  const list = await admin(c, 'GET', `/api/security/key-managers?svm.uuid=${svm}`);
  return list.body.records[0].uuid;
}
const kmUuids = (body: any) => body.records.map((r: any) => r.uuid).sort();
/** rekey-internal that waits for its job, so no job is left running under the next call. */
const REKEY = (km: string) => `/api/security/key-managers/${km}/rekey-internal?return_timeout=120&return_records=true`;
/** Rekeys a tenant's key manager once (as admin) and returns the job's uuid. */
async function jobOf(c: Ctx, t: 'A' | 'B' | 'cluster'): Promise<string> {
  c.jobs ??= {};
  c.jobs[t] ??= (await admin(c, 'POST', REKEY(c.km[t]))).body.records[0].uuid as string;
  return c.jobs[t]!;
}

/** The asyncHandle of the last master-key rekey an authorized caller started. */
let lastMasterRekey: number | undefined;
async function masterRekeyEnd(c: Ctx, handle: number): Promise<void> {
  for (const end = Date.now() + 30_000; ; ) {
    const r = await admin(c, 'POST', '/json-rpc/12.5', { method: 'GetAsyncResult', params: { asyncHandle: handle, keepResult: true }, id: 1 });
    if (r.body.result?.status === 'complete') return;
    if (Date.now() > end) throw new Error(`master-key rekey ${handle} did not end: ${JSON.stringify(r.body)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

function table(): Row[] {
  return [
    // ---- system
    {
      method: 'GET',
      route: '/api/cluster',
      what: 'cluster identity',
      build: () => ({ path: '/api/cluster' }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
    },
    { method: 'GET', route: '/api/v1/sys/status', what: 'seal state of the nodes', build: () => ({ path: '/api/v1/sys/status' }), expect: E('ok', 403, 'ok', 403, 403) },
    { method: 'POST', route: '/api/v1/sys/unseal', what: 'unseal', build: () => ({ path: '/api/v1/sys/unseal', body: { passphrase: KM_PASSPHRASE } }), expect: ADMIN_ONLY },
    {
      method: 'POST',
      route: '/api/v1/sys/seal',
      what: 'seal',
      build: () => ({ path: '/api/v1/sys/seal' }),
      expect: ADMIN_ONLY,
      after: async (c) => {
        expect((await c.s.call('GET', '/api/health', undefined, null)).body.sealed).toBe(true);
        await admin(c, 'POST', '/api/v1/sys/unseal', { passphrase: KM_PASSPHRASE });
        expect((await c.s.call('GET', '/api/health', undefined, null)).body.sealed).toBe(false);
      },
    },

    // ---- SVMs
    {
      method: 'GET',
      route: '/api/svm/svms',
      what: 'list',
      build: () => ({ path: '/api/svm/svms' }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, who, body) => {
        const names: string[] = body.records.map((r: any) => r.name);
        if (who === 'svmAdminA' || who === 'readonlyA') expect(names).toEqual([c.A.name]);
        else expect(names).toEqual(expect.arrayContaining([c.A.name, c.B.name]));
      },
    },
    { method: 'GET', route: '/api/svm/svms/{uuid}', what: 'SVM A', build: (c) => ({ path: `/api/svm/svms/${c.A.uuid}` }), expect: E('ok', 'ok', 'ok', 'ok', 403) },
    { method: 'GET', route: '/api/svm/svms/{uuid}', what: 'SVM B', build: (c) => ({ path: `/api/svm/svms/${c.B.uuid}` }), expect: E('ok', 404, 'ok', 404, 404) },
    { method: 'POST', route: '/api/svm/svms', what: 'a new SVM', build: () => ({ path: '/api/svm/svms', body: { name: `n${randomBytes(5).toString('hex')}` } }), expect: ADMIN_ONLY },
    // Deleting A or B: authorization passes for the admin, then the SVM's keys refuse it (409).
    { method: 'DELETE', route: '/api/svm/svms/{uuid}', what: 'SVM A', build: (c) => ({ path: `/api/svm/svms/${c.A.uuid}` }), expect: E(409, 403, 403, 403, 403) },
    { method: 'DELETE', route: '/api/svm/svms/{uuid}', what: 'SVM B', build: (c) => ({ path: `/api/svm/svms/${c.B.uuid}` }), expect: E(409, 404, 403, 404, 404) },
    { method: 'DELETE', route: '/api/svm/svms/{uuid}', what: 'a fresh empty SVM', build: async (c) => ({ path: `/api/svm/svms/${await freshSvm(c)}` }), expect: E('ok', 404, 403, 404, 404) },

    // ---- key managers
    {
      method: 'GET',
      route: '/api/security/key-managers',
      what: 'list',
      build: () => ({ path: '/api/security/key-managers' }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, who, body) => {
        const mine = who === 'svmAdminA' || who === 'readonlyA';
        if (mine) expect(kmUuids(body)).toEqual([c.km.A]);
        else expect(kmUuids(body)).toEqual(expect.arrayContaining([c.km.A, c.km.B, c.km.cluster]));
      },
    },
    {
      method: 'GET',
      route: '/api/security/key-managers',
      what: 'list with key backups (needs manage)',
      build: () => ({ path: '/api/security/key-managers?fields=onboard.key_backup' }),
      expect: E('ok', 'ok', 403, 403, 403),
      check: (c, who, body) => {
        if (who === 'svmAdminA') expect(kmUuids(body)).toEqual([c.km.A]);
        for (const r of body.records) expect(typeof r.onboard.key_backup).toBe('string');
      },
    },
    { method: 'GET', route: '/api/security/key-managers/{uuid}', what: "A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}` }), expect: E('ok', 'ok', 'ok', 'ok', 403) },
    { method: 'GET', route: '/api/security/key-managers/{uuid}', what: "B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.B}` }), expect: E('ok', 404, 'ok', 404, 404) },
    { method: 'GET', route: '/api/security/key-managers/{uuid}', what: "the cluster's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.cluster}` }), expect: E('ok', 404, 'ok', 404, 404) },
    {
      method: 'GET',
      route: '/api/security/key-managers/{uuid}',
      what: "A's key manager with its backup",
      build: (c) => ({ path: `/api/security/key-managers/${c.km.A}?fields=onboard.key_backup` }),
      expect: E('ok', 'ok', 403, 403, 403),
      check: (_c, _who, body) => expect(typeof body.onboard.key_backup).toBe('string'),
    },
    {
      method: 'GET',
      route: '/api/security/key-managers/{uuid}',
      what: "the cluster's key manager with its backup",
      build: (c) => ({ path: `/api/security/key-managers/${c.km.cluster}?fields=onboard.key_backup` }),
      expect: E('ok', 404, 403, 404, 404),
    },
    // Creating where one exists: past authorization the answer is 409 key_manager_exists.
    { method: 'POST', route: '/api/security/key-managers', what: 'for SVM A', build: (c) => ({ path: '/api/security/key-managers', body: { svm: { name: c.A.name }, onboard: { passphrase: KM_PASSPHRASE } } }), expect: E(409, 409, 403, 403, 403) },
    { method: 'POST', route: '/api/security/key-managers', what: 'for SVM B', build: (c) => ({ path: '/api/security/key-managers', body: { svm: { uuid: c.B.uuid }, onboard: { passphrase: KM_PASSPHRASE } } }), expect: E(409, 404, 403, 404, 404) },
    { method: 'POST', route: '/api/security/key-managers', what: 'for the cluster', build: () => ({ path: '/api/security/key-managers', body: { onboard: { passphrase: KM_PASSPHRASE } } }), expect: E(409, 403, 403, 403, 403) },
    {
      method: 'POST',
      route: '/api/security/key-managers',
      what: 'for a fresh SVM',
      build: async (c) => ({ path: '/api/security/key-managers', body: { svm: { uuid: await freshSvm(c) }, onboard: { passphrase: KM_PASSPHRASE } } }),
      expect: E('ok', 404, 403, 404, 404),
    },
    {
      method: 'PATCH',
      route: '/api/security/key-managers/{uuid}',
      what: "A's key manager (synchronize)",
      build: (c) => ({ path: `/api/security/key-managers/${c.km.A}`, body: { onboard: { synchronize: true, existing_passphrase: KM_PASSPHRASE } } }),
      expect: E('ok', 'ok', 403, 403, 403),
    },
    {
      method: 'PATCH',
      route: '/api/security/key-managers/{uuid}',
      what: "B's key manager (synchronize)",
      build: (c) => ({ path: `/api/security/key-managers/${c.km.B}`, body: { onboard: { synchronize: true, existing_passphrase: KM_PASSPHRASE } } }),
      expect: E('ok', 404, 403, 404, 404),
    },
    {
      method: 'PATCH',
      route: '/api/security/key-managers/{uuid}',
      what: "the cluster's key manager (synchronize)",
      build: (c) => ({ path: `/api/security/key-managers/${c.km.cluster}`, body: { onboard: { synchronize: true, existing_passphrase: KM_PASSPHRASE } } }),
      expect: E('ok', 404, 403, 404, 404),
    },
    // Deleting a key manager keys depend on: past authorization the answer is 409 key_manager_in_use.
    { method: 'DELETE', route: '/api/security/key-managers/{uuid}', what: "A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}` }), expect: E(409, 409, 403, 403, 403) },
    { method: 'DELETE', route: '/api/security/key-managers/{uuid}', what: "B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.B}` }), expect: E(409, 404, 403, 404, 404) },
    // Key servers of an external key manager: the fixture's key managers are onboard, so past authorization the answer is 400 (65536828).
    { method: 'GET', route: '/api/security/key-managers/{uuid}/key-servers', what: "A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}/key-servers` }), expect: E(400, 400, 400, 400, 403) },
    { method: 'GET', route: '/api/security/key-managers/{uuid}/key-servers', what: "B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.B}/key-servers` }), expect: E(400, 404, 400, 404, 404) },
    { method: 'GET', route: '/api/security/key-managers/{uuid}/key-servers/{server}', what: "A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}/key-servers/ks1.example:5696` }), expect: E(400, 400, 400, 400, 403) },
    { method: 'GET', route: '/api/security/key-managers/{uuid}/key-servers/{server}', what: "B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.B}/key-servers/ks1.example:5696` }), expect: E(400, 404, 400, 404, 404) },
    { method: 'POST', route: '/api/security/key-managers/{uuid}/key-servers', what: "A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}/key-servers`, body: { server: 'ks1.example:5696' } }), expect: E(400, 400, 403, 403, 403) },
    { method: 'POST', route: '/api/security/key-managers/{uuid}/key-servers', what: "B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.B}/key-servers`, body: { server: 'ks1.example:5696' } }), expect: E(400, 404, 403, 404, 404) },
    { method: 'POST', route: '/api/security/key-managers/{uuid}/key-servers', what: "the cluster's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.cluster}/key-servers`, body: { server: 'ks1.example:5696' } }), expect: E(400, 404, 403, 404, 404) },
    { method: 'PATCH', route: '/api/security/key-managers/{uuid}/key-servers/{server}', what: "A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}/key-servers/ks1.example:5696`, body: { timeout: 5 } }), expect: E(400, 400, 403, 403, 403) },
    { method: 'PATCH', route: '/api/security/key-managers/{uuid}/key-servers/{server}', what: "B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.B}/key-servers/ks1.example:5696`, body: { timeout: 5 } }), expect: E(400, 404, 403, 404, 404) },
    { method: 'DELETE', route: '/api/security/key-managers/{uuid}/key-servers/{server}', what: "A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}/key-servers/ks1.example:5696` }), expect: E(400, 400, 403, 403, 403) },
    { method: 'DELETE', route: '/api/security/key-managers/{uuid}/key-servers/{server}', what: "B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.B}/key-servers/ks1.example:5696` }), expect: E(400, 404, 403, 404, 404) },
    { method: 'DELETE', route: '/api/security/key-managers/{uuid}', what: "the cluster's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.cluster}` }), expect: E(409, 404, 403, 404, 404) },
    {
      method: 'DELETE',
      route: '/api/security/key-managers/{uuid}',
      what: "a fresh SVM's key manager",
      build: async (c) => ({ path: `/api/security/key-managers/${await freshKeyManager(c)}` }),
      expect: E('ok', 404, 403, 404, 404),
    },
    {
      method: 'POST',
      route: '/api/security/key-managers/onboard/verify-backup',
      what: "the cluster's backup",
      build: (c) => ({ path: '/api/security/key-managers/onboard/verify-backup', body: { key_backup: c.backup, passphrase: KM_PASSPHRASE } }),
      expect: ADMIN_ONLY,
    },
    // Restoring over a Keysmith that holds the key manager: past authorization the answer is 409 restore_not_empty.
    {
      method: 'POST',
      route: '/api/security/key-managers/onboard/restore',
      what: "the cluster's backup",
      build: (c) => ({ path: '/api/security/key-managers/onboard/restore', body: { key_backup: c.backup, passphrase: KM_PASSPHRASE } }),
      expect: E(409, 403, 403, 403, 403),
    },

    // ---- jobs
    {
      method: 'POST',
      route: '/api/security/key-managers/{uuid}/rekey-internal',
      what: "A's key manager",
      build: (c) => ({ path: REKEY(c.km.A) }),
      expect: E('ok', 'ok', 403, 403, 403),
      check: (c, _who, body) => {
        expect(body.records[0].state).toBe('success');
        expect(body.records[0].svm.uuid).toBe(c.A.uuid);
      },
    },
    { method: 'POST', route: '/api/security/key-managers/{uuid}/rekey-internal', what: "B's key manager", build: (c) => ({ path: REKEY(c.km.B) }), expect: E('ok', 404, 403, 404, 404) },
    { method: 'POST', route: '/api/security/key-managers/{uuid}/rekey-internal', what: "the cluster's key manager", build: (c) => ({ path: REKEY(c.km.cluster) }), expect: E('ok', 404, 403, 404, 404) },

    // ---- key stores and key migration
    {
      method: 'GET',
      route: '/api/security/key-stores',
      what: 'list',
      build: () => ({ path: '/api/security/key-stores?fields=svm,scope' }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, who, body) => {
        if (who === 'svmAdminA' || who === 'readonlyA') expect(kmUuids(body)).toEqual([c.km.A]);
        else expect(kmUuids(body)).toEqual(expect.arrayContaining([c.km.A, c.km.B, c.km.cluster].sort()));
      },
    },
    { method: 'GET', route: '/api/security/key-stores/{uuid}', what: "A's configuration", build: (c) => ({ path: `/api/security/key-stores/${c.km.A}` }), expect: E('ok', 'ok', 'ok', 'ok', 403) },
    { method: 'GET', route: '/api/security/key-stores/{uuid}', what: "B's configuration", build: (c) => ({ path: `/api/security/key-stores/${c.km.B}` }), expect: E('ok', 404, 'ok', 404, 404) },
    { method: 'GET', route: '/api/security/key-stores/{uuid}', what: "the cluster's configuration", build: (c) => ({ path: `/api/security/key-stores/${c.km.cluster}` }), expect: E('ok', 404, 'ok', 404, 404) },
    // Enabling the configuration that is already enabled and active: authorized callers get 200 and nothing changes.
    { method: 'PATCH', route: '/api/security/key-stores/{uuid}', what: "A's configuration", build: (c) => ({ path: `/api/security/key-stores/${c.km.A}`, body: { enabled: true } }), expect: E('ok', 'ok', 403, 403, 403) },
    { method: 'PATCH', route: '/api/security/key-stores/{uuid}', what: "B's configuration", build: (c) => ({ path: `/api/security/key-stores/${c.km.B}`, body: { enabled: true } }), expect: E('ok', 404, 403, 404, 404) },
    { method: 'PATCH', route: '/api/security/key-stores/{uuid}', what: "the cluster's configuration", build: (c) => ({ path: `/api/security/key-stores/${c.km.cluster}`, body: { enabled: true } }), expect: E('ok', 404, 403, 404, 404) },
    // From the cluster's key manager to A's: A's keys are already under its own, so authorized callers get 65600032.
    { method: 'POST', route: '/api/security/key-managers/{uuid}/migrate', what: "cluster → A's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.cluster}/migrate?return_timeout=30`, body: { uuid: c.km.A } }), expect: E(400, 404, 403, 404, 404) },
    // Between two data SVMs: authorized callers get 65600033.
    { method: 'POST', route: '/api/security/key-managers/{uuid}/migrate', what: "A's → B's key manager", build: (c) => ({ path: `/api/security/key-managers/${c.km.A}/migrate`, body: { uuid: c.km.B } }), expect: E(400, 404, 403, 403, 403) },
    {
      method: 'GET',
      route: '/api/cluster/jobs',
      what: 'list',
      build: async (c) => {
        for (const t of ['A', 'B', 'cluster'] as const) await jobOf(c, t);
        return { path: '/api/cluster/jobs?fields=svm,state' };
      },
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, who, body) => {
        const uuids: string[] = body.records.map((r: any) => r.uuid);
        if (who === 'svmAdminA' || who === 'readonlyA') {
          expect(uuids).toContain(c.jobs!.A);
          for (const r of body.records) expect(r.svm?.uuid).toBe(c.A.uuid);
        } else expect(uuids).toEqual(expect.arrayContaining([c.jobs!.A, c.jobs!.B, c.jobs!.cluster]));
      },
    },
    {
      method: 'GET',
      route: '/api/cluster/jobs/{uuid}',
      what: "A's job",
      build: async (c) => ({ path: `/api/cluster/jobs/${await jobOf(c, 'A')}` }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, _who, body) => {
        expect(body.uuid).toBe(c.jobs!.A);
        expect(body.state).toBe('success');
      },
    },
    { method: 'GET', route: '/api/cluster/jobs/{uuid}', what: "B's job", build: async (c) => ({ path: `/api/cluster/jobs/${await jobOf(c, 'B')}` }), expect: E('ok', 404, 'ok', 404, 403) },
    { method: 'GET', route: '/api/cluster/jobs/{uuid}', what: "the cluster's job", build: async (c) => ({ path: `/api/cluster/jobs/${await jobOf(c, 'cluster')}` }), expect: E('ok', 404, 'ok', 404, 403) },
    { method: 'GET', route: '/api/cluster/jobs/{uuid}', what: 'an unknown job', build: () => ({ path: '/api/cluster/jobs/00000000-0000-4000-8000-000000000000' }), expect: E(404, 404, 404, 404, 403) },

    {
      method: 'PATCH',
      route: '/api/cluster/jobs/{uuid}',
      what: "cancel A's finished job",
      build: async (c) => ({ path: `/api/cluster/jobs/${await jobOf(c, 'A')}?action=cancel` }),
      // Authorized callers reach the state check: the job has ended (ONTAP 458762).
      expect: E(400, 400, 403, 403, 403),
    },
    { method: 'PATCH', route: '/api/cluster/jobs/{uuid}', what: "pause B's job", build: async (c) => ({ path: `/api/cluster/jobs/${await jobOf(c, 'B')}?action=pause` }), expect: E(400, 404, 403, 404, 403) },
    { method: 'PATCH', route: '/api/cluster/jobs/{uuid}', what: "resume the cluster's job", build: async (c) => ({ path: `/api/cluster/jobs/${await jobOf(c, 'cluster')}?action=resume` }), expect: E(400, 404, 403, 404, 403) },

    // ---- Element JSON-RPC (reads need cluster-wide read; state changes need a cluster admin)
    ...(['12.5', '12.7'] as const).flatMap((v): Row[] => [
      { method: 'POST', route: `/json-rpc/${v}`, what: 'GetSoftwareEncryptionAtRestInfo', element: true, build: () => ({ path: `/json-rpc/${v}`, body: { method: 'GetSoftwareEncryptionAtRestInfo', id: 1 } }), expect: E('ok', 403, 'ok', 403, 403) },
      { method: 'POST', route: `/json-rpc/${v}`, what: 'ListAsyncResults', element: true, build: () => ({ path: `/json-rpc/${v}`, body: { method: 'ListAsyncResults', params: {}, id: 2 } }), expect: E('ok', 403, 'ok', 403, 403) },
      {
        method: 'POST',
        route: `/json-rpc/${v}`,
        what: 'RekeySoftwareEncryptionAtRestMasterKey',
        element: true,
        build: () => ({ path: `/json-rpc/${v}`, body: { method: 'RekeySoftwareEncryptionAtRestMasterKey', params: {}, id: 3 } }),
        expect: ADMIN_ONLY,
        check: (_c, _who, body) => {
          expect(Number.isInteger(body.result.asyncHandle)).toBe(true);
          lastMasterRekey = body.result.asyncHandle;
        },
        // The rekey must end before the next call, whose refusal is checked to change nothing.
        after: (c) => masterRekeyEnd(c, lastMasterRekey!),
      },
      {
        method: 'POST',
        route: `/json-rpc/${v}`,
        what: 'GetAsyncResult of the master-key rekey',
        element: true,
        build: () => ({ path: `/json-rpc/${v}`, body: { method: 'GetAsyncResult', params: { asyncHandle: lastMasterRekey, keepResult: true }, id: 4 } }),
        expect: E('ok', 403, 'ok', 403, 403),
        check: (_c, _who, body) => expect(body.result.result.newKey.keyID).toBeTruthy(),
      },
    ]),

    // ---- data plane
    { method: 'POST', route: '/api/v1/svms/{svm}/keys', what: 'in A', build: (c) => ({ path: `/api/v1/svms/${c.A.name}/keys`, body: {} }), expect: E('ok', 'ok', 403, 403, 'ok') },
    { method: 'POST', route: '/api/v1/svms/{svm}/keys', what: 'in B', build: (c) => ({ path: `/api/v1/svms/${c.B.uuid}/keys`, body: {} }), expect: E('ok', 404, 403, 404, 404) },
    {
      method: 'GET',
      route: '/api/v1/svms/{svm}/keys',
      what: 'in A',
      build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/keys` }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, _who, body) => {
        expect(body.records.map((r: any) => r.id)).toContain(c.key.A);
        for (const r of body.records) expect(r.svm.uuid).toBe(c.A.uuid);
      },
    },
    { method: 'GET', route: '/api/v1/svms/{svm}/keys', what: 'in B', build: (c) => ({ path: `/api/v1/svms/${c.B.name}/keys` }), expect: E('ok', 404, 'ok', 404, 404) },
    { method: 'GET', route: '/api/v1/svms/{svm}/keys', what: 'in the admin SVM', build: (c) => ({ path: `/api/v1/svms/${c.cluster.name}/keys` }), expect: E('ok', 404, 'ok', 404, 404) },
    { method: 'GET', route: '/api/v1/svms/{svm}/keys/{id}', what: "A's key", build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/keys/${c.key.A}` }), expect: E('ok', 'ok', 'ok', 'ok', 403) },
    { method: 'GET', route: '/api/v1/svms/{svm}/keys/{id}', what: "B's key", build: (c) => ({ path: `/api/v1/svms/${c.B.uuid}/keys/${c.key.B}` }), expect: E('ok', 404, 'ok', 404, 404) },
    // B's key asked for through A's path: it is not A's, for everyone who may read A.
    { method: 'GET', route: '/api/v1/svms/{svm}/keys/{id}', what: "B's key through A's path", build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/keys/${c.key.B}` }), expect: E(404, 404, 404, 404, 403) },
    {
      method: 'POST',
      route: '/api/v1/svms/{svm}/keys/{id}/state',
      what: 'a fresh key in A',
      build: async (c) => ({ path: `/api/v1/svms/${c.A.uuid}/keys/${await freshKey(c, c.A.uuid)}/state`, body: { action: 'activate' } }),
      expect: E('ok', 'ok', 403, 403, 403),
      check: (_c, _who, body) => expect(body.state).toBe('active'),
    },
    {
      method: 'POST',
      route: '/api/v1/svms/{svm}/keys/{id}/state',
      what: 'a fresh key in B',
      build: async (c) => ({ path: `/api/v1/svms/${c.B.uuid}/keys/${await freshKey(c, c.B.uuid)}/state`, body: { action: 'activate' } }),
      expect: E('ok', 404, 403, 404, 404),
    },
    {
      method: 'POST',
      route: '/api/v1/svms/{svm}/keys/{id}/state',
      what: "B's key through A's path",
      build: async (c) => ({ path: `/api/v1/svms/${c.A.uuid}/keys/${await freshKey(c, c.B.uuid)}/state`, body: { action: 'activate' } }),
      expect: E(404, 404, 403, 403, 403),
    },
    {
      method: 'DELETE',
      route: '/api/v1/svms/{svm}/keys/{id}',
      what: 'a fresh key in A',
      build: async (c) => ({ path: `/api/v1/svms/${c.A.uuid}/keys/${await freshKey(c, c.A.uuid)}` }),
      expect: E('ok', 'ok', 403, 403, 403),
      check: (_c, _who, body) => expect(body.state).toBe('destroyed'),
    },
    {
      method: 'DELETE',
      route: '/api/v1/svms/{svm}/keys/{id}',
      what: 'a fresh key in B',
      build: async (c) => ({ path: `/api/v1/svms/${c.B.name}/keys/${await freshKey(c, c.B.uuid)}` }),
      expect: E('ok', 404, 403, 404, 404),
    },
    {
      method: 'DELETE',
      route: '/api/v1/svms/{svm}/keys/{id}',
      what: "B's key through A's path",
      build: async (c) => ({ path: `/api/v1/svms/${c.A.name}/keys/${await freshKey(c, c.B.uuid)}` }),
      expect: E(404, 404, 403, 403, 403),
    },
    { method: 'POST', route: '/api/v1/svms/{svm}/data-keys', what: 'in A', build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/data-keys`, body: {} }), expect: E('ok', 'ok', 403, 403, 'ok') },
    { method: 'POST', route: '/api/v1/svms/{svm}/data-keys', what: 'in B', build: (c) => ({ path: `/api/v1/svms/${c.B.uuid}/data-keys`, body: {} }), expect: E('ok', 404, 403, 404, 404) },
    { method: 'POST', route: '/api/v1/svms/{svm}/data-keys', what: 'in the admin SVM', build: (c) => ({ path: `/api/v1/svms/${c.cluster.uuid}/data-keys`, body: {} }), expect: E('ok', 404, 403, 404, 404) },
    { method: 'POST', route: '/api/v1/svms/{svm}/unwrap', what: "A's data key", build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/unwrap`, body: { wrapped: c.wrapped.A } }), expect: E('ok', 'ok', 403, 403, 'ok') },
    { method: 'POST', route: '/api/v1/svms/{svm}/unwrap', what: "B's data key", build: (c) => ({ path: `/api/v1/svms/${c.B.uuid}/unwrap`, body: { wrapped: c.wrapped.B } }), expect: E('ok', 404, 403, 404, 404) },
    // B's wrapped key sent to A: bound to B, so it does not unwrap in A (400 unwrap_failed) for anyone.
    { method: 'POST', route: '/api/v1/svms/{svm}/unwrap', what: "B's data key through A's path", build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/unwrap`, body: { wrapped: c.wrapped.B } }), expect: E(400, 400, 403, 403, 400) },
    {
      method: 'POST',
      route: '/api/v1/svms/{svm}/unwrap-batch',
      what: "A's data keys",
      build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/unwrap-batch`, body: { wrapped: [c.wrapped.A] } }),
      expect: E('ok', 'ok', 403, 403, 'ok'),
      check: (_c, _who, body) => expect(typeof body.records[0].plaintext).toBe('string'),
    },
    { method: 'POST', route: '/api/v1/svms/{svm}/unwrap-batch', what: "B's data keys", build: (c) => ({ path: `/api/v1/svms/${c.B.uuid}/unwrap-batch`, body: { wrapped: [c.wrapped.B] } }), expect: E('ok', 404, 403, 404, 404) },
    {
      method: 'POST',
      route: '/api/v1/svms/{svm}/unwrap-batch',
      what: "B's data keys through A's path",
      build: (c) => ({ path: `/api/v1/svms/${c.A.uuid}/unwrap-batch`, body: { wrapped: [c.wrapped.B] } }),
      expect: E('ok', 'ok', 403, 403, 'ok'),
      check: (_c, _who, body) => {
        expect(body.records[0].plaintext).toBeUndefined();
        expect(body.records[0].error.code).toBe('65600012');
      },
    },

    // ---- principals
    {
      method: 'POST',
      route: '/api/v1/auth/tokens',
      what: 'a new token',
      build: () => ({ path: '/api/v1/auth/tokens', body: { name: `t${randomBytes(4).toString('hex')}`, role: 'readonly' } }),
      expect: ADMIN_ONLY,
      check: (_c, _who, body) => noteSecret(body.token),
    },
    { method: 'GET', route: '/api/v1/auth/tokens', what: 'list', build: () => ({ path: '/api/v1/auth/tokens' }), expect: ADMIN_ONLY },
    {
      method: 'DELETE',
      route: '/api/v1/auth/tokens/{id}',
      what: 'a fresh token',
      build: async (c) => {
        const r = await admin(c, 'POST', '/api/v1/auth/tokens', { name: 'victim', role: 'readonly' });
        noteSecret(r.body.token);
        return { path: `/api/v1/auth/tokens/${r.body.id}` };
      },
      expect: ADMIN_ONLY,
    },
    // Revoking another principal's own token: svm-admin of A revoking the admin's token.
    { method: 'DELETE', route: '/api/v1/auth/tokens/{id}', what: "the admin's token", build: (c) => ({ path: `/api/v1/auth/tokens/${c.ids.admin}` }), expect: E('skip', 403, 403, 403, 403) },
    {
      method: 'POST',
      route: '/api/v1/auth/users',
      what: 'a new user',
      build: () => {
        const password = `pw-${randomBytes(12).toString('hex')}`;
        noteSecret(password);
        return { path: '/api/v1/auth/users', body: { name: `u${randomBytes(4).toString('hex')}`, password, role: 'readonly' } };
      },
      expect: ADMIN_ONLY,
    },
    { method: 'GET', route: '/api/v1/auth/users', what: 'list', build: () => ({ path: '/api/v1/auth/users' }), expect: ADMIN_ONLY },
    {
      method: 'DELETE',
      route: '/api/v1/auth/users/{id}',
      what: "a user (fresh for the admin)",
      build: async (c, who) => {
        const fresh = async () => {
          const password = `pw-${randomBytes(12).toString('hex')}`;
          noteSecret(password);
          return (await admin(c, 'POST', '/api/v1/auth/users', { name: `v${randomBytes(4).toString('hex')}`, password, role: 'readonly' })).body.id as string;
        };
        return { path: `/api/v1/auth/users/${who === 'admin' ? await fresh() : (c.victimUser ??= await fresh())}` };
      },
      expect: ADMIN_ONLY,
    },
    {
      method: 'GET',
      route: '/api/v1/auth/whoami',
      what: 'the caller',
      build: () => ({ path: '/api/v1/auth/whoami' }),
      expect: E('ok', 'ok', 'ok', 'ok', 'ok'),
      check: (c, who, body) => {
        expect(body.id).toBe(c.ids[who]);
        expect(body.kind).toBe('token');
        expect(body.role).toBe({ admin: 'cluster-admin', svmAdminA: 'svm-admin', readonlyAll: 'readonly', readonlyA: 'readonly', appA: 'application' }[who]);
        expect(body.svms).toEqual(who === 'admin' || who === 'readonlyAll' ? [] : [c.A.uuid]);
      },
    },

    // ---- audit
    {
      method: 'GET',
      route: '/api/v1/audit/events',
      what: 'all events',
      build: () => ({ path: '/api/v1/audit/events?limit=10000' }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, who, body) => {
        const svms = new Set(body.records.map((r: any) => r.svm_uuid));
        if (who === 'svmAdminA' || who === 'readonlyA') {
          expect([...svms]).toEqual([c.A.uuid]);
        } else expect(svms.has(c.B.uuid)).toBe(true);
      },
    },
    {
      method: 'GET',
      route: '/api/v1/audit/events',
      what: "B's events",
      build: (c) => ({ path: `/api/v1/audit/events?svm=${c.B.uuid}` }),
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, who, body) => {
        if (who === 'svmAdminA' || who === 'readonlyA') expect(body.records).toEqual([]);
        else expect(body.records.length).toBeGreaterThan(0);
      },
    },
    { method: 'GET', route: '/api/v1/audit/verify', what: 'the chain', build: () => ({ path: '/api/v1/audit/verify' }), expect: E('ok', 403, 'ok', 403, 403) },

    // ---- certificates
    {
      method: 'GET',
      route: '/api/security/certificates',
      what: 'list',
      build: async (c) => {
        await certOf(c, 'A');
        await certOf(c, 'B');
        return { path: '/api/security/certificates?fields=svm' };
      },
      expect: E('ok', 'ok', 'ok', 'ok', 403),
      check: (c, who, body) => {
        const svms = new Set(body.records.map((r: any) => r.svm?.uuid));
        if (who === 'svmAdminA' || who === 'readonlyA') expect([...svms]).toEqual([c.A.uuid]);
        else expect(svms.has(c.B.uuid)).toBe(true);
      },
    },
    { method: 'GET', route: '/api/security/certificates/{uuid}', what: "A's certificate", build: async (c) => ({ path: `/api/security/certificates/${await certOf(c, 'A')}` }), expect: E('ok', 'ok', 'ok', 'ok', 403) },
    { method: 'GET', route: '/api/security/certificates/{uuid}', what: "B's certificate", build: async (c) => ({ path: `/api/security/certificates/${await certOf(c, 'B')}` }), expect: E('ok', 404, 'ok', 404, 404) },
    { method: 'POST', route: '/api/security/certificates', what: 'for SVM A', build: (c) => ({ path: '/api/security/certificates', body: { svm: { name: c.A.name }, type: 'client', public_certificate: freshCertPem() } }), expect: E('ok', 'ok', 403, 403, 403) },
    { method: 'POST', route: '/api/security/certificates', what: 'for the cluster', build: () => ({ path: '/api/security/certificates', body: { type: 'client', public_certificate: freshCertPem() } }), expect: E('ok', 404, 403, 404, 404) },
    {
      method: 'DELETE',
      route: '/api/security/certificates/{uuid}',
      what: "a fresh certificate of A",
      build: async (c) => ({ path: `/api/security/certificates/${(await admin(c, 'POST', '/api/security/certificates', { svm: { uuid: c.A.uuid }, type: 'client', public_certificate: freshCertPem() })).headers.get('location')!.split('/').pop()}` }),
      expect: E('ok', 'ok', 403, 403, 403),
    },
    { method: 'DELETE', route: '/api/security/certificates/{uuid}', what: "B's certificate", build: async (c) => ({ path: `/api/security/certificates/${await certOf(c, 'B')}` }), expect: E('ok', 404, 403, 404, 404), after: async (c) => void (c.certs = undefined) },
  ];
}

let pki: Pki | undefined;
/** A new client certificate each call (the same one twice is a duplicate). */
function freshCertPem(): string {
  pki ??= makePki('ks-authz-');
  return pki.client(`authz-${randomBytes(4).toString('hex')}`).pem;
}
/** One installed certificate per tenant, made (as admin) on first use and again after a row deleted it. */
async function certOf(c: Ctx, t: 'A' | 'B'): Promise<string> {
  c.certs ??= {};
  const found = c.certs[t] && (await c.s.call('GET', `/api/security/certificates/${c.certs[t]}`)).status === 200;
  if (!found) c.certs[t] = (await admin(c, 'POST', '/api/security/certificates', { svm: { uuid: c[t].uuid }, type: 'client_ca', public_certificate: freshCertPem() })).headers.get('location')!.split('/').pop()!;
  return c.certs[t]!;
}

/** Every row of every table the API writes, except the audit trail (refusals may be audited) and node heartbeats. */
const SNAPSHOT_TABLES = ['meta', 'svms', 'key_managers', 'root_seals', 'keks', 'deks', 'users', 'tokens'] as const;
async function snapshot(c: Ctx): Promise<string> {
  const db = c.s.app.services.store.db as any;
  const out: Record<string, string[]> = {};
  for (const t of SNAPSHOT_TABLES) {
    const rows = await db.selectFrom(t).selectAll().execute();
    out[t] = rows.map((r: unknown) => JSON.stringify(r, (_k, v) => (v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v))).sort();
  }
  return JSON.stringify(out);
}

function headersFor(c: Ctx, who: Who): { token: string | null; headers?: Record<string, string> } {
  if (who === 'none') return { token: null };
  return { token: c.tokens[who] };
}

async function setup(store: 'sqlite' | 'postgres'): Promise<Ctx> {
  const s = await startWithOkm({ store });
  const c = { s } as Ctx;
  const mk = async (name: string) => {
    const r = await admin(c, 'POST', '/api/svm/svms', { name });
    return { uuid: r.headers.get('location')!.split('/').pop()!, name };
  };
  c.A = await mk('tenantA');
  c.B = await mk('tenantB');
  const adminSvm = await s.app.services.svms.admin();
  c.cluster = { uuid: adminSvm!.uuid, name: adminSvm!.name };
  for (const t of [c.A, c.B]) await admin(c, 'POST', '/api/security/key-managers', { svm: { name: t.name }, onboard: { passphrase: KM_PASSPHRASE } });
  const kms = (await admin(c, 'GET', '/api/security/key-managers?fields=scope,svm')).body.records;
  c.km = {
    A: kms.find((k: any) => k.svm?.uuid === c.A.uuid).uuid,
    B: kms.find((k: any) => k.svm?.uuid === c.B.uuid).uuid,
    cluster: kms.find((k: any) => k.scope === 'cluster').uuid,
  };
  c.key = {
    A: (await admin(c, 'POST', `/api/v1/svms/${c.A.uuid}/keys`, { name: 'a-key' })).body.id,
    B: (await admin(c, 'POST', `/api/v1/svms/${c.B.uuid}/keys`, { name: 'b-key' })).body.id,
    cluster: (await admin(c, 'POST', `/api/v1/svms/${c.cluster.uuid}/keys`, { name: 'c-key' })).body.id,
  };
  const dk = async (svm: string) => {
    const r = await admin(c, 'POST', `/api/v1/svms/${svm}/data-keys`, {});
    noteSecret(r.body.plaintext);
    return r.body.wrapped as string;
  };
  c.wrapped = { A: await dk(c.A.uuid), B: await dk(c.B.uuid) };
  c.backup = (await admin(c, 'GET', `/api/security/key-managers/${c.km.cluster}?fields=onboard.key_backup`)).body.onboard.key_backup;

  const token = async (name: string, role: string, svms?: string[], extra: Record<string, unknown> = {}) => {
    const r = await admin(c, 'POST', '/api/v1/auth/tokens', { name, role, ...(svms ? { svms } : {}), ...extra });
    noteSecret(r.body.token);
    return { id: r.body.id as string, secret: r.body.token as string };
  };
  const who = await admin(c, 'GET', '/api/v1/auth/whoami');
  const sa = await token('svm-admin-a', 'svm-admin', [c.A.name]);
  const roAll = await token('readonly-all', 'readonly');
  const roA = await token('readonly-a', 'readonly', [c.A.uuid]);
  const app = await token('app-a', 'application', [c.A.name]);
  const revoked = await token('to-revoke', 'cluster-admin');
  // Used once (so it sits in the auth cache), then revoked: revocation must beat the cache.
  expect((await s.call('GET', '/api/v1/auth/whoami', undefined, revoked.secret)).status).toBe(200);
  await admin(c, 'DELETE', `/api/v1/auth/tokens/${revoked.id}`);
  // Never used before it expires, so no cache entry can outlive it.
  const expired = await token('to-expire', 'cluster-admin', undefined, { expires_in: 60 });
  await (s.app.services.store.db as any).updateTable('tokens').set({ expires_at: new Date(Date.now() - 1000).toISOString() }).where('id', '=', expired.id).execute();
  const garbage = `ks_${randomBytes(32).toString('base64url')}`;
  noteSecret(garbage);
  c.tokens = { admin: s.token, svmAdminA: sa.secret, readonlyAll: roAll.secret, readonlyA: roA.secret, appA: app.secret, revoked: revoked.secret, expired: expired.secret, garbage };
  c.ids = { admin: who.body.id, svmAdminA: sa.id, readonlyAll: roAll.id, readonlyA: roA.id, appA: app.id };
  return c;
}

function expectRefusal(res: { status: number; body: any }, status: number, code: string, where: string) {
  expect(res.status, where).toBe(status);
  expect(Object.keys(res.body ?? {}), where).toEqual(['error']);
  expect(typeof res.body.error.message, where).toBe('string');
  expect(res.body.error.message.length, where).toBeGreaterThan(0);
  expect(res.body.error.code, where).toBe(code);
}

const PUBLIC_ROUTES = new Set(['GET /api/health', 'GET /api/openapi.json']);

for (const store of STORES) {
  // The whole matrix runs on SQLite; on PostgreSQL the unauthenticated columns (cheap) and public routes.
  const full = store === 'sqlite';
  describe(`authorization matrix on ${store}`, () => {
    let c: Ctx;
    beforeAll(async () => {
      c = await setup(store);
    });
    afterAll(() => c?.s.close());

    it('every documented route has a row, and every row is a documented route', async () => {
      const r = await c.s.call('GET', '/api/openapi.json');
      expect(r.status).toBe(200);
      const documented = new Set<string>();
      for (const [path, ops] of Object.entries(r.body.paths as Record<string, Record<string, unknown>>)) {
        for (const m of Object.keys(ops)) {
          if (!['get', 'post', 'put', 'patch', 'delete'].includes(m)) continue;
          const key = `${m.toUpperCase()} ${path}`;
          if (!PUBLIC_ROUTES.has(key)) documented.add(key);
        }
      }
      const rows = new Set(table().map((row) => `${row.method} ${row.route}`));
      expect([...documented].filter((k) => !rows.has(k)), 'documented routes without a matrix row').toEqual([]);
      expect([...rows].filter((k) => !documented.has(k)), 'matrix rows for routes that are not documented').toEqual([]);
      expect(documented.size).toBeGreaterThan(20);
    });

    it('public routes answer without credentials, and with bad ones', async () => {
      for (const tok of [null, c.tokens.revoked, c.tokens.garbage]) {
        const h = await c.s.call('GET', '/api/health', undefined, tok);
        expect(h.status).toBe(200);
        expect(h.body.status).toBe('ok');
        const o = await c.s.call('GET', '/api/openapi.json', undefined, tok);
        expect(o.status).toBe(200);
        expect(o.body.openapi).toMatch(/^3\./);
      }
    });

    it('an unknown path is an ONTAP 404 with or without credentials', async () => {
      for (const tok of [null, c.s.token]) expectRefusal(await c.s.call('GET', '/api/no/such/thing', undefined, tok), 404, '4', 'unknown path');
    });

    const rows = table();
    for (const row of rows) {
      const principals: Who[] = full ? [...ROLES5, 'none', 'garbage', 'revoked', 'expired'] : ['none', 'garbage', 'revoked', 'expired'];
      it(`${row.method} ${row.route} — ${row.what}`, async () => {
        for (const who of principals) {
          const want: Expect | { status: number; code: string } = who in UNAUTH ? UNAUTH[who as Unauth] : row.expect[who as Role5];
          if (want === 'skip') continue;
          const { path, body } = await row.build(c, who);
          const before = await snapshot(c);
          const { token, headers } = headersFor(c, who);
          const res = await c.s.call(row.method, path, body, token, headers);
          const where = `${row.method} ${path} as ${who}: ${res.status} ${JSON.stringify(res.body)}`;
          if (want === 'ok') {
            expect(res.status, where).toBeGreaterThanOrEqual(200);
            expect(res.status, where).toBeLessThan(300);
            if (row.element) expect(res.body.error, where).toBeUndefined();
            if (res.body && typeof res.body === 'object' && typeof res.body.plaintext === 'string') noteSecret(res.body.plaintext);
            for (const rec of res.body?.records ?? []) if (typeof rec?.plaintext === 'string') noteSecret(rec.plaintext);
            await row.check?.(c, who as Role5, res.body);
            await row.after?.(c);
            continue;
          }
          const status = typeof want === 'number' ? want : want.status;
          const code = typeof want === 'number' ? REFUSAL_CODE[want] : want.code;
          if (row.element) {
            // Element's shape: {"error":{"code","name","message"},"id"}; method errors come with HTTP 200.
            expect(res.status, where).toBe(status === 401 ? 401 : 200);
            expect(Object.keys(res.body ?? {}).sort(), where).toEqual(['error', 'id']);
            expect(res.body.error.name, where).toBe(status === 401 ? 'xUnauthorized' : 'xPermissionDenied');
            expect(res.body.error.code, where).toBe(status === 401 ? 401 : 500);
          } else if (code !== undefined) expectRefusal(res, status, code, where);
          else {
            // A business refusal after authorization passed: still an ONTAP error body.
            expect(res.status, where).toBe(status);
            expect(Object.keys(res.body ?? {}), where).toEqual(['error']);
          }
          if (status === 401) expect(res.headers.get('www-authenticate'), where).toMatch(/Bearer/);
          if (status === 401 || status === 403 || status === 404) {
            expect(await snapshot(c), `${where}: a refusal changed the store`).toBe(before);
            expect((await c.s.call('GET', '/api/health', undefined, null)).body.sealed, where).toBe(false);
          }
        }
      });
    }

    if (full) {
      it("refusals leave the other tenant's objects as they were", async () => {
        const key = await c.s.call('GET', `/api/v1/svms/${c.B.uuid}/keys/${c.key.B}`);
        expect(key.status).toBe(200);
        expect(key.body.state).toBe('active');
        const u = await c.s.call('POST', `/api/v1/svms/${c.B.uuid}/unwrap`, { wrapped: c.wrapped.B });
        expect(u.status).toBe(200);
        noteSecret(u.body.plaintext);
        expect((await c.s.call('GET', `/api/security/key-managers/${c.km.B}`)).status).toBe(200);
        expect((await c.s.call('GET', `/api/svm/svms/${c.B.uuid}`)).status).toBe(200);
        // The token the svm-admin tried to revoke still works.
        expect((await c.s.call('GET', '/api/v1/auth/whoami')).status).toBe(200);
      });

      it('a token hash is not a token', async () => {
        const hash = createHash('sha256').update(c.tokens.admin).digest('hex');
        expectRefusal(await c.s.call('GET', '/api/v1/auth/whoami', undefined, hash), 401, '10', 'hash as bearer');
      });
    }
  });
}
