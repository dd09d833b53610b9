/**
 * Durable jobs and rekey-internal over real HTTP on SQLite and PostgreSQL: ONTAP's job contract
 * (return_timeout 0..120, return_records, 202 + job link or 201), the re-wrap of every live key
 * under a new KEK version without losing one, keys served during the rekey, refusals that change
 * nothing, a runner stopped and started again mid-job, and (PostgreSQL) a second node taking over
 * a job whose node stopped.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { PASSPHRASE, STORES, noteSecret, startServer, startWithOkm, type TestServer } from './helpers.js';

type Okm = TestServer & { kmUuid: string };
interface DataKey {
  id: string;
  plaintext: string;
  wrapped: string;
  kek_version: number;
}

function expectError(r: { status: number; body: any }, status: number, code: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(Object.keys(r.body ?? {}), JSON.stringify(r.body)).toEqual(['error']);
  expect(r.body.error.code, JSON.stringify(r.body)).toBe(code);
  expect(typeof r.body.error.message).toBe('string');
}

async function dataKey(s: TestServer, svm: string): Promise<DataKey> {
  const r = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, {});
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  noteSecret(r.body.plaintext);
  return { id: r.body.key_id, plaintext: r.body.plaintext, wrapped: r.body.wrapped, kek_version: r.body.kek_version };
}

/** `n` data keys, a few requests at a time. */
async function dataKeys(s: TestServer, svm: string, n: number): Promise<DataKey[]> {
  const out: DataKey[] = [];
  for (let i = 0; i < n; i += 16) out.push(...(await Promise.all(Array.from({ length: Math.min(16, n - i) }, () => dataKey(s, svm)))));
  return out;
}

/** Every wrapped form unwraps (in `svm`, on server `s`) to the plaintext it was issued with. */
async function expectAllUnwrap(s: TestServer, svm: string, keys: DataKey[]) {
  for (let i = 0; i < keys.length; i += 5000) {
    const chunk = keys.slice(i, i + 5000);
    const r = await s.call('POST', `/api/v1/svms/${svm}/unwrap-batch`, { wrapped: chunk.map((k) => k.wrapped) });
    expect(r.status, JSON.stringify(r.body).slice(0, 500)).toBe(200);
    const bad = chunk.filter((k, j) => r.body.records[j].key_id !== k.id || r.body.records[j].plaintext !== k.plaintext).map((k) => k.id);
    expect(bad, 'keys that no longer unwrap to their plaintext').toEqual([]);
  }
}

const db = (s: TestServer) => s.app.services.store.db;
const jobRow = (s: TestServer, uuid: string) => db(s).selectFrom('jobs').selectAll().where('uuid', '=', uuid).executeTakeFirstOrThrow();
const jobCount = async (s: TestServer) => (await db(s).selectFrom('jobs').select('uuid').execute()).length;
const kekStates = async (s: TestServer, svm: string) =>
  Object.fromEntries((await db(s).selectFrom('keks').select(['version', 'state']).where('svm_uuid', '=', svm).orderBy('version').execute()).map((k) => [k.version, k.state]));

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 30_000, every = 20): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Polls the job over the API until it ends; returns its final record. */
async function jobEnd(s: TestServer, href: string, ms = 30_000) {
  return until(`job ${href}`, async () => {
    const r = await s.call('GET', href);
    expect(r.status).toBe(200);
    return r.body.state === 'success' || r.body.state === 'failure' ? r.body : undefined;
  }, ms);
}

async function rekey(s: Okm, query = '', km = s.kmUuid) {
  return s.call('POST', `/api/security/key-managers/${km}/rekey-internal${query}`);
}

function expectJobLink(r: { status: number; body: any }): string {
  expect(r.status, JSON.stringify(r.body)).toBe(202);
  expect(Object.keys(r.body)).toEqual(['job']);
  expect(Object.keys(r.body.job).sort()).toEqual(['_links', 'uuid']);
  expect(r.body.job.uuid).toMatch(/^[0-9a-f-]{36}$/);
  expect(r.body.job._links.self.href).toBe(`/api/cluster/jobs/${r.body.job.uuid}`);
  return r.body.job._links.self.href;
}

for (const store of STORES) {
  describe(`rekey-internal on ${store}`, () => {
    let s: Okm;
    let admin: string; // the admin SVM's uuid
    let keys: DataKey[]; // live keys, with the wrapped form each was issued with
    let destroyed: string[];
    let deactivated: string[];
    const LIVE = 300;

    beforeAll(async () => {
      s = await startWithOkm({ store, rekeyBatch: 50 });
      admin = (await s.app.services.svms.admin())!.uuid;
    });
    afterAll(() => s?.close());

    it('an SVM without keys cannot be rekeyed (65537559), and nothing is created', async () => {
      const jobs = await jobCount(s);
      const keks = await kekStates(s, admin);
      expectError(await rekey(s), 400, '65537559');
      expectError(await rekey(s, '?return_timeout=30'), 400, '65537559');
      expect(await jobCount(s)).toBe(jobs);
      expect(await kekStates(s, admin)).toEqual(keks);
    });

    it('setup: live, deactivated and destroyed keys in the admin SVM', async () => {
      keys = await dataKeys(s, 'cluster1', LIVE);
      expect(new Set(keys.map((k) => k.kek_version))).toEqual(new Set([1]));
      // Deactivated keys still unwrap, so they are re-wrapped like active ones.
      deactivated = keys.slice(0, 5).map((k) => k.id);
      for (const id of deactivated) expect((await s.call('POST', `/api/v1/svms/cluster1/keys/${id}/state`, { action: 'deactivate' })).status).toBe(200);
      destroyed = [];
      for (let i = 0; i < 4; i++) {
        const r = await s.call('POST', '/api/v1/svms/cluster1/keys', { state: 'pre-active' });
        expect(r.status).toBe(201);
        expect((await s.call('DELETE', `/api/v1/svms/cluster1/keys/${r.body.id}`)).status).toBe(200);
        destroyed.push(r.body.id);
      }
    });

    it('refuses a return_timeout outside 0..120 or a return_records that is not a boolean, and creates no job', async () => {
      const jobs = await jobCount(s);
      const keks = await kekStates(s, admin);
      for (const v of ['121', '-1', 'abc', '1.5', '', '0x10', '1000']) {
        const r = await rekey(s, `?return_timeout=${encodeURIComponent(v)}`);
        expectError(r, 400, '262197');
        expect(r.body.error.target).toBe('return_timeout');
      }
      for (const v of ['maybe', '1', 'TRUE', '']) expectError(await rekey(s, `?return_timeout=0&return_records=${v}`), 400, '262197');
      expect(await jobCount(s)).toBe(jobs);
      expect(await kekStates(s, admin)).toEqual(keks);
      expect((await s.call('GET', '/api/v1/svms/cluster1/keys?limit=1')).body.records[0].kek_version).toBe(1);
    });

    it('return_timeout=0: 202 and a job link; the job re-wraps every live key under KEK version 2 and loses none', async () => {
      const r = await rekey(s, '?return_timeout=0');
      const href = expectJobLink(r);
      const job = await jobEnd(s, href);
      expect(job.state, JSON.stringify(job)).toBe('success');
      expect(job.code).toBe(0);
      expect(job.uuid).toBe(r.body.job.uuid);
      expect(job.svm).toEqual({ uuid: admin });
      expect(job.progress).toEqual({ done: LIVE, total: LIVE }); // destroyed keys are not counted
      expect(typeof job.description).toBe('string');
      expect(Date.parse(job.start_time)).toBeLessThanOrEqual(Date.parse(job.end_time));
      expect(job._links.self.href).toBe(href);

      // Every live key is now stored under version 2; destroyed ones stay destroyed, without material.
      const list = (await s.call('GET', '/api/v1/svms/cluster1/keys?limit=1000')).body.records as any[];
      expect(list.length).toBe(LIVE + destroyed.length);
      for (const k of list) {
        if (destroyed.includes(k.id)) expect(k.state).toBe('destroyed');
        else expect(k.kek_version, k.id).toBe(2);
        if (deactivated.includes(k.id)) expect(k.state).toBe('deactivated');
      }
      const gone = await db(s).selectFrom('deks').select(['id', 'wrapped', 'state']).where('id', 'in', destroyed).execute();
      expect(gone.map((g) => [g.wrapped, g.state])).toEqual(destroyed.map(() => [null, 'destroyed']));
      expect(await kekStates(s, admin)).toEqual({ 1: 'decommissioned', 2: 'active' });

      // The wrapped forms clients hold (issued under version 1) still open to the same bytes.
      await expectAllUnwrap(s, 'cluster1', keys);
      // Destroyed keys do not come back.
      for (const id of destroyed) expect((await s.call('GET', `/api/v1/svms/cluster1/keys/${id}`)).body.state).toBe('destroyed');
      // New keys use the new version.
      const fresh = await dataKey(s, 'cluster1');
      expect(fresh.kek_version).toBe(2);
      keys.push(fresh);
      await expectAllUnwrap(s, 'cluster1', [fresh]);
    });

    it('return_timeout=30: 201 when the job ends in time, with the job record if return_records=true', async () => {
      const r = await rekey(s, '?return_timeout=30&return_records=true');
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      expect(r.body.num_records).toBe(1);
      const rec = r.body.records[0];
      expect(rec.state).toBe('success');
      expect(rec.code).toBe(0);
      expect(rec.progress).toEqual({ done: LIVE + 1, total: LIVE + 1 });
      expect(rec._links.self.href).toBe(`/api/cluster/jobs/${rec.uuid}`);
      expect(await kekStates(s, admin)).toEqual({ 1: 'decommissioned', 2: 'decommissioned', 3: 'active' });

      const plain = await rekey(s, '?return_timeout=30');
      expect(plain.status, JSON.stringify(plain.body)).toBe(201);
      expect(plain.body).toEqual({});
      expect(await kekStates(s, admin)).toEqual({ 1: 'decommissioned', 2: 'decommissioned', 3: 'decommissioned', 4: 'active' });

      // Forms issued under versions 1 and 2 still open; every live key is now under version 4.
      await expectAllUnwrap(s, 'cluster1', keys);
      const list = (await s.call('GET', '/api/v1/svms/cluster1/keys?limit=1000')).body.records as any[];
      for (const k of list) if (!destroyed.includes(k.id)) expect(k.kek_version).toBe(4);
    });

    it('a second rekey while one is queued is refused (409 65600021); the queued one then runs', async () => {
      await s.app.services.jobs.stop(); // hold the first job in the queue
      try {
        const first = await rekey(s, '?return_timeout=0');
        const href = expectJobLink(first);
        expect((await s.call('GET', href)).body.state).toBe('queued');
        const jobs = await jobCount(s);
        expectError(await rekey(s, '?return_timeout=0'), 409, '65600021');
        expectError(await rekey(s, '?return_timeout=1&return_records=true'), 409, '65600021');
        expect(await jobCount(s)).toBe(jobs);
        s.app.services.jobs.start();
        const job = await jobEnd(s, href);
        expect(job.state).toBe('success');
      } finally {
        s.app.services.jobs.start();
      }
      expect(await kekStates(s, admin)).toMatchObject({ 4: 'decommissioned', 5: 'active' });
      await expectAllUnwrap(s, 'cluster1', keys);
    });

    it("a data SVM whose keys sit under the cluster's key manager cannot be rekeyed once it has its own (65537547)", async () => {
      const c = await s.call('POST', '/api/svm/svms', { name: 'vs_legacy' });
      expect(c.status).toBe(201);
      const svm = c.headers.get('location')!.split('/').pop()!;
      const legacy = await dataKeys(s, svm, 3);
      const km = await s.call('POST', '/api/security/key-managers', { svm: { name: 'vs_legacy' }, onboard: { passphrase: PASSPHRASE } });
      expect(km.status, JSON.stringify(km.body)).toBe(201);
      const kmUuid = km.headers.get('location')!.split('/').pop()!;
      const jobs = await jobCount(s);
      const keks = await kekStates(s, svm);
      expectError(await rekey(s, '?return_timeout=0', kmUuid), 400, '65537547');
      expectError(await rekey(s, '?return_timeout=30&return_records=true', kmUuid), 400, '65537547');
      expect(await jobCount(s)).toBe(jobs);
      expect(await kekStates(s, svm)).toEqual(keks);
      await expectAllUnwrap(s, svm, legacy);

      // A data SVM with its own key manager and no keys: 65537559.
      const e = await s.call('POST', '/api/svm/svms', { name: 'vs_empty' });
      const empty = e.headers.get('location')!.split('/').pop()!;
      const ekm = await s.call('POST', '/api/security/key-managers', { svm: { uuid: empty }, onboard: { passphrase: PASSPHRASE } });
      expectError(await rekey(s, '?return_timeout=0', ekm.headers.get('location')!.split('/').pop()!), 400, '65537559');
      expect(await jobCount(s)).toBe(jobs);
    });

    it('a data SVM with its own key manager is rekeyed on its own; the admin SVM is untouched', async () => {
      const c = await s.call('POST', '/api/svm/svms', { name: 'vs_own' });
      const svm = c.headers.get('location')!.split('/').pop()!;
      const km = await s.call('POST', '/api/security/key-managers', { svm: { uuid: svm }, onboard: { passphrase: PASSPHRASE } });
      const kmUuid = km.headers.get('location')!.split('/').pop()!;
      const mine = await dataKeys(s, svm, 60);
      const adminKeks = await kekStates(s, admin);
      const r = await rekey(s, '?return_timeout=60&return_records=true', kmUuid);
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      expect(r.body.records[0].svm).toEqual({ uuid: svm });
      expect(r.body.records[0].progress).toEqual({ done: 60, total: 60 });
      expect(await kekStates(s, svm)).toEqual({ 1: 'decommissioned', 2: 'active' });
      expect(await kekStates(s, admin)).toEqual(adminKeks);
      await expectAllUnwrap(s, svm, mine);
      // Bound to its tenant: the admin SVM's path does not open them.
      const cross = await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: mine[0].wrapped });
      expectError(cross, 400, '65600012');
    });

    it('jobs are listed and filtered; an unknown job is 404 code 4', async () => {
      const all = await s.call('GET', '/api/cluster/jobs?fields=state,svm,progress');
      expect(all.status).toBe(200);
      expect(all.body.num_records).toBe(all.body.records.length);
      expect(all.body.records.length).toBeGreaterThanOrEqual(5);
      for (const j of all.body.records) expect(j.state).toBe('success');
      expect((await s.call('GET', '/api/cluster/jobs?state=failure')).body.records).toEqual([]);
      expect((await s.call('GET', '/api/cluster/jobs?max_records=2')).body.records.length).toBe(2);
      expectError(await s.call('GET', `/api/cluster/jobs/${randomUUID()}`), 404, '4');
      expectError(await s.call('GET', '/api/cluster/jobs/not-a-uuid'), 404, '4');
      const bad = await s.call('GET', '/api/cluster/jobs?state=exploded');
      expect(bad.status).toBe(400);
      expect(Object.keys(bad.body)).toEqual(['error']);
    });

    it('every rekey is audited as key_manager.rekey_internal, with no secret', async () => {
      const r = await s.call('GET', '/api/v1/audit/events?action=key_manager.rekey_internal&limit=100');
      expect(r.status).toBe(200);
      const jobs = (await s.call('GET', '/api/cluster/jobs')).body.records.map((j: any) => j.uuid);
      expect(r.body.records.map((e: any) => e.object_id).sort()).toEqual([...jobs].sort());
      for (const e of r.body.records) {
        expect(e.outcome).toBe('success');
        expect(e.object_type).toBe('job');
        expect(JSON.stringify(e)).not.toContain(PASSPHRASE);
      }
    });
  });

  describe(`keys are served during a rekey, and a stopped runner resumes, on ${store}`, () => {
    let s: Okm;
    let admin: string;
    let keys: DataKey[];
    const N = 2000;

    beforeAll(async () => {
      s = await startWithOkm({ store, rekeyBatch: 20 });
      admin = (await s.app.services.svms.admin())!.uuid;
      keys = await dataKeys(s, 'cluster1', N);
    });
    afterAll(() => s?.close());

    it('unwraps succeed and new keys use the new version while the rekey runs; a second rekey is refused meanwhile', async () => {
      const href = expectJobLink(await rekey(s, '?return_timeout=0'));
      const uuid = href.split('/').pop()!;
      // A monitor reads the job row; workers call the API until the job ends.
      let now = await jobRow(s, uuid);
      let ended = false;
      const midway = () => now.state === 'running' && now.progress_done > 0 && now.progress_done < now.progress_total;
      const monitor = (async () => {
        try {
          while (!ended) {
            now = await jobRow(s, uuid);
            ended = now.state === 'success' || now.state === 'failure';
            await new Promise((r) => setTimeout(r, 1));
          }
        } finally {
          ended = true; // the workers stop with the monitor, whatever ends it
        }
      })();
      const created: DataKey[] = [];
      let unwrapsMidway = 0;
      let createdMidway = 0;
      let refusedMidway = false;
      const unwrapper = async () => {
        while (!ended) {
          const k = keys[Math.floor(Math.random() * keys.length)];
          const before = midway();
          const u = await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: k.wrapped });
          expect(u.status, JSON.stringify(u.body)).toBe(200);
          expect(u.body.plaintext).toBe(k.plaintext);
          if (before && midway()) unwrapsMidway += 1;
        }
      };
      const creator = async () => {
        while (!ended) {
          const started = now.state === 'running' && now.progress_done > 0; // the new version is active from the first step on
          const made = await dataKey(s, 'cluster1');
          if (started) {
            expect(made.kek_version).toBe(2);
            createdMidway += 1;
          }
          created.push(made);
        }
      };
      const second = async () => {
        await until('the job midway', async () => midway() || ended, 30_000, 1);
        if (ended) return;
        expectError(await rekey(s, '?return_timeout=0'), 409, '65600021');
        refusedMidway = true;
      };
      await Promise.all([monitor, unwrapper(), unwrapper(), unwrapper(), unwrapper(), creator(), second()]);
      const job = (await s.call('GET', href)).body;
      expect(job.state, JSON.stringify(job)).toBe('success');
      expect(unwrapsMidway, 'no unwrap overlapped the rekey').toBeGreaterThan(0);
      expect(createdMidway, 'no key was created during the rekey').toBeGreaterThan(0);
      expect(refusedMidway).toBe(true);
      // Keys made during the rekey are counted only if they were made under the old version.
      expect(job.progress.done).toBe(job.progress.total);
      expect(job.progress.done).toBeGreaterThanOrEqual(N);
      expect(job.progress.done).toBeLessThanOrEqual(N + created.length);
      expect(await kekStates(s, admin)).toEqual({ 1: 'decommissioned', 2: 'active' });
      keys.push(...created);
      await expectAllUnwrap(s, 'cluster1', keys);
      const versions = await db(s).selectFrom('deks').select('kek_version').distinct().where('svm_uuid', '=', admin).execute();
      expect(versions.map((v) => v.kek_version)).toEqual([2]);
    });

    it('a runner stopped mid-job (graceful: lease released) resumes the job from its cursor when started again', async () => {
      const href = expectJobLink(await rekey(s, '?return_timeout=0'));
      const uuid = href.split('/').pop()!;
      await until('a few steps', async () => (await jobRow(s, uuid)).progress_done >= 200, 30_000, 2);
      await s.app.services.jobs.stop();
      try {
        const held = await jobRow(s, uuid);
        expect(held.state).toBe('running');
        expect(held.lease_owner).toBeNull();
        expect(held.progress_done).toBeLessThan(held.progress_total);
        await new Promise((r) => setTimeout(r, 300));
        expect((await jobRow(s, uuid)).progress_done).toBe(held.progress_done); // nobody runs it
        // Keys are served meanwhile, half re-wrapped as they are.
        await expectAllUnwrap(s, 'cluster1', keys.slice(0, 500));
        s.app.services.jobs.start();
        const job = await jobEnd(s, href);
        expect(job.state, JSON.stringify(job)).toBe('success');
        expect(job.progress).toEqual({ done: keys.length, total: keys.length });
      } finally {
        s.app.services.jobs.start();
      }
      expect(await kekStates(s, admin)).toEqual({ 1: 'decommissioned', 2: 'decommissioned', 3: 'active' });
      await expectAllUnwrap(s, 'cluster1', keys);
    });
  });
}

describe.runIf(STORES.includes('postgres'))('a second node takes over a job on PostgreSQL', () => {
  let a: Okm;
  let b: TestServer;
  let keys: DataKey[];

  beforeAll(async () => {
    a = await startWithOkm({ store: 'postgres', jobLeaseMs: 1000, rekeyBatch: 10 });
    keys = await dataKeys(a, 'cluster1', 600);
    b = await startServer({ store: 'postgres', storeUrl: a.storeUrl, pgSchema: a.pgSchema, token: a.token, jobLeaseMs: 1000, rekeyBatch: 10 });
  });
  afterAll(async () => {
    await b?.close();
    await a?.close();
  });

  it('node B, synchronized, finishes the rekey node A started, after A’s lease runs out; every key unwraps on both', async () => {
    // B holds no copy of the root until it synchronizes.
    expectError(await b.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: keys[0].wrapped }), 503, '65600006');
    const sync = await b.call('PATCH', `/api/security/key-managers/${a.kmUuid}`, { onboard: { synchronize: true, existing_passphrase: PASSPHRASE } });
    expect(sync.status, JSON.stringify(sync.body)).toBe(200);
    await expectAllUnwrap(b, 'cluster1', keys.slice(0, 20));

    const nodeA = a.app.services.keyring.node.id;
    const nodeB = b.app.services.keyring.node.id;
    expect(nodeA).not.toBe(nodeB);
    await b.app.services.jobs.stop(); // so that A, not B, picks the job up
    const href = expectJobLink(await rekey(a, '?return_timeout=0'));
    const uuid = href.split('/').pop()!;
    await until('A running the job', async () => {
      const j = await jobRow(a, uuid);
      return j.lease_owner === nodeA && j.progress_done >= 50;
    }, 30_000, 2);

    // A stops. jobs.stop() is graceful and releases the lease; put A's live lease back, as a node
    // that died mid-job would have left it, so B has to wait for it to run out.
    await a.app.services.jobs.stop();
    const left = await jobRow(a, uuid);
    expect(left.state).toBe('running');
    expect(left.progress_done).toBeLessThan(left.progress_total);
    await db(a).updateTable('jobs').set({ lease_owner: nodeA, lease_until: Date.now() + 1000 }).where('uuid', '=', uuid).execute();

    b.app.services.jobs.start();
    await new Promise((r) => setTimeout(r, 300));
    const waiting = await jobRow(b, uuid);
    expect(waiting.lease_owner).toBe(nodeA); // the lease is respected while it lasts
    expect(waiting.progress_done).toBe(left.progress_done);

    const job = await jobEnd(b, href, 30_000);
    expect(job.state, JSON.stringify(job)).toBe('success');
    expect(job.progress).toEqual({ done: keys.length, total: keys.length });
    const row = await jobRow(b, uuid);
    expect(row.lease_owner).toBeNull();
    expect(Date.parse(row.end_time!)).toBeGreaterThan(Date.parse(left.updated_at));

    const adminSvm = (await b.app.services.svms.admin())!.uuid;
    expect(await kekStates(b, adminSvm)).toEqual({ 1: 'decommissioned', 2: 'active' });
    await expectAllUnwrap(b, 'cluster1', keys);
    await expectAllUnwrap(a, 'cluster1', keys);
    const fresh = await dataKey(a, 'cluster1');
    expect(fresh.kek_version).toBe(2);
    await expectAllUnwrap(b, 'cluster1', [fresh]);
  });
});
