/**
 * External KMIP key managers against Debian's real pykmip-server, over real HTTP and mutual TLS, on
 * both stores: configure one with certificates installed through /api/security/certificates, create
 * keys, restart Keysmith on the same data, read every key back, rekey-internal, and the refusals a
 * real TLS failure maps to (66060338, 66060339, 65536821, 65536852, 65536850, 65536828).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, noteSecret, startServer, startWithOkm, type TestServer } from './helpers.js';
import { freePort, makeTestPki, pykmipAvailable, startPykmipServer, type PykmipServer, type TestPki } from '../src/kmip/testing/pykmip.js';

// A real peer is part of the proof: without Debian's python3-pykmip this file fails (CI installs it).
const describeIf = describe;
const KM = '/api/security/key-managers';

let dir: string;
let pki: TestPki;
let py: PykmipServer;
/** A renewal of the client certificate: same key pair, new serial. */
let renewedClient: string;

beforeAll(async () => {
  if (!pykmipAvailable()) throw new Error('Debian python3-pykmip is not installed (apt-get install -y python3-pykmip)');
  dir = mkdtempSync(join(tmpdir(), 'keysmith-ext-kmip-'));
  pki = makeTestPki(dir);
  execFileSync('openssl', ['x509', '-req', '-in', 'client.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'client-renewed.pem', '-days', '2', '-extfile', 'client.ext'], { cwd: dir, stdio: 'pipe' });
  renewedClient = readFileSync(join(dir, 'client-renewed.pem'), 'utf8');
  noteSecret(pki.client.key.toString('utf8').split('\n')[1]);
  py = await startPykmipServer(pki, { name: 'ext' });
}, 60_000);

afterAll(() => {
  py?.kill();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function install(s: TestServer, body: Record<string, unknown>): Promise<string> {
  const r = await s.call('POST', '/api/security/certificates?return_records=true', body);
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.records[0].uuid;
}

async function waitJob(s: TestServer, uuid: string): Promise<any> {
  for (let i = 0; i < 300; i++) {
    const j = await s.call('GET', `/api/cluster/jobs/${uuid}`);
    if (j.body.state === 'success' || j.body.state === 'failure') return j.body;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('job did not end');
}

for (const store of STORES) {
  describeIf(`external KMIP key manager on ${store}`, () => {
    let s: TestServer;
    let svm: { uuid: string; name: string };
    let kmUuid: string;
    const wrapped: { wrapped: string; plaintext: string; svm?: string }[] = [];
    const server = () => `127.0.0.1:${py.port}`;

    beforeAll(async () => {
      // The admin SVM's onboard key manager seals installed private keys (certificates service).
      s = await startWithOkm({ store });
      const r = await s.call('POST', '/api/svm/svms', { name: 'extvs' });
      svm = { uuid: r.headers.get('location')!.split('/').pop()!, name: 'extvs' };
      await install(s, { type: 'server_ca', name: 'kmip-ca', public_certificate: pki.caPem.toString('utf8') });
      await install(s, { type: 'server_ca', name: 'other-ca', public_certificate: pki.otherCa.caPem.toString('utf8') });
      await install(s, { type: 'client', name: 'kmip-client', public_certificate: pki.client.cert.toString('utf8'), private_key: pki.client.key.toString('utf8') });
      await install(s, { type: 'client', name: 'kmip-client-renewed', public_certificate: renewedClient, private_key: pki.client.key.toString('utf8') });
      await install(s, { type: 'client', name: 'no-eku', public_certificate: pki.clientNoEku.cert.toString('utf8'), private_key: pki.clientNoEku.key.toString('utf8') });
      // A certificate from a CA pykmip does not trust: refused in the TLS handshake.
      await install(s, { type: 'client', name: 'foreign', public_certificate: pki.otherCa.serverCert.toString('utf8'), private_key: pki.otherCa.serverKey.toString('utf8') });
    }, 60_000);
    afterAll(() => s?.close());

    const body = (over: Record<string, unknown> = {}) => ({
      svm: { name: 'extvs' },
      external: { servers: [{ server: server(), timeout: 5 }], client_certificate: { name: 'kmip-client' }, server_ca_certificates: [{ name: 'kmip-ca' }], ...over },
    });

    async function count(): Promise<number> {
      return (await s.call('GET', KM)).body.num_records;
    }

    it('refuses a server CA that does not verify the server: 66060338, nothing created', async () => {
      const before = await count();
      const r = await s.call('POST', KM, body({ server_ca_certificates: [{ name: 'other-ca' }] }));
      expect(r.status).toBe(400);
      expect(r.body.error.code).toBe('66060338');
      expect(await count()).toBe(before);
    });

    it('refuses client certificates the server rejects: 66060339 (handshake and KMIP authentication)', async () => {
      const before = await count();
      const foreign = await s.call('POST', KM, body({ client_certificate: { name: 'foreign' } }));
      expect(foreign.body.error?.code, JSON.stringify(foreign.body)).toBe('66060339');
      const noEku = await s.call('POST', KM, body({ client_certificate: { name: 'no-eku' } }));
      expect(noEku.body.error?.code, JSON.stringify(noEku.body)).toBe('66060339');
      expect(await count()).toBe(before);
    });

    it('refuses certificates that are not installed: 65536821', async () => {
      const a = await s.call('POST', KM, body({ client_certificate: { name: 'nope' } }));
      expect(a.body.error).toMatchObject({ code: '65536821', target: 'external.client_certificate' });
      const b = await s.call('POST', KM, body({ server_ca_certificates: [{ uuid: '00000000-0000-4000-8000-000000000000' }] }));
      expect(b.body.error).toMatchObject({ code: '65536821', target: 'external.server_ca_certificates[0]' });
      // A CA certificate named as the client certificate is not an installed client certificate.
      const c = await s.call('POST', KM, body({ client_certificate: { name: 'kmip-ca' } }));
      expect(c.body.error.code).toBe('65536821');
    });

    it('refuses a server nobody answers on: 65536852', async () => {
      const closed = await freePort();
      const r = await s.call('POST', KM, body({ servers: [{ server: `127.0.0.1:${closed}`, timeout: 2 }] }));
      expect(r.body.error?.code, JSON.stringify(r.body)).toBe('65536852');
    });

    it('refuses malformed servers', async () => {
      for (const servers of [[], [{ server: 'a b' }], [{ server: 'h:99999' }], [{ server: 'h', timeout: 0 }], [{ server: 'h', bogus: 1 }]]) {
        const r = await s.call('POST', KM, body({ servers }));
        expect(r.status, JSON.stringify(servers)).toBe(400);
      }
    });

    it('configures the external key manager: the root key is created on the KMIP server', async () => {
      const r = await s.call('POST', KM, body());
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      kmUuid = r.headers.get('location')!.split('/').pop()!;
      const g = await s.call('GET', `${KM}/${kmUuid}?fields=**`);
      expect(g.status).toBe(200);
      expect(g.body.onboard.enabled).toBe(false);
      expect(g.body.status).toEqual({ code: 0, message: '' });
      expect(g.body.external.client_certificate.name).toBe('kmip-client');
      expect(g.body.external.server_ca_certificates.map((c: { name: string }) => c.name)).toEqual(['kmip-ca']);
      expect(g.body.external.servers).toHaveLength(1);
      expect(g.body.external.servers[0]).toMatchObject({ server: server(), timeout: 5, secondary_key_servers: [] });
      expect(g.body.external.servers[0].connectivity).toMatchObject({ cluster_availability: true, node_states: [{ state: 'available' }] });
      const ks = await s.call('GET', `/api/security/key-stores?fields=**`);
      const mine = ks.body.records.find((k: { uuid: string }) => k.uuid === kmUuid);
      expect(mine).toMatchObject({ type: 'kmip', location: 'external', enabled: true, state: 'active' });
      // Only one enabled key manager per SVM.
      expect((await s.call('POST', KM, body())).body.error.code).toBe('65600016');
      // The root object exists on the server, named after this key manager.
      const row = await s.app.services.repos.keyManagers.findByUuid(kmUuid);
      expect(row?.root_id).toMatch(/^\d+$/);
      expect(row?.passphrase_seal.length).toBe(0);
    });

    it('creates keys under it', async () => {
      for (let i = 0; i < 5; i++) {
        const r = await s.call('POST', `/api/v1/svms/${svm.uuid}/data-keys`, {});
        expect(r.status, JSON.stringify(r.body)).toBe(201);
        noteSecret(r.body.plaintext);
        wrapped.push({ wrapped: r.body.wrapped, plaintext: r.body.plaintext });
      }
      const kek = await s.app.services.repos.keks.findActive(svm.uuid);
      expect(kek?.key_manager_uuid).toBe(kmUuid);
    });

    it('PATCH: a server CA that does not verify the server is refused (66060338) and changes nothing', async () => {
      const r = await s.call('PATCH', `${KM}/${kmUuid}`, { external: { server_ca_certificates: [{ name: 'other-ca' }] } });
      expect(r.body.error?.code, JSON.stringify(r.body)).toBe('66060338');
      const g = await s.call('GET', `${KM}/${kmUuid}`);
      expect(g.body.external.server_ca_certificates[0].name).toBe('kmip-ca');
    });

    it('PATCH: a client certificate with other keys is refused (65536850); one not installed (65536821)', async () => {
      const r = await s.call('PATCH', `${KM}/${kmUuid}`, { external: { client_certificate: { name: 'no-eku' } } });
      expect(r.body.error?.code).toBe('65536850');
      const n = await s.call('PATCH', `${KM}/${kmUuid}`, { external: { client_certificate: { name: 'missing' } } });
      expect(n.body.error?.code).toBe('65536821');
      expect((await s.call('GET', `${KM}/${kmUuid}`)).body.external.client_certificate.name).toBe('kmip-client');
    });

    it('PATCH: a renewed client certificate (same keys) is checked against the server and kept', async () => {
      const r = await s.call('PATCH', `${KM}/${kmUuid}`, { external: { client_certificate: { name: 'kmip-client-renewed' } } });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect((await s.call('GET', `${KM}/${kmUuid}`)).body.external.client_certificate.name).toBe('kmip-client-renewed');
    });

    it('PATCH external on an onboard key manager: 65536828', async () => {
      const okm = (await s.call('GET', `${KM}?scope=cluster`)).body.records[0].uuid;
      const r = await s.call('PATCH', `${KM}/${okm}`, { external: { server_ca_certificates: [{ name: 'kmip-ca' }] } });
      expect(r.body.error.code).toBe('65536828');
    });

    it('switches the admin SVM from onboard to an external key manager (create_inactive, then key-stores PATCH); its keys intact', async () => {
      const adminSvm = (await s.app.services.svms.admin())!.uuid;
      const before: { wrapped: string; plaintext: string }[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await s.call('POST', `/api/v1/svms/${adminSvm}/data-keys`, {});
        noteSecret(r.body.plaintext);
        before.push({ wrapped: r.body.wrapped, plaintext: r.body.plaintext });
      }
      const c = await s.call('POST', `${KM}?create_inactive=true`, { external: body().external });
      expect(c.status, JSON.stringify(c.body)).toBe(201);
      const ext = c.headers.get('location')!.split('/').pop()!;
      const p = await s.call('PATCH', `/api/security/key-stores/${ext}?return_timeout=30`, { enabled: true });
      expect(p.status, JSON.stringify(p.body)).toBe(200);
      const ks = (await s.call('GET', `/api/security/key-stores/${ext}`)).body;
      expect(ks).toMatchObject({ type: 'kmip', enabled: true, state: 'active' });
      for (const k of await s.app.services.repos.keks.listAll()) if (k.svm_uuid === adminSvm) expect(k.key_manager_uuid).toBe(ext);
      for (const w of before) expect((await s.call('POST', `/api/v1/svms/${adminSvm}/unwrap`, { wrapped: w.wrapped })).body.plaintext).toBe(w.plaintext);
      wrapped.push(...before.map((w) => ({ ...w, svm: adminSvm })));
    });

    it('key-servers: list, read, modify (timeout, credentials), refusals; the password is never shown', async () => {
      const ks = `${KM}/${kmUuid}/key-servers`;
      const list = await s.call('GET', `${ks}?fields=**`);
      expect(list.status, JSON.stringify(list.body)).toBe(200);
      expect(list.body.records).toHaveLength(1);
      expect(list.body.records[0]).toMatchObject({ server: server(), timeout: 5, connectivity: { cluster_availability: true } });
      const password = `kmip-pw-${Math.random().toString(36).slice(2)}`;
      noteSecret(password);
      const p = await s.call('PATCH', `${ks}/${server()}`, { timeout: 7, username: 'keysmith', password });
      expect(p.status, JSON.stringify(p.body)).toBe(200);
      const one = await s.call('GET', `${ks}/${server()}?fields=**`);
      expect(one.body).toMatchObject({ server: server(), timeout: 7, username: 'keysmith' });
      expect(JSON.stringify(one.body)).not.toContain(password);
      expect(JSON.stringify((await s.call('GET', `${KM}/${kmUuid}?fields=**`)).body)).not.toContain(password);
      // A server name the certificate does not cover fails the TLS check: refused, nothing added.
      const add = await s.call('POST', ks, { server: `localhost:${py.port}` });
      expect(add.body.error?.code, JSON.stringify(add.body)).toBe('66060338');
      expect((await s.call('GET', ks)).body.num_records).toBe(1);
      expect((await s.call('DELETE', `${ks}/${server()}`)).body.error.code).toBe('2');
      expect((await s.call('DELETE', `${ks}/10.9.9.9:5696`)).status).toBe(404);
      const okm = (await s.call('GET', `${KM}?scope=cluster`)).body.records[0].uuid;
      expect((await s.call('GET', `${KM}/${okm}/key-servers`)).body.error.code).toBe('65536828');
    });

    it('after a restart on the same data every key unwraps to the same bytes (root fetched from the server)', async () => {
      const { dataDir, pgSchema, token } = s;
      await s.close();
      s = await startServer({ store, dataDir, pgSchema, token });
      expect(s.app.unsynchronized).not.toContain(kmUuid);
      for (const w of wrapped) {
        const r = await s.call('POST', `/api/v1/svms/${w.svm ?? svm.uuid}/unwrap`, { wrapped: w.wrapped });
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect(r.body.plaintext).toBe(w.plaintext);
      }
    }, 60_000);

    it('rekey-internal re-wraps every key under a new KEK; all still unwrap', async () => {
      const r = await s.call('POST', `${KM}/${kmUuid}/rekey-internal`);
      expect(r.status, JSON.stringify(r.body)).toBe(202);
      const j = await waitJob(s, r.body.job.uuid);
      expect(j.state, JSON.stringify(j)).toBe('success');
      const kek = await s.app.services.repos.keks.findActive(svm.uuid);
      expect(kek?.version).toBe(2);
      for (const w of wrapped) {
        const u = await s.call('POST', `/api/v1/svms/${w.svm ?? svm.uuid}/unwrap`, { wrapped: w.wrapped });
        expect(u.body.plaintext).toBe(w.plaintext);
      }
    });

    it('a restart while the KMIP server is unreachable starts, reports the status, and serves nothing of that SVM', async () => {
      // Point the stored configuration at a closed port, as a server that went away would look.
      const { dataDir, pgSchema, token } = s;
      const cfg = await s.app.services.repos.kmipServers.findConfig(kmUuid);
      await s.close();
      const closed = await freePort();
      const servers = JSON.parse(cfg!.servers);
      servers[0].port = closed;
      servers[0].timeout = 1;
      const again = await startServer({ store, dataDir, pgSchema, token });
      try {
        // Config change made directly: the only way to simulate a vanished server without killing the shared one.
        await again.app.services.repos.kmipServers.updateConfig(kmUuid, { servers: JSON.stringify(servers) });
        again.app.services.externalKmip.forget(kmUuid);
        again.app.services.keyring.forgetKeyManager(kmUuid);
        const g = await again.call('GET', `${KM}/${kmUuid}?fields=status`);
        expect(g.body.status.code).toBe(65536852);
        const u = await again.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: wrapped[0].wrapped });
        expect(u.status).toBeGreaterThanOrEqual(400);
        await again.app.services.repos.kmipServers.updateConfig(kmUuid, { servers: cfg!.servers });
        again.app.services.externalKmip.forget(kmUuid);
        const ok = await again.call('GET', `${KM}/${kmUuid}?fields=status`);
        expect(ok.body.status.code).toBe(0);
        const u2 = await again.call('POST', `/api/v1/svms/${svm.uuid}/unwrap`, { wrapped: wrapped[0].wrapped });
        expect(u2.body.plaintext).toBe(wrapped[0].plaintext);
      } finally {
        s = again;
      }
    }, 60_000);
  });
}
