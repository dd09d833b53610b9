/**
 * Element KMIP key providers and key servers over real HTTP (JSON-RPC 12.5/12.7) against Debian's
 * real pykmip-server, on both stores: create a provider and a server, test them (and a server
 * whose CA is wrong), move the master key External onto the provider and Internal back, with every
 * DEK of two SVMs unwrapping to the same bytes throughout and across a restart while on the
 * provider; the refusals (unknown ids, a provider in use, a server assigned), also when changes race.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, expectElementError, expectRpcResult, noteSecret, rpc, startServer, startWithOkm, waitAsync, type RpcAnswer, type TestServer } from './helpers.js';
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

const ok = (r: RpcAnswer) => expectRpcResult(r);
const err = (r: RpcAnswer, name: string) => expectElementError(r, name);

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
      const k = ok(await rpc(s, 'CreateKeyServerKmip', base, { version: '12.7' }));
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

    it('changes racing each other see each other: one server per provider, no provider deleted while it has one', async () => {
      const params = (name: string) => ({ kmipCaCertificate: pki.caPem.toString('utf8'), kmipClientCertificate: pki.client.cert.toString('utf8'), kmipKeyServerHostnames: ['127.0.0.1'], kmipKeyServerName: name, kmipKeyServerPort: py.port });
      for (let round = 0; round < 4; round++) {
        const p = ok(await rpc(s, 'CreateKeyProviderKmip', { keyProviderName: `race-${round}` })).kmipKeyProvider.keyProviderID;
        const [a, b] = [ok(await rpc(s, 'CreateKeyServerKmip', params(`race-${round}-a`))), ok(await rpc(s, 'CreateKeyServerKmip', params(`race-${round}-b`)))].map((x) => x.kmipKeyServer.keyServerID);
        // Two servers added to one provider at once: one is, the other is refused as if it came second.
        const adds = await Promise.all([a, b].map((id) => rpc(s, 'AddKeyServerToProviderKmip', { keyProviderID: p, keyServerID: id })));
        const won = adds.findIndex((r) => r.body.error === undefined);
        expect(won, JSON.stringify(adds.map((r) => r.body))).toBeGreaterThanOrEqual(0);
        err(adds[1 - won], 'xInvalidParameter');
        expect(ok(await rpc(s, 'GetKeyProviderKmip', { keyProviderID: p })).kmipKeyProvider.keyServerIDs).toEqual([[a, b][won]]);
        // The provider deleted while its server is removed and the other one added: never deleted with a server.
        const [removed, deleted, added] = await Promise.all([
          rpc(s, 'RemoveKeyServerFromProviderKmip', { keyServerID: [a, b][won] }),
          rpc(s, 'DeleteKeyProviderKmip', { keyProviderID: p }),
          rpc(s, 'AddKeyServerToProviderKmip', { keyProviderID: p, keyServerID: [a, b][1 - won] }),
        ]);
        expect(ok(removed)).toEqual({});
        const servers = ok(await rpc(s, 'ListKeyServersKmip', {})).kmipKeyServers.filter((k: any) => k.keyServerID === a || k.keyServerID === b);
        if (deleted.body.error === undefined) {
          // The add came after the delete, or before the removal.
          err(added, added.body.error?.name === 'xInvalidParameter' ? 'xInvalidParameter' : 'xKeyProviderIDDoesNotExist');
          err(await rpc(s, 'GetKeyProviderKmip', { keyProviderID: p }), 'xKeyProviderIDDoesNotExist');
          expect(servers.every((k: any) => k.keyProviderID === undefined)).toBe(true);
        } else {
          // Deleted before the removal, or after the add; the add came before the removal, or after it.
          err(deleted, 'xKeyProviderInUse');
          if (added.body.error !== undefined) err(added, 'xInvalidParameter');
          const left = added.body.error === undefined ? [[a, b][1 - won]] : [];
          expect(ok(await rpc(s, 'GetKeyProviderKmip', { keyProviderID: p })).kmipKeyProvider.keyServerIDs).toEqual(left);
          for (const id of left) expect(ok(await rpc(s, 'RemoveKeyServerFromProviderKmip', { keyServerID: id }))).toEqual({});
          expect(ok(await rpc(s, 'DeleteKeyProviderKmip', { keyProviderID: p }))).toEqual({});
        }
        for (const id of [a, b]) expect(ok(await rpc(s, 'DeleteKeyServerKmip', { keyServerID: id }))).toEqual({});
      }
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
