/**
 * ONTAP /api/security/key-stores over real HTTP on SQLite and PostgreSQL: the listing's shape and
 * filters, a second (disabled) configuration created with create_inactive, and switching the admin
 * SVM between its two onboard configurations with PATCH enabled=true: a job that re-wraps every KEK
 * (the admin SVM's, and those of a data SVM that keeps its keys under the admin SVM's key manager)
 * under the new root, during which (and after a failed switch) rekeys are refused with 65537610
 * until the PATCH is run again. Every key unwraps to its original bytes at every stage.
 *
 * Why two onboard configurations: today okm is the only key manager type; ONTAP lets a second
 * configuration be created inactive (POST /security/key-managers?create_inactive=true) and enabled
 * later through /security/key-stores, which is what proves the switch until KMIP arrives.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { PASSPHRASE, STORES, dataKeys, expectAllUnwrap, expectError, expectJobLink, jobCount, jobEnd, noteSecret, startServer, startWithOkm, type DataKey, type TestServer } from './helpers.js';

type Okm = TestServer & { kmUuid: string };
const db = (s: TestServer) => s.app.services.store.db;
/** Which configuration wraps each KEK, as `svm:version → key manager`. */
async function kekHomes(s: TestServer): Promise<Record<string, string>> {
  const rows = await db(s).selectFrom('keks').select(['svm_uuid', 'version', 'key_manager_uuid']).orderBy('svm_uuid').orderBy('version').execute();
  return Object.fromEntries(rows.map((r) => [`${r.svm_uuid}:${r.version}`, r.key_manager_uuid]));
}

const KS = '/api/security/key-stores';

for (const store of STORES) {
  describe(`key stores on ${store}`, () => {
    let s: Okm;
    let admin: string;
    let A: string; // the cluster's first onboard configuration
    let B: string; // the second, created inactive
    let vs1: string; // a data SVM with its own key manager
    let vs1Km: string;
    let vsb: string; // a data SVM without one: its keys live under the admin SVM's key manager
    let adminKeys: DataKey[];
    let borrowedKeys: DataKey[];
    let vs1Keys: DataKey[];
    const snapshot = async () => ({ jobs: await jobCount(s), keks: await kekHomes(s), stores: (await s.call('GET', `${KS}?fields=*`)).body.records });

    beforeAll(async () => {
      s = await startWithOkm({ store, rekeyBatch: 40 });
      admin = (await s.app.services.svms.admin())!.uuid;
      A = s.kmUuid;
      vs1 = (await s.call('POST', '/api/svm/svms', { name: 'vs1' })).headers.get('location')!.split('/').pop()!;
      vsb = (await s.call('POST', '/api/svm/svms', { name: 'vsb' })).headers.get('location')!.split('/').pop()!;
      const km = await s.call('POST', '/api/security/key-managers', { svm: { name: 'vs1' }, onboard: { passphrase: PASSPHRASE } });
      expect(km.status).toBe(201);
      vs1Km = km.headers.get('location')!.split('/').pop()!;
    });
    afterAll(() => s?.close());

    it('lists every configuration in ONTAP’s shape, with fields, filters and max_records', async () => {
      const r = await s.call('GET', KS);
      expect(r.status).toBe(200);
      expect(r.body.num_records).toBe(2);
      const [c, v] = r.body.records;
      expect(c).toEqual({
        uuid: A,
        type: 'okm',
        location: 'onboard',
        enabled: true,
        state: 'active',
        scope: 'cluster',
        configuration: { name: 'default', uuid: A, _links: { self: { href: `/api/security/key-managers/${A}` } } },
        _links: { self: { href: `${KS}/${A}` } },
      });
      expect(v).toMatchObject({ uuid: vs1Km, type: 'okm', enabled: true, state: 'active', scope: 'svm', svm: { uuid: vs1, name: 'vs1', _links: { self: { href: `/api/svm/svms/${vs1}` } } } });

      expect((await s.call('GET', `${KS}/${A}`)).body).toEqual(c);
      expect((await s.call('GET', `${KS}/${A}?fields=type`)).body).toEqual({ uuid: A, type: 'okm', _links: c._links });
      expect((await s.call('GET', `${KS}?fields=state,svm.name`)).body.records).toEqual([
        { uuid: A, state: 'active', _links: c._links },
        { uuid: vs1Km, state: 'active', svm: { name: 'vs1' }, _links: v._links },
      ]);
      expect((await s.call('GET', `${KS}?max_records=1`)).body.records.map((x: any) => x.uuid)).toEqual([A]);
      expect((await s.call('GET', `${KS}?svm.name=vs1`)).body.records.map((x: any) => x.uuid)).toEqual([vs1Km]);
      expect((await s.call('GET', `${KS}?scope=cluster`)).body.records.map((x: any) => x.uuid)).toEqual([A]);
      expect((await s.call('GET', `${KS}?configuration.uuid=${vs1Km}`)).body.records.map((x: any) => x.uuid)).toEqual([vs1Km]);
      expect((await s.call('GET', `${KS}?enabled=false`)).body.records).toEqual([]);
      expect((await s.call('GET', `${KS}?type=kmip`)).body.records).toEqual([]);
      expect((await s.call('GET', `${KS}?state=switching`)).body.records).toEqual([]);
      expect((await s.call('GET', `${KS}?location=external`)).body.records).toEqual([]);
      const counted = await s.call('GET', `${KS}?return_records=false`);
      expect(counted.body.num_records).toBe(2);
      expect(counted.body.records).toBeUndefined();

      expectError(await s.call('GET', `${KS}?enabled=yes`), 400, '262197');
      expectError(await s.call('GET', `${KS}?max_records=0`), 400, '262197');
      expectError(await s.call('GET', `${KS}?return_timeout=121`), 400, '262197');
      expectError(await s.call('GET', `${KS}?order_by=uuid`), 400, '262179');
      expect((await s.call('GET', `${KS}?type=vault`)).status).toBe(400);
      expectError(await s.call('GET', `${KS}/${randomUUID()}`), 404, '4');
    });

    it('creates a second configuration inactive (ONTAP create_inactive): listed disabled, without a state', async () => {
      expectError(await s.call('POST', '/api/security/key-managers', { onboard: { passphrase: PASSPHRASE } }), 409, '65600016');
      expectError(await s.call('POST', '/api/security/key-managers?create_inactive=perhaps', { onboard: { passphrase: PASSPHRASE } }), 400, '262197');
      const r = await s.call('POST', '/api/security/key-managers?create_inactive=true', { onboard: { passphrase: PASSPHRASE } });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      B = r.headers.get('location')!.split('/').pop()!;
      const g = await s.call('GET', `${KS}/${B}`);
      expect(g.body).toEqual({
        uuid: B,
        type: 'okm',
        location: 'onboard',
        enabled: false,
        scope: 'cluster',
        configuration: { name: 'default', uuid: B, _links: { self: { href: `/api/security/key-managers/${B}` } } },
        _links: { self: { href: `${KS}/${B}` } },
      });
      expect((await s.call('GET', `/api/security/key-managers/${B}`)).body.onboard).toEqual({ enabled: false });
      expect((await s.call('GET', `${KS}?enabled=false`)).body.records.map((x: any) => x.uuid)).toEqual([B]);
      // New keys keep using the enabled configuration.
      expect(await kekHomes(s)).toEqual({ [`${admin}:1`]: A, [`${vs1}:1`]: vs1Km });
    });

    it('the store itself refuses a second enabled configuration of one SVM (unique index of 0005)', async () => {
      await expect(db(s).updateTable('key_managers').set({ enabled: 1 }).where('uuid', '=', B).execute()).rejects.toThrow();
      expect((await s.call('GET', `${KS}?enabled=true&scope=cluster`)).body.records.map((x: any) => x.uuid)).toEqual([A]);
    });

    it('setup: keys in the admin SVM (two KEK versions), in a data SVM that borrows its key manager, and in vs1', async () => {
      adminKeys = await dataKeys(s, 'cluster1', 120);
      const rk = await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=60`);
      expect(rk.status, JSON.stringify(rk.body)).toBe(201);
      adminKeys.push(...(await dataKeys(s, 'cluster1', 30)));
      borrowedKeys = await dataKeys(s, 'vsb', 50);
      vs1Keys = await dataKeys(s, 'vs1', 20);
      expect(await kekHomes(s)).toEqual({ [`${admin}:1`]: A, [`${admin}:2`]: A, [`${vs1}:1`]: vs1Km, [`${vsb}:1`]: A });
    });

    it('refuses malformed PATCHes and changes nothing', async () => {
      const before = await snapshot();
      expectError(await s.call('PATCH', `${KS}/${B}`, {}), 400, '2');
      expectError(await s.call('PATCH', `${KS}/${B}`, { enabled: false }), 400, '3');
      expectError(await s.call('PATCH', `${KS}/${B}`, { enabled: 'yes' }), 400, '2');
      expectError(await s.call('PATCH', `${KS}/${B}`, { enabled: true, type: 'kmip' }), 400, '262179');
      expectError(await s.call('PATCH', `${KS}/${B}?return_timeout=121`, { enabled: true }), 400, '262197');
      expectError(await s.call('PATCH', `${KS}/${B}?return_records=true`, { enabled: true }), 400, '262179');
      expectError(await s.call('PATCH', `${KS}/${randomUUID()}`, { enabled: true }), 404, '4');
      expect(await snapshot()).toEqual(before);
      // Enabling the configuration that is already enabled and active changes nothing either.
      const same = await s.call('PATCH', `${KS}/${A}`, { enabled: true });
      expect(same.status, JSON.stringify(same.body)).toBe(200);
      expect(same.body).toEqual({});
      expect(await snapshot()).toEqual(before);
    });

    it('switches the admin SVM to B: while the job is unfinished rekeys are refused with 65537610; then every KEK is under B and every key unwraps', async () => {
      await s.app.services.jobs.stop(); // hold the switch at its start
      let href: string;
      try {
        href = expectJobLink(await s.call('PATCH', `${KS}/${B}?return_timeout=0`, { enabled: true }));
        const list = (await s.call('GET', `${KS}?scope=cluster`)).body.records;
        expect(list.map((x: any) => [x.uuid, x.enabled, x.state])).toEqual([
          [A, false, undefined],
          [B, true, 'switching'],
        ]);
        expect((await s.call('GET', `${KS}?state=switching`)).body.records.map((x: any) => x.uuid)).toEqual([B]);
        const jobs = await jobCount(s);
        const homes = await kekHomes(s);
        expectError(await s.call('POST', `/api/security/key-managers/${B}/rekey-internal?return_timeout=0`), 400, '65537610');
        expectError(await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=30&return_records=true`), 400, '65537610');
        // Enabling another configuration while this switch is unfinished is refused too.
        expectError(await s.call('PATCH', `${KS}/${A}`, { enabled: true }), 400, '65537610');
        // Re-running the PATCH while the job waits answers with the same job.
        const again = await s.call('PATCH', `${KS}/${B}`, { enabled: true });
        expect(expectJobLink(again)).toBe(href);
        expect(await jobCount(s)).toBe(jobs);
        expect(await kekHomes(s)).toEqual(homes);
        // Keys are served while the switch is pending.
        await expectAllUnwrap(s, 'cluster1', adminKeys.slice(0, 10));
      } finally {
        s.app.services.jobs.start();
      }
      const job = await jobEnd(s, href);
      expect(job).toMatchObject({ state: 'success', code: 0, progress: { done: 3, total: 3 }, svm: { uuid: admin } });
      expect(await kekHomes(s)).toEqual({ [`${admin}:1`]: B, [`${admin}:2`]: B, [`${vs1}:1`]: vs1Km, [`${vsb}:1`]: B });
      expect((await s.call('GET', `${KS}?scope=cluster&fields=enabled,state`)).body.records.map((x: any) => [x.uuid, x.enabled, x.state])).toEqual([
        [A, false, undefined],
        [B, true, 'active'],
      ]);
      await expectAllUnwrap(s, 'cluster1', adminKeys);
      await expectAllUnwrap(s, 'vsb', borrowedKeys);
      await expectAllUnwrap(s, 'vs1', vs1Keys);
      // Rekeys work again, through the enabled configuration only.
      const rk = await s.call('POST', `/api/security/key-managers/${B}/rekey-internal?return_timeout=60`);
      expect(rk.status, JSON.stringify(rk.body)).toBe(201);
      expectError(await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=0`), 409, '65600017');
      await expectAllUnwrap(s, 'cluster1', adminKeys);
      const fresh = await dataKeys(s, 'cluster1', 5);
      adminKeys.push(...fresh);
      expect((await kekHomes(s))[`${admin}:3`]).toBe(B);
      // The audit trail names the switch, with no secret.
      const ev = await s.call('GET', '/api/v1/audit/events?action=key_store.enable&limit=10');
      expect(ev.body.records.map((e: any) => e.object_id)).toEqual([B]);
      expect(JSON.stringify(ev.body)).not.toContain(PASSPHRASE);
    });

    it('after a failed switch rekeys stay refused (65537610) until the PATCH is run again, which completes it', async () => {
      await s.app.services.jobs.stop();
      let uuid: string;
      try {
        uuid = expectJobLink(await s.call('PATCH', `${KS}/${A}?return_timeout=0`, { enabled: true })).split('/').pop()!;
        // The job ends in failure before it moves anything, as the runner records a failed job.
        await db(s).updateTable('jobs').set({ state: 'failure', code: 5, message: 'Internal error: the job failed repeatedly; see the server log.', end_time: new Date().toISOString() }).where('uuid', '=', uuid).execute();
      } finally {
        s.app.services.jobs.start();
      }
      expect((await s.call('GET', `/api/cluster/jobs/${uuid}`)).body.state).toBe('failure');
      expect((await s.call('GET', `${KS}/${A}`)).body).toMatchObject({ enabled: true, state: 'switching' });
      expectError(await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=0`), 400, '65537610');
      expectError(await s.call('PATCH', `${KS}/${B}`, { enabled: true }), 400, '65537610');
      await expectAllUnwrap(s, 'cluster1', adminKeys); // still online

      const done = await s.call('PATCH', `${KS}/${A}?return_timeout=60`, { enabled: true });
      expect(done.status, JSON.stringify(done.body)).toBe(200);
      expect(done.body).toEqual({});
      expect((await s.call('GET', `${KS}/${A}`)).body).toMatchObject({ enabled: true, state: 'active' });
      const homes = await kekHomes(s);
      expect(homes).toEqual({ [`${admin}:1`]: A, [`${admin}:2`]: A, [`${admin}:3`]: A, [`${vs1}:1`]: vs1Km, [`${vsb}:1`]: A });
      await expectAllUnwrap(s, 'cluster1', adminKeys);
      await expectAllUnwrap(s, 'vsb', borrowedKeys);
      const rk = await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=60`);
      expect(rk.status, JSON.stringify(rk.body)).toBe(201);
      await expectAllUnwrap(s, 'cluster1', adminKeys);
    });

    it('a configuration being initialized (65539436) or disabled (65539437) refuses rekeys and switches', async () => {
      // No onboard configuration passes through these states today (an external one does while it
      // connects to its servers, or is taken down); the state is written as such a type would.
      const set = (uuid: string, state: string) => db(s).updateTable('key_managers').set({ state }).where('uuid', '=', uuid).execute();
      const before = await snapshot();
      try {
        await set(A, 'initializing');
        expect((await s.call('GET', `${KS}/${A}`)).body.state).toBe('initializing');
        expectError(await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=0`), 400, '65539436');
        await set(A, 'disabling');
        expectError(await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=30`), 400, '65539437');
        await set(A, 'active');
        await set(B, 'initializing');
        expectError(await s.call('PATCH', `${KS}/${B}`, { enabled: true }), 400, '65539436');
        await set(B, 'disabling');
        expectError(await s.call('PATCH', `${KS}/${B}`, { enabled: true }), 400, '65539437');
        await set(B, 'disabled');
        expect(await snapshot()).toEqual(before);
      } finally {
        await set(A, 'active');
        await set(B, 'disabled');
      }
    });

    it('a switch is refused while a rekey of the SVM is queued (65600031)', async () => {
      await s.app.services.jobs.stop();
      try {
        const rk = await s.call('POST', `/api/security/key-managers/${A}/rekey-internal?return_timeout=0`);
        const href = expectJobLink(rk);
        const before = await snapshot();
        expectError(await s.call('PATCH', `${KS}/${B}`, { enabled: true }), 409, '65600031');
        expect(await snapshot()).toEqual(before);
        s.app.services.jobs.start();
        expect((await jobEnd(s, href)).state).toBe('success');
      } finally {
        s.app.services.jobs.start();
      }
      await expectAllUnwrap(s, 'cluster1', adminKeys);
    });

    it('a paused switch keeps refusing rekeys (65537610); running the PATCH again resumes it to the end', async () => {
      await s.app.services.jobs.stop();
      let href: string;
      try {
        href = expectJobLink(await s.call('PATCH', `${KS}/${B}?return_timeout=0`, { enabled: true }));
        // Paused as ONTAP's job action leaves a job: no lease, cursor kept.
        await db(s).updateTable('jobs').set({ state: 'paused', message: 'paused', lease_owner: null, lease_until: null }).where('uuid', '=', href.split('/').pop()!).execute();
      } finally {
        s.app.services.jobs.start();
      }
      await new Promise((r) => setTimeout(r, 300));
      expect((await s.call('GET', href)).body.state).toBe('paused');
      expectError(await s.call('POST', `/api/security/key-managers/${B}/rekey-internal?return_timeout=0`), 400, '65537610');
      const jobs = await jobCount(s);
      const done = await s.call('PATCH', `${KS}/${B}?return_timeout=60`, { enabled: true });
      expect(done.status, JSON.stringify(done.body)).toBe(200);
      expect(await jobCount(s)).toBe(jobs); // the same job, resumed
      expect((await s.call('GET', href)).body.state).toBe('success');
      expect((await s.call('GET', `${KS}/${B}`)).body).toMatchObject({ enabled: true, state: 'active' });
      expect(Object.values(await kekHomes(s)).filter((km) => km === A)).toEqual([]);
      await expectAllUnwrap(s, 'cluster1', adminKeys);
      await expectAllUnwrap(s, 'vsb', borrowedKeys);
      await expectAllUnwrap(s, 'vs1', vs1Keys);
    });
  });
}

if (STORES.includes('postgres')) {
  describe('a switch and a rekey started at once on two nodes sharing PostgreSQL', () => {
    let a: Okm;
    let b: TestServer;
    let B: string;
    let keys: DataKey[];

    beforeAll(async () => {
      a = await startWithOkm({ store: 'postgres' });
      b = await startServer({ store: 'postgres', storeUrl: a.storeUrl, pgSchema: a.pgSchema, token: a.token });
      const r = await a.call('POST', '/api/security/key-managers?create_inactive=true', { onboard: { passphrase: PASSPHRASE } });
      B = r.headers.get('location')!.split('/').pop()!;
      for (const km of [a.kmUuid, B]) {
        const sync = await b.call('PATCH', `/api/security/key-managers/${km}`, { onboard: { synchronize: true, existing_passphrase: PASSPHRASE } });
        expect(sync.status, JSON.stringify(sync.body)).toBe(200);
      }
      keys = await dataKeys(a, 'cluster1', 40);
    });
    afterAll(async () => {
      await b?.close();
      await a?.close();
    });

    it('exactly one of them is accepted; the other is refused and changes nothing', async () => {
      await a.app.services.jobs.stop();
      await b.app.services.jobs.stop();
      try {
        const [sw, rk] = await Promise.all([
          a.call('PATCH', `${KS}/${B}?return_timeout=0`, { enabled: true }),
          b.call('POST', `/api/security/key-managers/${a.kmUuid}/rekey-internal?return_timeout=0`),
        ]);
        const accepted = [sw, rk].filter((r) => r.status === 202);
        expect(accepted.length, JSON.stringify([sw.body, rk.body])).toBe(1);
        if (sw.status === 202) expectError(rk, 400, '65537610');
        else expectError(sw, 409, '65600031');
        expect((await db(a).selectFrom('jobs').select('type').execute()).map((j) => j.type)).toEqual([sw.status === 202 ? 'key-store-switch' : 'rekey-internal']);
      } finally {
        a.app.services.jobs.start();
        b.app.services.jobs.start();
      }
      // Whichever won runs to the end; then the other goes through.
      const first = (await db(a).selectFrom('jobs').select(['uuid', 'type']).executeTakeFirstOrThrow());
      expect((await jobEnd(a, `/api/cluster/jobs/${first.uuid}`)).state).toBe('success');
      if (first.type === 'rekey-internal') {
        const sw = await a.call('PATCH', `${KS}/${B}?return_timeout=60`, { enabled: true });
        expect(sw.status, JSON.stringify(sw.body)).toBe(200);
      } else {
        const rk = await b.call('POST', `/api/security/key-managers/${B}/rekey-internal?return_timeout=60`);
        expect(rk.status, JSON.stringify(rk.body)).toBe(201);
      }
      expect((await a.call('GET', `${KS}/${B}`)).body).toMatchObject({ enabled: true, state: 'active' });
      await expectAllUnwrap(a, 'cluster1', keys);
      await expectAllUnwrap(b, 'cluster1', keys);
    });
  });
}
