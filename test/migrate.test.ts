/**
 * POST /api/security/key-managers/{source.uuid}/migrate over real HTTP on SQLite and PostgreSQL.
 * A data SVM without its own key manager keeps its keys under the admin SVM's; once it has its own,
 * its rekeys are refused with 65537547 until the migration (a job, with ONTAP's return_timeout
 * semantics) has re-wrapped its KEKs under its own root. The keys themselves never change: every
 * wrapped form clients hold unwraps to the same bytes before, during and after, and after a rekey.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { PASSPHRASE, STORES, dataKeys, expectAllUnwrap, expectError, expectJobLink, jobCount, jobEnd, noteSecret, startWithOkm, type DataKey, type TestServer } from './helpers.js';

type Okm = TestServer & { kmUuid: string };
const db = (s: TestServer) => s.app.services.store.db;
async function kekHomes(s: TestServer, svm: string): Promise<Record<number, string>> {
  const rows = await db(s).selectFrom('keks').select(['version', 'key_manager_uuid']).where('svm_uuid', '=', svm).orderBy('version').execute();
  return Object.fromEntries(rows.map((r) => [r.version, r.key_manager_uuid]));
}

const migrate = (s: TestServer, source: string, body: unknown, query = '') => s.call('POST', `/api/security/key-managers/${source}/migrate${query}`, body);
const rekey = (s: TestServer, km: string, query = '?return_timeout=60') => s.call('POST', `/api/security/key-managers/${km}/rekey-internal${query}`);

for (const store of STORES) {
  describe(`key migration on ${store}`, () => {
    let s: Okm;
    let admin: string;
    let vs1: string;
    let vs1Km: string;
    let vs2Km: string; // a data SVM with its own key manager and no keys under the admin SVM's
    let keys: DataKey[];
    const snapshot = async () => ({ jobs: await jobCount(s), keks: await kekHomes(s, vs1) });

    beforeAll(async () => {
      s = await startWithOkm({ store, rekeyBatch: 30 });
      admin = (await s.app.services.svms.admin())!.uuid;
      vs1 = (await s.call('POST', '/api/svm/svms', { name: 'vs1' })).headers.get('location')!.split('/').pop()!;
      await s.call('POST', '/api/svm/svms', { name: 'vs2' });
      const k2 = await s.call('POST', '/api/security/key-managers', { svm: { name: 'vs2' }, onboard: { passphrase: PASSPHRASE } });
      vs2Km = k2.headers.get('location')!.split('/').pop()!;
    });
    afterAll(() => s?.close());

    it('a data SVM without its own key manager keeps its keys under the admin SVM’s; with one of its own, its rekeys are refused (65537547)', async () => {
      keys = await dataKeys(s, 'vs1', 200);
      expect(await kekHomes(s, vs1)).toEqual({ 1: s.kmUuid });
      const km = await s.call('POST', '/api/security/key-managers', { svm: { name: 'vs1' }, onboard: { passphrase: PASSPHRASE } });
      expect(km.status).toBe(201);
      vs1Km = km.headers.get('location')!.split('/').pop()!;
      // Creating the key manager moves nothing: the keys stay where they were.
      expect(await kekHomes(s, vs1)).toEqual({ 1: s.kmUuid });
      const before = await snapshot();
      expectError(await rekey(s, vs1Km, '?return_timeout=0'), 400, '65537547');
      expectError(await rekey(s, vs1Km, '?return_timeout=30&return_records=true'), 400, '65537547');
      expect(await snapshot()).toEqual(before);
      await expectAllUnwrap(s, 'vs1', keys);
      // More keys of vs1 keep using the KEK it has.
      keys.push(...(await dataKeys(s, 'vs1', 10)));
      expect(await kekHomes(s, vs1)).toEqual({ 1: s.kmUuid });
    });

    it('refuses malformed or impossible migrations and changes nothing', async () => {
      const before = await snapshot();
      expectError(await migrate(s, s.kmUuid, {}), 400, '2');
      expectError(await migrate(s, s.kmUuid, { uuid: vs1Km, colour: 'red' }), 400, '262179');
      expectError(await migrate(s, s.kmUuid, { uuid: vs1Km }, '?return_timeout=121'), 400, '262197');
      expectError(await migrate(s, s.kmUuid, { uuid: vs1Km }, '?return_timeout=0&return_records=maybe'), 400, '262197');
      expectError(await migrate(s, randomUUID(), { uuid: vs1Km }), 404, '4');
      expectError(await migrate(s, s.kmUuid, { uuid: randomUUID() }), 404, '4');
      expectError(await migrate(s, s.kmUuid, { uuid: s.kmUuid }), 400, '65600033'); // to itself
      expectError(await migrate(s, vs2Km, { uuid: vs1Km }), 400, '65600033'); // between two data SVMs
      expectError(await migrate(s, s.kmUuid, { uuid: vs2Km }), 400, '65600032'); // vs2 has no keys under the admin SVM's
      expectError(await migrate(s, vs1Km, { uuid: s.kmUuid }), 400, '65600032'); // nor has vs1 under its own, yet
      expect(await snapshot()).toEqual(before);
    });

    it('a rekey is refused while the migration is queued (65600031); running the migration again answers with the same job', async () => {
      await s.app.services.jobs.stop();
      let href: string;
      try {
        href = expectJobLink(await migrate(s, s.kmUuid, { uuid: vs1Km, _links: { self: { href: `/api/security/key-managers/${vs1Km}` } } }, '?return_timeout=0'));
        const job = (await s.call('GET', href)).body;
        expect(job).toMatchObject({ state: 'queued', svm: { uuid: vs1 }, progress: { done: 0, total: 1 } });
        const before = await snapshot();
        expectError(await rekey(s, vs1Km, '?return_timeout=0'), 409, '65600031');
        expect(expectJobLink(await migrate(s, s.kmUuid, { uuid: vs1Km }))).toBe(href);
        expect(await snapshot()).toEqual(before);
        await expectAllUnwrap(s, 'vs1', keys); // online
      } finally {
        s.app.services.jobs.start();
      }
      const job = await jobEnd(s, href);
      expect(job).toMatchObject({ state: 'success', code: 0, progress: { done: 1, total: 1 } });
      expect(await kekHomes(s, vs1)).toEqual({ 1: vs1Km });
      await expectAllUnwrap(s, 'vs1', keys);
    });

    it('after the migration the rekey works, and every key still unwraps to the same bytes', async () => {
      const r = await rekey(s, vs1Km, '?return_timeout=60&return_records=true');
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      expect(r.body.records[0].progress).toEqual({ done: keys.length, total: keys.length });
      expect(await kekHomes(s, vs1)).toEqual({ 1: vs1Km, 2: vs1Km });
      await expectAllUnwrap(s, 'vs1', keys);
      // Bound to its tenant: the admin SVM does not open them.
      expectError(await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: keys[0].wrapped }), 400, '65600012');
      // Nothing is left to migrate.
      expectError(await migrate(s, s.kmUuid, { uuid: vs1Km }), 400, '65600032');
      // The audit trail names the migration, with no secret.
      const ev = await s.call('GET', '/api/v1/audit/events?action=key_manager.migrate&limit=10');
      expect(ev.body.records.length).toBe(1);
      expect(ev.body.records[0].svm_uuid).toBe(vs1);
      expect(JSON.stringify(ev.body)).not.toContain(PASSPHRASE);
    });

    it('migrates back to the admin SVM’s key manager with return_timeout: 201 and the job record; rekeys are then refused again', async () => {
      const r = await migrate(s, vs1Km, { uuid: s.kmUuid }, '?return_timeout=60&return_records=true');
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      expect(r.body.num_records).toBe(1);
      expect(r.body.records[0]).toMatchObject({ state: 'success', progress: { done: 2, total: 2 }, svm: { uuid: vs1 } });
      expect(await kekHomes(s, vs1)).toEqual({ 1: s.kmUuid, 2: s.kmUuid });
      await expectAllUnwrap(s, 'vs1', keys);
      expectError(await rekey(s, vs1Km, '?return_timeout=0'), 400, '65537547');
      const plain = await migrate(s, s.kmUuid, { uuid: vs1Km }, '?return_timeout=60');
      expect(plain.status, JSON.stringify(plain.body)).toBe(201);
      expect(plain.body).toEqual({});
      expect(await kekHomes(s, vs1)).toEqual({ 1: vs1Km, 2: vs1Km });
      await expectAllUnwrap(s, 'vs1', keys);
      // The admin SVM's own KEK never moved.
      expect(await kekHomes(s, admin)).toEqual({ 1: s.kmUuid });
    });

    it('a migration and a switch of the admin SVM’s keystore exclude each other; after both, every key unwraps', async () => {
      const c2 = await s.call('POST', '/api/security/key-managers?create_inactive=true', { onboard: { passphrase: PASSPHRASE } });
      expect(c2.status).toBe(201);
      const C2 = c2.headers.get('location')!.split('/').pop()!;
      // vs1's keys go back under the admin SVM's key manager; while that migration waits, the admin SVM cannot switch.
      await s.app.services.jobs.stop();
      let href: string;
      try {
        href = expectJobLink(await migrate(s, vs1Km, { uuid: s.kmUuid }, '?return_timeout=0'));
        const before = await snapshot();
        expectError(await s.call('PATCH', `/api/security/key-stores/${C2}`, { enabled: true }), 409, '65600031');
        expect(await snapshot()).toEqual(before);
      } finally {
        s.app.services.jobs.start();
      }
      expect((await jobEnd(s, href)).state).toBe('success');
      expect(await kekHomes(s, vs1)).toEqual({ 1: s.kmUuid, 2: s.kmUuid });

      // While the admin SVM switches to C2, no migration touching it can start.
      await s.app.services.jobs.stop();
      try {
        href = expectJobLink(await s.call('PATCH', `/api/security/key-stores/${C2}?return_timeout=0`, { enabled: true }));
        const before = await snapshot();
        expectError(await migrate(s, C2, { uuid: vs1Km }), 400, '65537610');
        expectError(await migrate(s, s.kmUuid, { uuid: vs1Km }), 400, '65600033'); // no longer enabled
        expect(await snapshot()).toEqual(before);
      } finally {
        s.app.services.jobs.start();
      }
      expect((await jobEnd(s, href)).state).toBe('success');
      // The switch carried vs1's borrowed KEKs to C2 with the admin SVM's own.
      expect(await kekHomes(s, vs1)).toEqual({ 1: C2, 2: C2 });
      expect(await kekHomes(s, admin)).toEqual({ 1: C2 });
      await expectAllUnwrap(s, 'vs1', keys);
      expectError(await rekey(s, vs1Km, '?return_timeout=0'), 400, '65537547');
      const r = await migrate(s, C2, { uuid: vs1Km }, '?return_timeout=60');
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      expect(await kekHomes(s, vs1)).toEqual({ 1: vs1Km, 2: vs1Km });
      const rk = await rekey(s, vs1Km);
      expect(rk.status, JSON.stringify(rk.body)).toBe(201);
      await expectAllUnwrap(s, 'vs1', keys);
    });
  });
}
