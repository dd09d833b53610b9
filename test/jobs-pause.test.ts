/**
 * ONTAP job actions over real HTTP on SQLite and PostgreSQL: PATCH /api/cluster/jobs/{uuid} with
 * action=pause|resume|cancel on a rekey-internal job. A paused job holds no lease and makes no
 * progress, keys are served meanwhile, and resume continues from its cursor to the end; a cancelled
 * job ends as a failure with code 65600050 where its last step left it, every key still unwrapping
 * to its bytes, and a later rekey finishes the work. ONTAP's codes for actions a job's state does
 * not allow; refusals change nothing; Element sees the same jobs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, dataKeys as makeDataKeys, expectAllUnwrap as expectAllUnwrapIn, expectError, jobEnd as jobEndAt, noteSecret, rpc, startWithOkm, type DataKey, type TestServer } from './helpers.js';

type Okm = TestServer & { kmUuid: string };

const N = 600;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const dataKeys = (s: TestServer, n: number) => makeDataKeys(s, 'cluster1', n);
const expectAllUnwrap = (s: TestServer, keys: DataKey[]) => expectAllUnwrapIn(s, 'cluster1', keys);

const job = async (s: TestServer, uuid: string) => {
  const r = await s.call('GET', `/api/cluster/jobs/${uuid}`);
  expect(r.status).toBe(200);
  return r.body;
};

const jobEnd = (s: TestServer, uuid: string) => jobEndAt(s, `/api/cluster/jobs/${uuid}`, 60_000);

const patch = (s: TestServer, uuid: string, action: string, token?: string) => s.call('PATCH', `/api/cluster/jobs/${uuid}?action=${action}`, undefined, token);

for (const store of STORES) {
  describe(`job pause, resume and cancel on ${store}`, () => {
    let s: Okm;
    let keys: DataKey[];
    beforeAll(async () => {
      // One key per step, so a job lasts long enough to be paused mid-way.
      s = await startWithOkm({ store, rekeyBatch: 1 });
      keys = await dataKeys(s, N);
    }, 120_000);
    afterAll(() => s?.close());

    /** Starts a rekey-internal and pauses it as soon as it has re-wrapped some keys. */
    async function startAndPause(): Promise<string> {
      const r = await s.call('POST', `/api/security/key-managers/${s.kmUuid}/rekey-internal?return_timeout=0`);
      expect(r.status, JSON.stringify(r.body)).toBe(202);
      const uuid = r.body.job.uuid as string;
      for (const end = Date.now() + 30_000; (await job(s, uuid)).progress.done < 5; ) {
        if (Date.now() > end) throw new Error('no progress');
        await sleep(5);
      }
      const p = await patch(s, uuid, 'pause');
      expect(p.status, JSON.stringify(p.body)).toBe(200);
      return uuid;
    }

    it('pauses a rekey mid-way (no lease, no progress, keys served) and resumes it from its cursor', { timeout: 120_000 }, async () => {
      const uuid = await startAndPause();
      const paused = await job(s, uuid);
      expect(paused.state).toBe('paused');
      const row = (await s.app.services.repos.jobs.find(uuid))!;
      expect(row.lease_owner).toBeNull();
      expect(row.cursor).not.toBeNull();
      const at = paused.progress.done;
      expect(at).toBeGreaterThan(0);
      expect(at).toBeLessThan(N);
      await expectAllUnwrap(s, keys);
      await sleep(300);
      expect((await job(s, uuid)).progress.done).toBe(at);
      // Actions its state does not allow.
      expectError(await patch(s, uuid, 'pause'), 400, '458776');
      // Element sees it as running.
      const el = await rpc(s, 'GetAsyncResult', { asyncHandle: row.handle, keepResult: true });
      expect(el.body.result).toMatchObject({ status: 'running', resultType: 'RekeyInternal', details: { state: 'paused' } });

      expect((await patch(s, uuid, 'resume')).status).toBe(200);
      expectError(await patch(s, uuid, 'resume'), 400, '458771');
      const end = await jobEnd(s, uuid);
      expect(end).toMatchObject({ state: 'success', code: 0, progress: { done: N, total: N } });
      await expectAllUnwrap(s, keys);
      for (const a of ['pause', 'resume', 'cancel']) expectError(await patch(s, uuid, a), 400, '458762');
    });

    it('cancels a paused rekey: a failure with a clear code, keys intact, and a later rekey finishes the work', { timeout: 120_000 }, async () => {
      const uuid = await startAndPause();
      const c = await patch(s, uuid, 'cancel');
      expect(c.status, JSON.stringify(c.body)).toBe(200);
      const j = await job(s, uuid);
      expect(j).toMatchObject({ state: 'failure', code: 65600050 });
      expect(j.message).toMatch(/[Cc]ancelled/);
      expect(j.end_time).toBeTruthy();
      await expectAllUnwrap(s, keys);
      // Keys sit under two KEK versions now; none is lost.
      const versions = await s.app.services.store.db.selectFrom('deks').select('kek_version').distinct().execute();
      expect(versions.length).toBe(2);
      const el = await rpc(s, 'GetAsyncResult', { asyncHandle: (await s.app.services.repos.jobs.find(uuid))!.handle, keepResult: true });
      expect(el.body.result).toMatchObject({ status: 'complete', error: { name: 'xJobCancelled' } });

      const again = await s.call('POST', `/api/security/key-managers/${s.kmUuid}/rekey-internal?return_timeout=0`);
      expect(again.status).toBe(202);
      const end = await jobEnd(s, again.body.job.uuid);
      expect(end.state).toBe('success');
      const after = await s.app.services.store.db.selectFrom('deks').select('kek_version').distinct().execute();
      expect(after.length).toBe(1);
      await expectAllUnwrap(s, keys);
    });

    it('cancels a running rekey', { timeout: 120_000 }, async () => {
      const r = await s.call('POST', `/api/security/key-managers/${s.kmUuid}/rekey-internal?return_timeout=0`);
      expect(r.status).toBe(202);
      const uuid = r.body.job.uuid;
      // Running, with keys already re-wrapped: the cancel must stop it mid-way, not before it starts.
      for (const end = Date.now() + 30_000; (await job(s, uuid)).progress.done < 5; ) {
        if (Date.now() > end) throw new Error('no progress');
        await sleep(5);
      }
      const c = await patch(s, uuid, 'cancel');
      expect(c.status, JSON.stringify(c.body)).toBe(200);
      const j = await jobEnd(s, uuid);
      expect(j).toMatchObject({ state: 'failure', code: 65600050 });
      expect(j.progress.done).toBeGreaterThanOrEqual(5);
      expect(j.progress.done).toBeLessThan(j.progress.total);
      const done = j.progress.done;
      await sleep(200);
      expect((await job(s, uuid)).progress.done).toBe(done);
      await expectAllUnwrap(s, keys);
    });

    it('refuses bad actions, unknown jobs and callers without the right, changing nothing', async () => {
      const any = (await s.call('GET', '/api/cluster/jobs')).body.records[0].uuid;
      const before = JSON.stringify((await s.call('GET', '/api/cluster/jobs?fields=*')).body.records);
      expectError(await patch(s, any, 'explode'), 400, '2');
      expectError(await s.call('PATCH', `/api/cluster/jobs/${any}`), 400, '2');
      expectError(await patch(s, '00000000-0000-4000-8000-000000000000', 'pause'), 404, '4');
      const ro = await s.call('POST', '/api/v1/auth/tokens', { name: 'ro', role: 'readonly' });
      noteSecret(ro.body.token);
      expectError(await patch(s, any, 'cancel', ro.body.token), 403, '6');
      expectError(await patch(s, any, 'cancel', null as unknown as string), 401, '10');
      expect(JSON.stringify((await s.call('GET', '/api/cluster/jobs?fields=*')).body.records)).toBe(before);
    });
  });
}
