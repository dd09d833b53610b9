/**
 * External KMIP key managers, three review findings, against Debian's real pykmip-server on both
 * stores:
 * - the root fetched from the server is checked against the key-check value recorded with the
 *   configuration (kmip_configs.root_kcv, migration 0009-kmip-root-check): a tampered value or another
 *   object under the root's id is refused (65600060), never used, and changes nothing; a
 *   configuration made before 0009 adopts its value at start only once a KEK proves the root;
 * - KMIP passwords follow their server by name when the list is reordered or shortened, also on a
 *   node whose sealed copy predates the change, and copies sealed in the old positional format keep
 *   working when they line up with the servers and are dropped when they may not;
 * - a root created on the server for a configuration that is then refused is revoked and destroyed
 *   there (Locate finds nothing), except when the store refers to it.
 */
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, noteSecret, startServer, startWithOkm, type TestServer } from './helpers.js';
import { makeTestPki, onPykmip, pykmipAvailable, startPykmipServer, startTcpRelay, type PykmipServer, type TcpRelay, type TestPki } from '../src/kmip/testing/pykmip.js';
import { KmipClient } from '../src/kmip/client.js';
import { State } from '../src/kmip/enums.js';
import { createKeyring } from '../src/hierarchy/keyring.js';
import { createKmipConnector, createKmipKeyManager, openSecrets, passwordFor, sealSecrets, serverName, type KmipSecrets } from '../src/keymanagers/kmip-key-manager.js';
import { createKmipConfigService } from '../src/keymanagers/kmip-config-service.js';
import type { Db } from '../src/store/schema.js';
import type { KeyManagerRow } from '../src/store/key-manager-repo.js';

const KM = '/api/security/key-managers';
const WHO = { actor: 'test:review' };

let dir: string;
let pki: TestPki;
let py: PykmipServer;
// A second name for the same KMIP server (a TCP relay on another port): two primaries that return
// the same root, as two nodes of one KMIP cluster would.
let relay: TcpRelay;
let relayPort: number;

beforeAll(async () => {
  if (!pykmipAvailable()) throw new Error('Debian python3-pykmip is not installed (apt-get install -y python3-pykmip)');
  dir = mkdtempSync(join(tmpdir(), 'keysmith-ext-kmip-review-'));
  pki = makeTestPki(dir);
  noteSecret(pki.client.key.toString('utf8').split('\n')[1]);
  py = await startPykmipServer(pki, { name: 'review' });
  relay = await startTcpRelay(py.port);
  relayPort = relay.port;
}, 60_000);

afterAll(async () => {
  await relay?.close();
  py?.kill();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A KMIP client of our own, to look at the server as an operator would (Locate, Get, State). */
const onServer = <T>(fn: (c: KmipClient) => Promise<T>): Promise<T> => onPykmip(py, pki, fn);

/** The key-check value as documented (HKDF-SHA256 of the root, then HMAC-SHA256 of the label and the uuid), computed here independently. */
function expectedKcv(kmUuid: string, root: Buffer): string {
  const k = Buffer.from(hkdfSync('sha256', root, Buffer.alloc(0), 'keysmith/kcv/v1', 32));
  return createHmac('sha256', k).update(`keysmith/kcv/v1\0${kmUuid}`).digest('hex');
}

for (const store of STORES) {
  describe(`external KMIP review fixes on ${store}`, () => {
    let s: TestServer;
    const P = () => `127.0.0.1:${py.port}`;
    const X = () => `127.0.0.1:${relayPort}`;

    async function newSvm(name: string): Promise<{ uuid: string; name: string }> {
      const r = await s.call('POST', '/api/svm/svms', { name });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      return { uuid: r.headers.get('location')!.split('/').pop()!, name };
    }

    const external = (servers: Record<string, unknown>[] = [{ server: P(), timeout: 5 }]) => ({ servers, client_certificate: { name: 'kmip-client' }, server_ca_certificates: [{ name: 'kmip-ca' }] });

    async function createKm(svm: string, servers?: Record<string, unknown>[]): Promise<KeyManagerRow> {
      const r = await s.call('POST', KM, { svm: { name: svm }, external: external(servers) });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      return (await s.app.services.repos.keyManagers.findByUuid(r.headers.get('location')!.split('/').pop()!))!;
    }

    async function dataKeys(svm: string, n: number): Promise<{ wrapped: string; plaintext: string }[]> {
      const out = [];
      for (let i = 0; i < n; i++) {
        const r = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, {});
        expect(r.status, JSON.stringify(r.body)).toBe(201);
        noteSecret(r.body.plaintext);
        out.push({ wrapped: r.body.wrapped, plaintext: r.body.plaintext });
      }
      return out;
    }

    /** As after a restart of this node: nothing of the configuration held in memory. */
    function forget(kmUuid: string) {
      s.app.services.externalKmip.forget(kmUuid);
      s.app.services.keyring.forgetKeyManager(kmUuid);
    }

    const setRootId = (kmUuid: string, rootId: string) => s.app.services.store.db.updateTable('key_managers').set({ root_id: rootId }).where('uuid', '=', kmUuid).execute();
    const kekCount = async () => (await s.app.services.repos.keks.listAll()).length;

    beforeAll(async () => {
      s = await startWithOkm({ store });
      for (const body of [
        { type: 'server_ca', name: 'kmip-ca', public_certificate: pki.caPem.toString('utf8') },
        { type: 'client', name: 'kmip-client', public_certificate: pki.client.cert.toString('utf8'), private_key: pki.client.key.toString('utf8') },
      ]) {
        const r = await s.call('POST', '/api/security/certificates', body);
        expect(r.status, JSON.stringify(r.body)).toBe(201);
      }
    }, 60_000);
    afterAll(() => s?.close());

    describe('the root is checked against its key-check value', () => {
      let svm: { uuid: string; name: string };
      let km: KeyManagerRow;
      let keys: { wrapped: string; plaintext: string }[];
      let kcv: string;
      let other: string;
      let rootId: string;

      beforeAll(async () => {
        svm = await newSvm('kcvvs');
        km = await createKm(svm.name);
        rootId = km.root_id;
        keys = await dataKeys(svm.uuid, 3);
        // Another AES-256 key on the same server, as a misconfigured server would return.
        other = await onServer(async (c) => {
          const uid = await c.createAes256(`review-other-${store}`);
          await c.activate(uid);
          return uid;
        });
      });

      it('records HMAC-SHA256 under a key derived from the root, not the root', async () => {
        const root = await onServer(async (c) => (await c.get(km.root_id)).keyMaterial);
        noteSecret(root.toString('hex'));
        noteSecret(root.toString('base64'));
        kcv = (await s.app.services.repos.kmipServers.findConfig(km.uuid))!.root_kcv!;
        expect(kcv).toBe(expectedKcv(km.uuid, root));
        expect(kcv).not.toContain(root.toString('hex'));
        // GET never shows it (it is no secret, but nothing of the root is part of the API).
        expect(JSON.stringify((await s.call('GET', `${KM}/${km.uuid}?fields=**`)).body)).not.toContain(kcv);
      });

      async function expectRefusedEverywhere(): Promise<void> {
        const keksBefore = await kekCount();
        const cfgBefore = await s.app.services.repos.kmipServers.findConfig(km.uuid);
        const st = await s.call('GET', `${KM}/${km.uuid}?fields=status`);
        expect(st.body.status.code, JSON.stringify(st.body)).toBe(65600060);
        expect(st.body.status.message).toMatch(/another key/);
        // The data path serves nothing of the SVM (its root is not on this node: 65600006).
        const u = await s.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: keys[0].wrapped });
        expect(u.body.error?.code, JSON.stringify(u.body)).toBe('65600006');
        const d = await s.call('POST', `/api/v1/svms/${svm.uuid}/data-keys`, {});
        expect(d.body.error?.code, JSON.stringify(d.body)).toBe('65600006');
        // A change of settings checked against the server (this node holds no root now) is refused too.
        const p = await s.call('PATCH', `${KM}/${km.uuid}`, { external: { servers: [{ server: P(), timeout: 9 }] } });
        expect(p.body.error, JSON.stringify(p.body)).toMatchObject({ code: '65600060', target: 'external' });
        expect(s.app.services.keyring.hasRoot(km)).toBe(false);
        expect(await kekCount()).toBe(keksBefore);
        expect(await s.app.services.repos.kmipServers.findConfig(km.uuid)).toEqual(cfgBefore);
      }

      it('a tampered key-check value: the root is refused and nothing changes', async () => {
        await s.app.services.repos.kmipServers.updateConfig(km.uuid, { root_kcv: 'ab'.repeat(32) });
        forget(km.uuid);
        await expectRefusedEverywhere();
        await s.app.services.repos.kmipServers.updateConfig(km.uuid, { root_kcv: kcv });
        forget(km.uuid);
        // The same checks with the true value: the root loads (status) and serves again.
        expect((await s.call('GET', `${KM}/${km.uuid}?fields=status`)).body.status.code).toBe(0);
        expect((await s.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: keys[0].wrapped })).body.plaintext).toBe(keys[0].plaintext);
      });

      it('another key under the configured id: refused and nothing changes', async () => {
        await setRootId(km.uuid, other);
        km = (await s.app.services.repos.keyManagers.findByUuid(km.uuid))!;
        forget(km.uuid);
        await expectRefusedEverywhere();
        // The other key was only read, never used or changed.
        expect(await onServer((c) => c.getState(other))).toBe(State.Active);
        await setRootId(km.uuid, rootId);
        km = (await s.app.services.repos.keyManagers.findByUuid(km.uuid))!;
        forget(km.uuid);
        expect((await s.call('GET', `${KM}/${km.uuid}?fields=status`)).body.status.code).toBe(0);
        expect((await s.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: keys[1].wrapped })).body.plaintext).toBe(keys[1].plaintext);
      });

      it('a configuration made before 0009 adopts its value at start only once a KEK proves the root', async () => {
        expect((await s.app.services.repos.keks.findActive(svm.uuid))?.key_manager_uuid).toBe(km.uuid);
        // Pre-0009 row pointing at another key: the start refuses it, records nothing, serves nothing.
        await setRootId(km.uuid, other);
        await s.app.services.repos.kmipServers.updateConfig(km.uuid, { root_kcv: null });
        const { dataDir, pgSchema, token } = s;
        await s.close();
        s = await startServer({ store, dataDir, pgSchema, token });
        km = (await s.app.services.repos.keyManagers.findByUuid(km.uuid))!;
        expect((await s.app.services.repos.kmipServers.findConfig(km.uuid))!.root_kcv).toBeNull();
        expect(s.app.services.keyring.hasRoot(km)).toBe(false);
        expect((await s.call('GET', `${KM}/${km.uuid}?fields=status`)).body.status.code).toBe(65600060);
        expect((await s.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: keys[0].wrapped })).body.error?.code).toBe('65600006');
        // Pointed back at its root: the data path still refuses a root not yet proven...
        await setRootId(km.uuid, rootId);
        km = (await s.app.services.repos.keyManagers.findByUuid(km.uuid))!;
        forget(km.uuid);
        const early = await s.call('GET', `${KM}/${km.uuid}?fields=status`);
        expect(early.body.status).toMatchObject({ code: 65600060, message: expect.stringMatching(/not been checked/) });
        // ...and the start's retry proves it with a KEK and records the very value made at creation.
        const r = await s.app.services.externalKmip.loadAll();
        expect(r.failed).toEqual([]);
        expect((await s.app.services.repos.kmipServers.findConfig(km.uuid))!.root_kcv).toBe(kcv);
        for (const k of keys) expect((await s.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: k.wrapped })).body.plaintext).toBe(k.plaintext);
      }, 60_000);
    });

    describe('passwords follow their server by name', () => {
      let svm: { uuid: string; name: string };
      let km: KeyManagerRow;
      const pwP = `pw-p-${randomBytes(8).toString('hex')}`;
      const pwX = `pw-x-${randomBytes(8).toString('hex')}`;
      noteSecret(pwP);
      noteSecret(pwX);
      // A second node of the cluster, in this process: its own identity, seal key, keyring and
      // services, over the same store.
      const nodeB = { id: `node_review_${randomBytes(4).toString('hex')}`, sealKey: randomBytes(32) };

      function servicesOn(node: typeof nodeB | 'A') {
        const a = s.app.services;
        const keyring = node === 'A' ? a.keyring : createKeyring({ node, startSealed: false, keyManagers: a.repos.keyManagers, keks: a.repos.keks });
        const connector = createKmipConnector();
        const certificateKey = async (u: string) => {
          const c = await a.certificates.get(u);
          return c ? a.certificates.privateKey(c) : null;
        };
        const manager = createKmipKeyManager({ keyring, repo: a.repos.kmipServers, connector, certificateKey });
        const service = createKmipConfigService({ db: a.store.db, repo: a.repos.kmipServers, keyManagers: a.repos.keyManagers, certificates: a.certificates, certificateRows: a.repos.certificates, svms: a.svms, keyring, connector, manager, audit: a.audit, clusterUuid: a.cluster.uuid });
        return { keyring, connector, manager, service };
      }

      /** The password each configured server would be sent by a node starting now (what its KMIP clients are built with). */
      async function sent(node: typeof nodeB | 'A'): Promise<Record<string, string | null>> {
        const n = servicesOn(node);
        try {
          const e = await n.manager.endpoint(km);
          return Object.fromEntries(e.servers.map((x) => [serverName(x), passwordFor(e.secrets, x)]));
        } finally {
          n.connector.close();
        }
      }

      beforeAll(async () => {
        svm = await newSvm('pwvs');
        km = await createKm(svm.name, [
          { server: P(), timeout: 5, username: 'user-p', password: pwP },
          { server: X(), timeout: 5, username: 'user-x', password: pwX },
        ]);
        // Node B takes its own copy of the passwords, as an operator patching it there would.
        const b = servicesOn(nodeB);
        await b.service.update(km, { servers: [{ server: P(), timeout: 5, username: 'user-p', password: pwP }, { server: X(), timeout: 5, username: 'user-x', password: pwX }] }, WHO);
        b.connector.close();
        expect(await sent(nodeB)).toEqual({ [P()]: pwP, [X()]: pwX });
      }, 60_000);

      it('reordered on node A: each password stays with its server on both nodes', async () => {
        const r = await s.call('PATCH', `${KM}/${km.uuid}`, { external: { servers: [{ server: X(), timeout: 5, username: 'user-x' }, { server: P(), timeout: 5, username: 'user-p' }] } });
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect((await s.call('GET', `${KM}/${km.uuid}`)).body.external.servers.map((x: { server: string }) => x.server)).toEqual([X(), P()]);
        expect(await sent('A')).toEqual({ [P()]: pwP, [X()]: pwX });
        expect(await sent(nodeB)).toEqual({ [P()]: pwP, [X()]: pwX });
      });

      it('one server removed on node A: the other keeps its own password on both nodes; the removed one takes its password along', async () => {
        const r = await s.call('DELETE', `${KM}/${km.uuid}/key-servers/${P()}`);
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect((await s.call('GET', `${KM}/${km.uuid}`)).body.external.servers.map((x: { server: string }) => x.server)).toEqual([X()]);
        expect(await sent('A')).toEqual({ [X()]: pwX });
        expect(await sent(nodeB)).toEqual({ [X()]: pwX });
        // Added back on node A without a password: node A has none for it, not another server's;
        // node B still holds the one it was given for that very server.
        const add = await s.call('POST', `${KM}/${km.uuid}/key-servers`, { server: P(), timeout: 5 });
        expect(add.status, JSON.stringify(add.body)).toBeLessThan(300);
        expect(await sent('A')).toEqual({ [X()]: pwX, [P()]: null });
        expect(await sent(nodeB)).toEqual({ [X()]: pwX, [P()]: pwP });
      });

      it('a copy sealed by position before this change keeps working when it lines up with the servers, and is dropped when it may not', async () => {
        const cfg = (await s.app.services.repos.kmipServers.findConfig(km.uuid))!;
        expect(JSON.parse(cfg.servers).map((x: { port: number }) => x.port)).toEqual([relayPort, py.port]);
        const legacy = { key: pki.client.key.toString('utf8'), passwords: [pwX, pwP] } as unknown as KmipSecrets;
        const put = (createdAt: string) =>
          s.app.services.repos.kmipServers.upsertNodeSecret({ key_manager_uuid: km.uuid, node_id: nodeB.id, blob: sealSecrets(nodeB, km, legacy), created_at: createdAt });
        // Sealed by the change that made the current list (same time): read by position, then kept by name.
        await put(cfg.updated_at);
        expect(await sent(nodeB)).toEqual({ [P()]: pwP, [X()]: pwX });
        const upgraded = openSecrets(nodeB, km, (await s.app.services.repos.kmipServers.findNodeSecret(km.uuid, nodeB.id))!.blob)!;
        expect(upgraded.legacy).toBe(false);
        expect(upgraded.secrets.passwords).toEqual({ [P()]: pwP, [X()]: pwX });
        // Sealed before the list last changed (maybe in another order): no password rather than a wrong one.
        await put('2000-01-01T00:00:00.000Z');
        expect(await sent(nodeB)).toEqual({ [P()]: null, [X()]: null });
      });
    });

    describe('a root created for a refused configuration is not left on the server', () => {
      function serviceWith(over: { keyManagers?: Record<string, unknown>; db?: Db }) {
        const a = s.app.services;
        const connector = createKmipConnector();
        const certificateKey = async (u: string) => {
          const c = await a.certificates.get(u);
          return c ? a.certificates.privateKey(c) : null;
        };
        const manager = createKmipKeyManager({ keyring: a.keyring, repo: a.repos.kmipServers, connector, certificateKey });
        const keyManagers = { ...a.repos.keyManagers, ...over.keyManagers } as typeof a.repos.keyManagers;
        const service = createKmipConfigService({ db: over.db ?? a.store.db, repo: a.repos.kmipServers, keyManagers, certificates: a.certificates, certificateRows: a.repos.certificates, svms: a.svms, keyring: a.keyring, connector, manager, audit: a.audit, clusterUuid: a.cluster.uuid });
        return { service, connector };
      }

      it('a configuration recorded for the SVM meanwhile (a race): refused with 65600016, its root revoked and destroyed, the winner intact', async () => {
        const svm = await newSvm('racevs');
        const winner = await createKm(svm.name);
        const keys = await dataKeys(svm.uuid, 2);
        const kms = (await s.app.services.repos.keyManagers.list()).length;
        // The loser checked before the winner was recorded: its early checks see no configuration.
        const { service, connector } = serviceWith({ keyManagers: { findEnabledForSvm: async (u: string, tx?: unknown) => (tx ? s.app.services.repos.keyManagers.findEnabledForSvm(u, tx as never) : undefined) } });
        const name = `review-race-${store}-${randomBytes(4).toString('hex')}`;
        const row = (await s.app.services.svms.resolve(svm.uuid))!;
        try {
          await expect(service.create(row, external(), WHO, { rootName: name })).rejects.toMatchObject({ code: '65600016' });
        } finally {
          connector.close();
        }
        // Its root was created (the name proves it) and is gone: no active orphan on the server.
        expect(await onServer((c) => c.locateByName(name))).toEqual([]);
        expect((await s.app.services.repos.keyManagers.list()).length).toBe(kms);
        await s.app.services.audit.drain();
        const ev = (await s.app.services.store.db.selectFrom('audit_events').selectAll().where('action', '=', 'key_manager.create').where('outcome', '=', 'failure').execute()).map((e) => JSON.parse(e.detail ?? '{}'));
        expect(ev).toContainEqual(expect.objectContaining({ code: '65600016', root_cleanup: 'destroyed' }));
        // The winner's root is untouched and serves its keys.
        expect(await onServer((c) => c.getState(winner.root_id))).toBe(State.Active);
        forget(winner.uuid);
        expect((await s.call('GET', `${KM}/${winner.uuid}?fields=status`)).body.status.code).toBe(0);
        for (const k of keys) expect((await s.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: k.wrapped })).body.plaintext).toBe(k.plaintext);
      }, 60_000);

      it('with two server addresses a refused root is kept, not destroyed: a reconnect could have reached the other server', async () => {
        const svm = await newSvm('twoaddrvs');
        await createKm(svm.name);
        const { service, connector } = serviceWith({ keyManagers: { findEnabledForSvm: async (u: string, tx?: unknown) => (tx ? s.app.services.repos.keyManagers.findEnabledForSvm(u, tx as never) : undefined) } });
        const name = `review-two-${store}-${randomBytes(4).toString('hex')}`;
        const row = (await s.app.services.svms.resolve(svm.uuid))!;
        try {
          await expect(service.create(row, external([{ server: P(), timeout: 5 }, { server: X(), timeout: 5 }]), WHO, { rootName: name })).rejects.toMatchObject({ code: '65600016' });
        } finally {
          connector.close();
        }
        const [uid] = await onServer((c) => c.locateByName(name));
        expect(uid).toBeDefined();
        expect(await onServer((c) => c.getState(uid))).toBe(State.Active);
        await s.app.services.audit.drain();
        const ev = (await s.app.services.store.db.selectFrom('audit_events').selectAll().where('action', '=', 'key_manager.create').where('outcome', '=', 'failure').execute()).map((e) => JSON.parse(e.detail ?? '{}'));
        expect(ev).toContainEqual(expect.objectContaining({ code: '65600016', root_object: uid, root_cleanup: 'kept_several_servers' }));
      }, 60_000);

      it('a commit reported failed that did happen: the root the store refers to is kept, active', async () => {
        const svm = await newSvm('commitvs');
        const real = s.app.services.store.db;
        // The commit succeeds, then the caller is told it failed (a connection lost during COMMIT).
        const db = { transaction: () => ({ execute: async (fn: (tx: never) => Promise<unknown>) => { await real.transaction().execute(fn as never); throw new Error('connection lost during COMMIT'); } }) } as unknown as Db;
        const { service, connector } = serviceWith({ db });
        const name = `review-commit-${store}-${randomBytes(4).toString('hex')}`;
        const row = (await s.app.services.svms.resolve(svm.uuid))!;
        try {
          await expect(service.create(row, external(), WHO, { rootName: name })).rejects.toThrow(/COMMIT/);
        } finally {
          connector.close();
        }
        const [uid] = await onServer((c) => c.locateByName(name));
        expect(uid).toBeDefined();
        expect(await onServer((c) => c.getState(uid))).toBe(State.Active);
        const recorded = await s.app.services.repos.keyManagers.findEnabledForSvm(svm.uuid);
        expect(recorded?.root_id).toBe(uid);
        // And it is a working configuration.
        forget(recorded!.uuid);
        expect((await s.call('GET', `${KM}/${recorded!.uuid}?fields=status`)).body.status.code).toBe(0);
        await dataKeys(svm.uuid, 1);
      }, 60_000);
    });
  });
}
