/**
 * Element KMIP key providers and key servers over real HTTP (JSON-RPC 12.5/12.7) against Debian's
 * real pykmip-server, on both stores: create a provider and a server, test them (and a server
 * whose CA is wrong), move the master key External onto the provider and Internal back, with every
 * DEK of two SVMs unwrapping to the same bytes throughout and across a restart while on the
 * provider; the refusals (unknown ids, a provider in use, a server assigned).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, noteSecret, startServer, startWithOkm, type TestServer } from './helpers.js';
import { makeTestPki, pykmipAvailable, startPykmipServer, type PykmipServer, type TestPki } from '../src/kmip/testing/pykmip.js';

// A real peer is part of the proof: without Debian's python3-pykmip this file fails (CI installs it).
const describeIf = describe;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let dir: string;
let pki: TestPki;
let py: PykmipServer;

beforeAll(async () => {
  if (!pykmipAvailable()) throw new Error('Debian python3-pykmip is not installed (apt-get install -y python3-pykmip)');
  dir = mkdtempSync(join(tmpdir(), 'keysmith-el-kmip-'));
  pki = makeTestPki(dir);
  py = await startPykmipServer(pki, { name: 'element' });
}, 60_000);

afterAll(() => {
  py?.kill();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Rpc = { status: number; body: any };

async function rpc(s: TestServer, method: string, params?: unknown, version = '12.5'): Promise<Rpc> {
  return s.call('POST', `/json-rpc/${version}`, { method, params, id: 7 });
}

function ok(r: Rpc) {
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  expect(r.body.error, JSON.stringify(r.body)).toBeUndefined();
  return r.body.result;
}

function err(r: Rpc, name: string) {
  expect(r.status).toBe(200);
  expect(r.body.error?.name, JSON.stringify(r.body)).toBe(name);
  expect(r.body.error.code).toBe(500);
}

async function waitAsync(s: TestServer, handle: number) {
  for (const end = Date.now() + 30_000; ; ) {
    const r = ok(await rpc(s, 'GetAsyncResult', { asyncHandle: handle, keepResult: true }));
    if (r.status === 'complete') return r;
    if (Date.now() > end) throw new Error(`async result ${handle} did not complete`);
    await new Promise((res) => setTimeout(res, 25));
  }
}

for (const store of STORES) {
  describeIf(`Element KMIP key providers on ${store}`, () => {
    let s: TestServer;
    const keys: { svm: string; wrapped: string; plaintext: string }[] = [];
    let providerId: number;
    let serverId: number;
    let badServerId: number;

    async function makeKeys(svm: string, n: number) {
      for (let i = 0; i < n; i++) {
        const r = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, {});
        expect(r.status, JSON.stringify(r.body)).toBe(201);
        noteSecret(r.body.plaintext);
        keys.push({ svm, wrapped: r.body.wrapped, plaintext: r.body.plaintext });
      }
    }

    async function allKeysOpen() {
      for (const k of keys) {
        const r = await s.call('POST', `/api/v1/svms/${k.svm}/unwrap`, { wrapped: k.wrapped });
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect(r.body.plaintext).toBe(k.plaintext);
      }
    }

    beforeAll(async () => {
      s = await startWithOkm({ store });
      // The client certificate's private key is installed first: Keysmith does not generate key pairs.
      const c = await s.call('POST', '/api/security/certificates', { type: 'client', name: 'sf-client', public_certificate: pki.client.cert.toString('utf8'), private_key: pki.client.key.toString('utf8') });
      expect(c.status, JSON.stringify(c.body)).toBe(201);
      await s.call('POST', '/api/svm/svms', { name: 'elvs' });
      const admin = (await s.call('GET', '/api/security/key-managers?scope=cluster')).body.records[0];
      const adminSvm = (await s.app.services.svms.admin())!.uuid;
      expect(admin).toBeTruthy();
      await makeKeys('elvs', 3);
      await makeKeys(adminSvm, 2);
    }, 60_000);
    afterAll(() => s?.close());

    it('creates a key provider and key servers, shaped as Element shows them', async () => {
      const p = ok(await rpc(s, 'CreateKeyProviderKmip', { keyProviderName: 'KeyProvider1' }));
      expect(p.kmipKeyProvider).toEqual({ keyProviderID: expect.any(Number), keyProviderName: 'KeyProvider1', keyProviderIsActive: false, keyServerIDs: [], kmipCapabilities: 'SSL' });
      providerId = p.kmipKeyProvider.keyProviderID;
      err(await rpc(s, 'CreateKeyProviderKmip', { keyProviderName: 'KeyProvider1' }), 'xInvalidParameter');
      err(await rpc(s, 'CreateKeyProviderKmip', {}), 'xMissingParameter');

      const base = { kmipCaCertificate: pki.caPem.toString('utf8'), kmipClientCertificate: pki.client.cert.toString('utf8'), kmipKeyServerHostnames: ['127.0.0.1'], kmipKeyServerName: 'pykmip', kmipKeyServerPort: py.port };
      const k = ok(await rpc(s, 'CreateKeyServerKmip', base, '12.7'));
      expect(k.kmipKeyServer).toMatchObject({ keyServerID: expect.any(Number), kmipKeyServerName: 'pykmip', kmipKeyServerHostnames: ['127.0.0.1'], kmipKeyServerPort: py.port, kmipAssignedProviderIsActive: false });
      expect(k.kmipKeyServer.keyProviderID).toBeUndefined();
      serverId = k.kmipKeyServer.keyServerID;
      const bad = ok(await rpc(s, 'CreateKeyServerKmip', { ...base, kmipCaCertificate: pki.otherCa.caPem.toString('utf8'), kmipKeyServerName: 'wrong-ca' }));
      badServerId = bad.kmipKeyServer.keyServerID;
      // A client certificate whose private key is not installed, and malformed input, are refused.
      err(await rpc(s, 'CreateKeyServerKmip', { ...base, kmipClientCertificate: pki.clientNoEku.cert.toString('utf8') }), 'xInvalidParameter');
      err(await rpc(s, 'CreateKeyServerKmip', { ...base, kmipCaCertificate: 'nope' }), 'xInvalidParameter');
      err(await rpc(s, 'CreateKeyServerKmip', { ...base, kmipKeyServerPort: 70000 }), 'xInvalidParameter');
      expect(ok(await rpc(s, 'ListKeyServersKmip', {})).kmipKeyServers).toHaveLength(2);
    });

    it('tests servers: the good one answers, the one with the wrong CA fails with the TLS verdict', async () => {
      expect(ok(await rpc(s, 'TestKeyServerKmip', { keyServerID: serverId }))).toEqual({});
      err(await rpc(s, 'TestKeyServerKmip', { keyServerID: badServerId }), 'xKmipServerCa');
      err(await rpc(s, 'TestKeyServerKmip', { keyServerID: 9999 }), 'xKeyServerIDDoesNotExist');
      err(await rpc(s, 'TestKeyProviderKmip', { keyProviderID: providerId }), 'xKeyProviderNoServers');
    });

    it('adds the server to the provider (one per provider) and tests the provider', async () => {
      expect(ok(await rpc(s, 'AddKeyServerToProviderKmip', { keyProviderID: providerId, keyServerID: serverId }))).toEqual({});
      err(await rpc(s, 'AddKeyServerToProviderKmip', { keyProviderID: providerId, keyServerID: badServerId }), 'xInvalidParameter');
      err(await rpc(s, 'AddKeyServerToProviderKmip', { keyProviderID: 9999, keyServerID: badServerId }), 'xKeyProviderIDDoesNotExist');
      expect(ok(await rpc(s, 'TestKeyProviderKmip', { keyProviderID: providerId }))).toEqual({});
      const g = ok(await rpc(s, 'GetKeyProviderKmip', { keyProviderID: providerId }));
      expect(g.kmipKeyProvider.keyServerIDs).toEqual([serverId]);
      expect(ok(await rpc(s, 'GetKeyServerKmip', { keyServerID: serverId })).kmipKeyServer.keyProviderID).toBe(providerId);
      expect(ok(await rpc(s, 'ListKeyProvidersKmip', { kmipKeyProviderHasServerAssigned: true })).kmipKeyProviders.map((p: any) => p.keyProviderID)).toEqual([providerId]);
      expect(ok(await rpc(s, 'ListKeyServersKmip', { kmipHasProviderAssigned: false })).kmipKeyServers.map((k: any) => k.keyServerID)).toEqual([badServerId]);
      // An assigned server cannot be deleted.
      err(await rpc(s, 'DeleteKeyServerKmip', { keyServerID: serverId }), 'xKeyServerInUse');
    });

    it('moves the master key External onto the provider: a new key, the old one decommissioned, every key intact', async () => {
      const before = ok(await rpc(s, 'GetSoftwareEncryptionAtRestInfo'));
      const h = ok(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'External', keyProviderID: providerId })).asyncHandle;
      const r = await waitAsync(s, h);
      expect(r.resultType).toBe('RekeySoftwareEncryptionAtRestMasterKey');
      expect(r.error, JSON.stringify(r)).toBeUndefined();
      expect(r.result.newKey).toMatchObject({ keyID: expect.stringMatching(UUID), keyManagementType: 'external', keyProviderID: providerId });
      expect(r.result.keyToDecommission.keyID).toBe(before.masterKeyInfo.keyID);
      const after = ok(await rpc(s, 'GetSoftwareEncryptionAtRestInfo'));
      expect(after.masterKeyInfo).toMatchObject({ keyID: r.result.newKey.keyID, keyManagementType: 'external', keyProviderID: providerId });
      expect(ok(await rpc(s, 'GetKeyProviderKmip', { keyProviderID: providerId })).kmipKeyProvider.keyProviderIsActive).toBe(true);
      await allKeysOpen();
      // Every KEK is now under the provider's configuration, whose root is on the KMIP server.
      const km = await s.app.services.master.adminKeyManager();
      expect(km?.type).toBe('kmip');
      for (const k of await s.app.services.repos.keks.listAll()) expect(k.key_manager_uuid).toBe(km!.uuid);
      // An active provider, and its server, cannot be taken away.
      err(await rpc(s, 'DeleteKeyProviderKmip', { keyProviderID: providerId }), 'xKeyProviderInUse');
      err(await rpc(s, 'RemoveKeyServerFromProviderKmip', { keyServerID: serverId }), 'xKeyProviderInUse');
      await makeKeys('elvs', 2);
    });

    it('after a restart the master key is fetched from the provider and every key opens', async () => {
      const { dataDir, pgSchema, token } = s;
      await s.close();
      s = await startServer({ store, dataDir, pgSchema, token });
      await allKeysOpen();
    }, 60_000);

    it('External again onto the same provider replaces the master key with another one on the server', async () => {
      const before = ok(await rpc(s, 'GetSoftwareEncryptionAtRestInfo')).masterKeyInfo;
      const h = ok(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'External', keyProviderID: providerId })).asyncHandle;
      const r = await waitAsync(s, h);
      expect(r.result.newKey.keyID).not.toBe(before.keyID);
      expect(r.result.keyToDecommission).toMatchObject({ keyID: before.keyID, keyManagementType: 'external', keyProviderID: providerId });
      await allKeysOpen();
    });

    it('Internal moves the master key back to the onboard key manager; every key intact', async () => {
      const h = ok(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'Internal' })).asyncHandle;
      const r = await waitAsync(s, h);
      expect(r.error, JSON.stringify(r)).toBeUndefined();
      expect(r.result.newKey.keyManagementType).toBe('internal');
      expect(r.result.keyToDecommission).toMatchObject({ keyManagementType: 'external', keyProviderID: providerId });
      expect((await s.app.services.master.adminKeyManager())?.type).toBe('okm');
      expect(ok(await rpc(s, 'GetKeyProviderKmip', { keyProviderID: providerId })).kmipKeyProvider.keyProviderIsActive).toBe(false);
      await allKeysOpen();
      // Internal on the onboard key manager is the ordinary rekey again.
      const h2 = ok(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'Internal' })).asyncHandle;
      expect((await waitAsync(s, h2)).error).toBeUndefined();
      await allKeysOpen();
    });

    it('removes the server from the provider and deletes both; unknown ids are refused', async () => {
      expect(ok(await rpc(s, 'RemoveKeyServerFromProviderKmip', { keyServerID: serverId }))).toEqual({});
      expect(ok(await rpc(s, 'DeleteKeyProviderKmip', { keyProviderID: providerId }))).toEqual({});
      expect(ok(await rpc(s, 'DeleteKeyServerKmip', { keyServerID: serverId }))).toEqual({});
      err(await rpc(s, 'GetKeyProviderKmip', { keyProviderID: providerId }), 'xKeyProviderIDDoesNotExist');
      err(await rpc(s, 'GetKeyServerKmip', { keyServerID: serverId }), 'xKeyServerIDDoesNotExist');
      err(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'External', keyProviderID: providerId }), 'xKeyProviderIDDoesNotExist');
      const m = ok(await rpc(s, 'ModifyKeyServerKmip', { keyServerID: badServerId, kmipKeyServerName: 'renamed' }));
      expect(m.kmipKeyServer.kmipKeyServerName).toBe('renamed');
      await allKeysOpen();
    });
  });
}
