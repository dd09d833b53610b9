/**
 * Element JSON-RPC over real HTTP on SQLite and PostgreSQL: the envelope (method matched
 * case-insensitively, id echoed, unused parameters reported), Element's error shape for every kind
 * of refusal (each changing nothing), Basic credentials as Element clients send them (429 while a
 * user name is locked out), and the master key: present from the first start while ONTAP still
 * lists no key manager, rekeyed on a
 * fresh install and under an onboard key manager with keys in several SVMs (every DEK unwrapping
 * to the same bytes afterwards, across a restart and an unseal with the passphrase), reported by
 * GetSoftwareEncryptionAtRestInfo, GetAsyncResult (keepResult) and ListAsyncResults.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { PASSPHRASE, STORES, dataKeys as makeDataKeys, expectAllUnwrap as expectAllUnwrapIn, expectElementError, expectRpcResult, jobCount, noteSecret, rpc, startServer, waitAsync, type DataKey as Key, type TestServer } from './helpers.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

/** A data key and the SVM it belongs to. */
type DataKey = Key & { svm: string };

async function dataKeys(s: TestServer, svm: string, n: number): Promise<DataKey[]> {
  return (await makeDataKeys(s, svm, n)).map((k) => ({ ...k, svm }));
}

async function expectAllUnwrap(s: TestServer, keys: DataKey[]) {
  const bySvm = new Map<string, DataKey[]>();
  for (const k of keys) bySvm.set(k.svm, [...(bySvm.get(k.svm) ?? []), k]);
  for (const [svm, ks] of bySvm) await expectAllUnwrapIn(s, svm, ks);
}

for (const store of STORES) {
  describe(`Element JSON-RPC on ${store}`, () => {
    let s: TestServer;
    beforeAll(async () => {
      s = await startServer({ store });
    });
    afterAll(() => s?.close());

    it('has an internal master key from the first start, while ONTAP lists no key manager', async () => {
      const info = expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo'));
      expect(info).toMatchObject({ state: 'enabled', version: 1, masterKeyInfo: { keyManagementType: 'internal' } });
      expect(info.masterKeyInfo.keyID).toMatch(UUID);
      expect(info.masterKeyInfo.keyCreatedTime).toMatch(TIME);
      expect(info.rekeyMasterKeyAsyncResultID).toBeUndefined();
      const kms = await s.call('GET', '/api/security/key-managers');
      expect(kms.status).toBe(200);
      expect(kms.body.num_records).toBe(0);
      // Its material is sealed under this node's seal only.
      const row = await s.app.services.repos.masterKeys.find(info.masterKeyInfo.keyID);
      expect(await s.app.services.master.internalOpens(row!)).toBe(true);
    });

    it('rekeys the master key on a fresh install (method and type in any case, as the seed sends them)', async () => {
      const before = expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo')).masterKeyInfo;
      const started = expectRpcResult(await rpc(s, 'rekeysoftwareencryptionatrestmasterkey', { keyManagementType: 'internal' }, { id: 'rk-1' }), 'rk-1');
      expect(Object.keys(started)).toEqual(['asyncHandle']);
      expect(Number.isInteger(started.asyncHandle)).toBe(true);
      const done = await waitAsync(s, started.asyncHandle);
      expect(done).toMatchObject({ status: 'complete', resultType: 'RekeySoftwareEncryptionAtRestMasterKey' });
      expect(done.createTime).toMatch(TIME);
      expect(done.lastUpdateTime).toMatch(TIME);
      expect(done.error).toBeUndefined();
      expect(done.result.keyToDecommission).toEqual(before);
      expect(done.result.newKey).toMatchObject({ keyManagementType: 'internal' });
      expect(done.result.newKey.keyID).toMatch(UUID);
      expect(done.result.newKey.keyID).not.toBe(before.keyID);
      const info = expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo'));
      expect(info.masterKeyInfo).toEqual(done.result.newKey);
      expect(info.rekeyMasterKeyAsyncResultID).toBe(started.asyncHandle);
      // The old key is decommissioned and its material erased.
      const old = await s.app.services.repos.masterKeys.find(before.keyID);
      expect(old?.state).toBe('decommissioned');
      expect(await s.app.services.master.internalOpens(old!)).toBe(false);
      expect((await s.call('GET', '/api/security/key-managers')).body.num_records).toBe(0);
      // The ONTAP view of the same job.
      const jobs = await s.call('GET', '/api/cluster/jobs?fields=state,description');
      expect(jobs.body.records.some((j: any) => j.state === 'success' && /master key/.test(j.description))).toBe(true);
    });

    it('answers 12.7 the same way, and echoes string and numeric ids', async () => {
      const a = await rpc(s, 'GetSoftwareEncryptionAtRestInfo', {}, { version: '12.7', id: 'abc' });
      expect(expectRpcResult(a, 'abc').state).toBe('enabled');
      expectRpcResult(await rpc(s, 'getsoftwareencryptionatrestinfo', undefined, { id: 42 }), 42);
      const none = await s.call('POST', '/json-rpc/12.5', { method: 'GetSoftwareEncryptionAtRestInfo' });
      expect(none.body.id).toBeNull();
    });

    it('refuses in Element’s error shape, changing nothing', async () => {
      const jobs = await jobCount(s);
      expectElementError(await rpc(s, 'NoSuchMethod'), 'xUnknownAPIMethod');
      expectElementError(await rpc(s, 'GetAsyncResult', {}), 'xMissingParameter');
      expectElementError(await rpc(s, 'GetAsyncResult', { asyncHandle: '1' }), 'xInvalidParameterType');
      expectElementError(await rpc(s, 'GetAsyncResult', { asyncHandle: 1.5 }), 'xInvalidParameterType');
      expectElementError(await rpc(s, 'GetAsyncResult', { asyncHandle: 1, keepResult: 'yes' }), 'xInvalidParameterType');
      expectElementError(await rpc(s, 'GetAsyncResult', { asyncHandle: 999_999 }), 'xDBNoSuchPath');
      expectElementError(await rpc(s, 'GetAsyncResult', { asyncHandle: 0 }), 'xInvalidParameter');
      expectElementError(await rpc(s, 'ListAsyncResults', { asyncResultTypes: 'Clone' }), 'xInvalidParameterType');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'bogus' }), 'xUnrecognizedEnumString');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 7 }), 'xInvalidParameterType');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'External' }), 'xMissingParameter');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'external', keyProviderID: 1 }), 'xKeyProviderIDDoesNotExist');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'External', keyProviderID: 'one' }), 'xInvalidParameterType');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'Internal', keyProviderID: 1 }), 'xInvalidParameter');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyProviderID: 1 }), 'xInvalidParameter');
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', [1, 2]), 'xInvalidParameterType');
      // Not a JSON-RPC request at all.
      const notJson = await fetch(`${s.url}/json-rpc/12.5`, { method: 'POST', headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' }, body: '{"method": ' });
      const nj = { status: notJson.status, body: await notJson.json(), headers: notJson.headers };
      expectElementError(nj, 'xUnknownRPCMethod', { id: null });
      expectElementError(await s.call('POST', '/json-rpc/12.5', { params: {}, id: 1 }), 'xUnknownRPCMethod');
      expectElementError(await s.call('POST', '/json-rpc/12.5', { method: 5, id: 1 }), 'xUnknownRPCMethod');
      // Unauthenticated: HTTP 401, still Element's shape.
      for (const tok of [null, 'garbage-token']) {
        const r = await rpc(s, 'GetSoftwareEncryptionAtRestInfo', undefined, { token: tok });
        // Credentials are checked before the body is read: the id is not known yet.
        expectElementError(r, 'xUnauthorized', { status: 401, code: 401, id: null });
        expect(r.headers.get('www-authenticate')).toMatch(/Basic/);
      }
      expect(await jobCount(s)).toBe(jobs);
    });

    it('reports parameters a method does not use', async () => {
      const r = await rpc(s, 'GetSoftwareEncryptionAtRestInfo', { verbose: true });
      expectRpcResult(r);
      expect(Object.keys(r.body.unusedParameters)).toEqual(['verbose']);
    });

    it('takes HTTP Basic credentials, and refuses state changes to anyone but a cluster admin', async () => {
      const pw = `pw-${randomBytes(12).toString('base64url')}`;
      noteSecret(pw);
      for (const [name, role] of [['el-admin', 'cluster-admin'], ['el-reader', 'readonly']]) {
        expect((await s.call('POST', '/api/v1/auth/users', { name, password: pw, role })).status).toBe(201);
      }
      const basic = (name: string) => ({ authorization: `Basic ${Buffer.from(`${name}:${pw}`).toString('base64')}` });
      expect(expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo', undefined, { headers: basic('el-admin') })).state).toBe('enabled');
      expect(expectRpcResult(await rpc(s, 'ListAsyncResults', undefined, { headers: basic('el-reader') })).asyncHandles.length).toBeGreaterThan(0);
      const jobs = await jobCount(s);
      expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', {}, { headers: basic('el-reader') }), 'xPermissionDenied');
      const bad = { authorization: `Basic ${Buffer.from('el-admin:wrong-password').toString('base64')}` };
      expectElementError(await rpc(s, 'GetSoftwareEncryptionAtRestInfo', undefined, { headers: bad }), 'xUnauthorized', { status: 401, code: 401, id: null });
      // An SVM-bound principal sees no cluster-level results.
      const svm = await s.call('POST', '/api/svm/svms', { name: 'elsvm' });
      expect(svm.status).toBe(201);
      const tok = await s.call('POST', '/api/v1/auth/tokens', { name: 'el-svm-admin', role: 'svm-admin', svms: ['elsvm'] });
      noteSecret(tok.body.token);
      expectElementError(await rpc(s, 'ListAsyncResults', undefined, { token: tok.body.token }), 'xPermissionDenied');
      expectElementError(await rpc(s, 'GetAsyncResult', { asyncHandle: 1 }, { token: tok.body.token }), 'xPermissionDenied');
      expect(await jobCount(s)).toBe(jobs);
    });

    it('answers HTTP 429 (code 429, xUnauthorized) while a user name is locked out after failed sign-ins, even with the right password', async () => {
      const pw = `pw-${randomBytes(12).toString('base64url')}`;
      noteSecret(pw);
      expect((await s.call('POST', '/api/v1/auth/users', { name: 'el-locked', password: pw, role: 'cluster-admin' })).status).toBe(201);
      const basic = (p: string) => ({ authorization: `Basic ${Buffer.from(`el-locked:${p}`).toString('base64')}` });
      for (let i = 0; i < 5; i++) expectElementError(await rpc(s, 'GetSoftwareEncryptionAtRestInfo', undefined, { headers: basic('wrong-password') }), 'xUnauthorized', { status: 401, code: 401, id: null });
      const locked = await rpc(s, 'GetSoftwareEncryptionAtRestInfo', undefined, { headers: basic(pw) });
      expectElementError(locked, 'xUnauthorized', { status: 429, code: 429, id: null });
      // The lock after a fifth failure runs out after a second; then the right password is taken again.
      await new Promise((r) => setTimeout(r, 1_100));
      expect(expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo', undefined, { headers: basic(pw) })).state).toBe('enabled');
    });

    it('rekeys the master key of an onboard key manager: every DEK in every SVM under it unwraps to the same bytes', { timeout: 60_000 }, async () => {
      noteSecret(PASSPHRASE);
      expect((await s.call('POST', '/api/security/key-managers', { onboard: { passphrase: PASSPHRASE } })).status).toBe(201);
      const km = (await s.call('GET', '/api/security/key-managers')).body.records[0].uuid;
      // Under a key manager, the master key is its root; the internal one is retired.
      const info0 = expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo')).masterKeyInfo;
      const internal = (await s.app.services.repos.masterKeys.list()).filter((r) => r.key_manager_uuid === null);
      expect(internal.every((r) => r.state === 'decommissioned')).toBe(true);
      const names = ['cluster1', 'elsvm', 'eldata2', 'eldata3'];
      for (const n of names.slice(2)) expect((await s.call('POST', '/api/svm/svms', { name: n })).status).toBe(201);
      const keys: DataKey[] = [];
      for (const n of names) keys.push(...(await dataKeys(s, n, 40)));
      // A rekey-internal of the admin SVM first, so KEKs of several versions are under the root.
      const ri = await s.call('POST', `/api/security/key-managers/${km}/rekey-internal?return_timeout=60`);
      expect(ri.status, JSON.stringify(ri.body)).toBe(201);
      keys.push(...(await dataKeys(s, 'cluster1', 10)));
      const db = s.app.services.store.db;
      const keksBefore = await db.selectFrom('keks').select(['id', 'root_version', 'key_manager_uuid']).execute();
      expect(keksBefore.length).toBe(5);
      expect(new Set(keksBefore.map((k) => k.root_version))).toEqual(new Set([1]));

      const started = expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey'));
      // Keys are served during the rekey.
      await expectAllUnwrap(s, keys.slice(0, 20));
      const done = await waitAsync(s, started.asyncHandle);
      expect(done.result.keyToDecommission).toEqual(info0);
      expect(done.result.newKey.keyID).not.toBe(info0.keyID);
      const info = expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo'));
      expect(info.masterKeyInfo).toEqual(done.result.newKey);
      expect(info.rekeyMasterKeyAsyncResultID).toBe(started.asyncHandle);

      const keksAfter = await db.selectFrom('keks').select(['id', 'root_version']).execute();
      expect(keksAfter.map((k) => k.root_version)).toEqual(keksBefore.map(() => 2));
      const seals = await db.selectFrom('root_seals').select(['root_version']).where('key_manager_uuid', '=', km).execute();
      expect(seals.map((r) => r.root_version)).toEqual([2]);
      const kmRow = (await s.app.services.repos.keyManagers.findByUuid(km))!;
      expect(kmRow.root_version).toBe(2);
      await expectAllUnwrap(s, keys);

      // The passphrase still opens the new root: seal, unseal, and every key unwraps.
      expect((await s.call('POST', '/api/v1/sys/seal')).status).toBeLessThan(300);
      expect((await s.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE })).status).toBe(200);
      await expectAllUnwrap(s, keys);
      // New keys after the rekey, and the ONTAP key manager is as it was.
      keys.push(...(await dataKeys(s, 'eldata3', 5)));
      const list = await s.call('GET', '/api/security/key-managers');
      expect(list.body.num_records).toBe(1);

      // A restart opens the new root from this node's seal alone.
      const { dataDir, storeUrl, pgSchema, token } = s;
      await s.close();
      s = await startServer({ store, dataDir, storeUrl, pgSchema, token });
      await expectAllUnwrap(s, keys);
      expect(expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo')).masterKeyInfo).toEqual(done.result.newKey);
    });

    it('keepResult: a completed result read without it is gone; ListAsyncResults filters by type and does not expire results', async () => {
      const started = expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'Internal' }));
      await waitAsync(s, started.asyncHandle);
      const all = expectRpcResult(await rpc(s, 'ListAsyncResults')).asyncHandles;
      const mine = all.find((a: any) => a.asyncResultID === started.asyncHandle);
      expect(mine).toMatchObject({ completed: true, success: true, resultType: 'RekeySoftwareEncryptionAtRestMasterKey' });
      expect(mine.data.newKey.keyID).toMatch(UUID);
      const only = expectRpcResult(await rpc(s, 'ListAsyncResults', { asyncResultTypes: ['rekeysoftwareencryptionatrestmasterkey'] })).asyncHandles;
      expect(only.length).toBeGreaterThanOrEqual(2);
      expect(only.every((a: any) => a.resultType === 'RekeySoftwareEncryptionAtRestMasterKey')).toBe(true);
      expect(all.some((a: any) => a.resultType === 'RekeyInternal')).toBe(true);
      expect(expectRpcResult(await rpc(s, 'ListAsyncResults', { asyncResultTypes: ['Clone'] })).asyncHandles).toEqual([]);
      // Listing did not expire it; reading it without keepResult does.
      const once = expectRpcResult(await rpc(s, 'GetAsyncResult', { asyncHandle: started.asyncHandle }));
      expect(once.status).toBe('complete');
      expectElementError(await rpc(s, 'GetAsyncResult', { asyncHandle: started.asyncHandle }), 'xDBNoSuchPath');
      expect(expectRpcResult(await rpc(s, 'ListAsyncResults')).asyncHandles.some((a: any) => a.asyncResultID === started.asyncHandle)).toBe(false);
      const info = expectRpcResult(await rpc(s, 'GetSoftwareEncryptionAtRestInfo'));
      expect(info.rekeyMasterKeyAsyncResultID).not.toBe(started.asyncHandle);
      // The ONTAP job stays.
      expect((await s.call('GET', '/api/cluster/jobs')).body.num_records).toBe(all.length);
    });

    it('refuses a second master-key rekey while one is unfinished', async () => {
      await s.app.services.jobs.stop(); // the runner is idle: a new job stays queued
      try {
        const first = expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey'));
        const jobs = await jobCount(s);
        expectElementError(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey'), 'xMasterRekeyRunning');
        expect(await jobCount(s)).toBe(jobs);
        const running = expectRpcResult(await rpc(s, 'GetAsyncResult', { asyncHandle: first.asyncHandle }));
        expect(running).toMatchObject({ status: 'running', details: { state: 'queued' } });
        expect(running.result).toBeUndefined();
        s.app.services.jobs.start();
        const done = await waitAsync(s, first.asyncHandle);
        expect(done.result.newKey.keyID).toMatch(UUID);
      } finally {
        s.app.services.jobs.start();
      }
    });

    it('refuses while the admin SVM\'s keystore is mid-switch (65537610), changing nothing', async () => {
      const km = await s.app.services.master.adminKeyManager();
      expect(km, 'the admin SVM has a key manager by now').toBeDefined();
      const setState = (state: string) => s.app.services.store.db.updateTable('key_managers').set({ state }).where('uuid', '=', km!.uuid).execute();
      const jobs = await jobCount(s);
      await setState('switching'); // as an interrupted switch leaves it
      try {
        const r = await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey');
        expectElementError(r, 'xKeyStoreSwitching');
        expect(r.body.error.message).toMatch(/switch/i);
        expect(await jobCount(s)).toBe(jobs);
      } finally {
        await setState('active');
      }
      expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey'));
    });
  });
}
