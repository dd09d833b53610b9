/**
 * An external KMIP configuration changed on one node of a cluster, seen from another node over the
 * same PostgreSQL store (SQLite is single-node), against Debian's real pykmip-server:
 * - node B adopts servers patched on node A on its periodic tick, and at once when its cached
 *   servers fail, and then reaches the root through the new servers only;
 * - settings stored with another root check value are never adopted: node B keeps the settings it
 *   checked, and with those gone it serves nothing of the tenant rather than trust them;
 * - a PATCH made on node B while its cache is older than the store keeps what node A stored.
 *
 * Every "server" is a TCP relay to the one pykmip-server (the root lives there only): each relay is
 * another server name, and closing one is a server that went away. Relays count their connections,
 * which shows which server a node used.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PASSPHRASE, STORES, dataKeys, expectAllUnwrap, expectError, noteSecret, startServer, startWithOkm, type DataKey, type TestServer } from './helpers.js';
import { makeTestPki, pykmipAvailable, startPykmipServer, startTcpRelay, type PykmipServer, type TcpRelay, type TestPki } from '../src/kmip/testing/pykmip.js';

const KM = '/api/security/key-managers';

type Relay = TcpRelay;

let dir: string;
let pki: TestPki;
let py: PykmipServer;
const relays: Relay[] = [];

async function startRelay(): Promise<Relay> {
  const relay = await startTcpRelay(py.port);
  relays.push(relay);
  return relay;
}

beforeAll(async () => {
  if (!pykmipAvailable()) throw new Error('Debian python3-pykmip is not installed (apt-get install -y python3-pykmip)');
  dir = mkdtempSync(join(tmpdir(), 'keysmith-ext-kmip-multinode-'));
  pki = makeTestPki(dir);
  noteSecret(pki.client.key.toString('utf8').split('\n')[1]);
  py = await startPykmipServer(pki, { name: 'multinode' });
}, 60_000);

afterAll(async () => {
  for (const r of relays) await r.close();
  py?.kill();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.runIf(STORES.includes('postgres'))('external KMIP settings changed on another node (two nodes, PostgreSQL)', () => {
  const open: TestServer[] = [];
  let a: TestServer & { kmUuid: string };
  let b: TestServer;
  let svm: string;
  let kmUuid: string;
  let kcv: string;
  const keys: DataKey[] = [];
  let r1: Relay, r2: Relay, r3: Relay, r4: Relay, r5: Relay;

  const servers = (r: Relay) => [{ server: r.name, timeout: 2 }];
  const stored = async () => (await a.app.services.repos.kmipServers.findConfig(kmUuid))!;
  const storedServers = async () => JSON.parse((await stored()).servers).map((x: { host: string; port: number }) => `${x.host}:${x.port}`);
  const status = async (s: TestServer) => (await s.call('GET', `${KM}/${kmUuid}?fields=status`)).body.status as { code: number; message: string };
  /** Node B drops the root from memory (as when it must fetch it again), keeping its cached connection settings. */
  const dropRootOnB = () => b.app.services.keyring.forgetKeyManager(kmUuid);

  beforeAll(async () => {
    [r1, r2, r3, r4, r5] = await Promise.all([startRelay(), startRelay(), startRelay(), startRelay(), startRelay()]);
    a = await startWithOkm({ store: 'postgres' });
    open.push(a);
    for (const body of [
      { type: 'server_ca', name: 'kmip-ca', public_certificate: pki.caPem.toString('utf8') },
      { type: 'client', name: 'kmip-client', public_certificate: pki.client.cert.toString('utf8'), private_key: pki.client.key.toString('utf8') },
    ]) {
      const r = await a.call('POST', '/api/security/certificates', body);
      expect(r.status, JSON.stringify(r.body)).toBe(201);
    }
    const v = await a.call('POST', '/api/svm/svms', { name: 'multinodevs' });
    expect(v.status, JSON.stringify(v.body)).toBe(201);
    svm = v.headers.get('location')!.split('/').pop()!;
    const k = await a.call('POST', KM, { svm: { name: 'multinodevs' }, external: { servers: servers(r1), client_certificate: { name: 'kmip-client' }, server_ca_certificates: [{ name: 'kmip-ca' }] } });
    expect(k.status, JSON.stringify(k.body)).toBe(201);
    kmUuid = k.headers.get('location')!.split('/').pop()!;
    kcv = (await stored()).root_kcv!;
    keys.push(...(await dataKeys(a, svm, 3)));
    // Node B: its own data directory (its own node id and seal key), the same store.
    b = await startServer({ store: 'postgres', dataDir: mkdtempSync(join(tmpdir(), 'keysmith-node-b-')), storeUrl: a.storeUrl, pgSchema: a.pgSchema, token: a.token });
    open.push(b);
  }, 120_000);

  afterAll(async () => {
    for (const s of open.reverse()) await s.close();
  });

  it('node B gets its copy of the client key by a PATCH naming the client certificate there, then serves the tenant', async () => {
    // Without a copy of the client key (and without the onboard root that would open the installed one) node B serves nothing.
    expect((await status(b)).code).toBe(65600061);
    expectError(await b.call('POST', `/api/v1/svms/${svm}/unwrap`, { wrapped: keys[0].wrapped }), 503, '65600006');
    const sync = await b.call('PATCH', `${KM}/${a.kmUuid}`, { onboard: { synchronize: true, existing_passphrase: PASSPHRASE } });
    expect(sync.status, JSON.stringify(sync.body)).toBe(200);
    const p = await b.call('PATCH', `${KM}/${kmUuid}`, { external: { client_certificate: { name: 'kmip-client' } } });
    expect(p.status, JSON.stringify(p.body)).toBe(200);
    expect((await status(b)).code).toBe(0);
    await expectAllUnwrap(b, svm, keys);
    const made = await dataKeys(b, svm, 2);
    await expectAllUnwrap(a, svm, made);
    keys.push(...made);
    expect(r1.connections).toBeGreaterThan(0);
    // Node B's PATCH changed the row (its revision) but nothing node A connects with: node A re-reads
    // the row and keeps its settings, without a connection.
    const before = r1.connections;
    expect(await a.app.services.externalKmip.tick()).toEqual({ refreshed: [], refused: [] });
    expect(r1.connections).toBe(before);
    expect((await status(a)).code).toBe(0);
  }, 60_000);

  it('servers patched on node A are adopted by node B on its next tick; the old server is not used any more', async () => {
    const p = await a.call('PATCH', `${KM}/${kmUuid}`, { external: { servers: servers(r2) } });
    expect(p.status, JSON.stringify(p.body)).toBe(200);
    const [c1, c2] = [r1.connections, r2.connections];
    // (Its own 30 s timer may have come first: what counts is which server node B uses next.)
    await b.app.services.externalKmip.tick();
    // Node B held the root: the new settings were checked against it, with no connection.
    expect([r1.connections, r2.connections]).toEqual([c1, c2]);
    dropRootOnB();
    expect((await status(b)).code).toBe(0);
    expect(r1.connections).toBe(c1);
    expect(r2.connections).toBeGreaterThan(c2);
    await expectAllUnwrap(b, svm, keys);
    // The old server going away changes nothing for node B.
    await r1.close();
    dropRootOnB();
    expect((await status(b)).code).toBe(0);
    await expectAllUnwrap(b, svm, keys);
    // Another tick with nothing changed reads the revisions only.
    expect(await b.app.services.externalKmip.tick()).toEqual({ refreshed: [], refused: [] });
  }, 60_000);

  it('when its cached servers fail, node B reads the store and reaches the root through the servers named there', async () => {
    const p = await a.call('PATCH', `${KM}/${kmUuid}`, { external: { servers: servers(r3) } });
    expect(p.status, JSON.stringify(p.body)).toBe(200);
    await r1.close();
    await r2.close();
    // No tick on node B: its settings still name a server that went away.
    dropRootOnB();
    expect(await status(b)).toEqual({ code: 0, message: '' });
    expect(r3.connections).toBeGreaterThan(0);
    await expectAllUnwrap(b, svm, keys);
    const made = await dataKeys(b, svm, 2);
    await expectAllUnwrap(a, svm, made);
    keys.push(...made);
  }, 60_000);

  it('settings stored with another root check value are not adopted by node B: it keeps those it checked, and without them serves nothing', async () => {
    // A row as a faulty or hostile writer would leave it: other servers, and a check value that is not this root's.
    await a.app.services.repos.kmipServers.updateConfig(kmUuid, { servers: JSON.stringify([{ host: '127.0.0.1', port: Number(r4.name.split(':')[1]), timeout: 2, secondary: [] }]), root_kcv: 'ab'.repeat(32) });
    const row = await stored();
    expect(await b.app.services.externalKmip.tick()).toEqual({ refreshed: [], refused: [{ uuid: kmUuid, code: '65600060' }] });
    // Still on the server it checked (r3), never on the one the row names.
    const c3 = r3.connections;
    dropRootOnB();
    expect((await status(b)).code).toBe(0);
    expect(r3.connections).toBeGreaterThan(c3);
    await expectAllUnwrap(b, svm, keys);
    // Its checked server gone too: the row is still refused, and node B serves nothing of the tenant.
    await r3.close();
    dropRootOnB();
    const st = await status(b);
    expect(st.code, st.message).toBe(65600060);
    expect(st.message).toMatch(/another root/);
    expectError(await b.call('POST', `/api/v1/svms/${svm}/unwrap`, { wrapped: keys[0].wrapped }), 503, '65600006');
    expect(b.app.services.keyring.hasRoot({ uuid: kmUuid, root_version: 1 })).toBe(false);
    expect(r4.connections).toBe(0);
    expect(await stored()).toEqual(row);
    // The same servers with the root's true check value: adopted on the next tick, through r4.
    await a.app.services.repos.kmipServers.updateConfig(kmUuid, { root_kcv: kcv });
    await b.app.services.externalKmip.tick();
    expect(r4.connections).toBeGreaterThan(0);
    expect(b.app.services.keyring.hasRoot({ uuid: kmUuid, root_version: 1 })).toBe(true);
    expect((await status(b)).code).toBe(0);
    await expectAllUnwrap(b, svm, keys);
  }, 60_000);

  it('a PATCH made on node B while its cache is older than the store keeps the servers node A stored', async () => {
    const p = await a.call('PATCH', `${KM}/${kmUuid}`, { external: { servers: servers(r5) } });
    expect(p.status, JSON.stringify(p.body)).toBe(200);
    // No tick on node B: its cache names r4. Renaming the client certificate there changes nothing else.
    const q = await b.call('PATCH', `${KM}/${kmUuid}`, { external: { client_certificate: { name: 'kmip-client' } } });
    expect(q.status, JSON.stringify(q.body)).toBe(200);
    expect(await storedServers()).toEqual([r5.name]);
    expect((await a.call('GET', `${KM}/${kmUuid}`)).body.external.servers.map((x: { server: string }) => x.server)).toEqual([r5.name]);
    // Node B now uses r5 as well.
    await r4.close();
    dropRootOnB();
    expect((await status(b)).code).toBe(0);
    await expectAllUnwrap(b, svm, keys);
    await expectAllUnwrap(a, svm, keys);
  }, 60_000);
});
