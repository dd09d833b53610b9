/**
 * Sealing: a node restarts without the passphrase (its own seal opens the root keys), a node started
 * sealed serves nothing until unsealed, a running node can be sealed, and a node that joins a
 * PostgreSQL cluster serves nothing until synchronize gives it its own seal.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ERRORS } from '../src/errors.js';
import { PASSPHRASE, STORES, noteSecret, startServer, startWithOkm, type TestServer } from './helpers.js';

const KM = '/api/security/key-managers';

function expectError(r: { status: number; body: any }, spec: { code: string; status: number }) {
  expect({ status: r.status, code: r.body?.error?.code }).toEqual({ status: spec.status, code: spec.code });
}

function newPassphrase(): string {
  const p = `seal-pass-${randomBytes(18).toString('hex')}`;
  noteSecret(p);
  return p;
}

interface Dek {
  svm: string;
  wrapped: string;
  plaintext: string;
}

async function dataKey(s: TestServer, svm: string): Promise<Dek> {
  const g = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, {});
  expect(g.status).toBe(201);
  noteSecret(g.body.plaintext);
  return { svm, wrapped: g.body.wrapped, plaintext: g.body.plaintext };
}

async function expectUnwraps(s: TestServer, deks: Dek[]) {
  for (const d of deks) {
    const u = await s.call('POST', `/api/v1/svms/${d.svm}/unwrap`, { wrapped: d.wrapped });
    expect(u.status).toBe(200);
    expect(u.body.plaintext).toBe(d.plaintext);
  }
}

async function expectRefused(s: TestServer, d: Dek, spec: { code: string; status: number }) {
  expectError(await s.call('POST', `/api/v1/svms/${d.svm}/unwrap`, { wrapped: d.wrapped }), spec);
  expectError(await s.call('POST', `/api/v1/svms/${d.svm}/data-keys`, {}), spec);
  expectError(await s.call('POST', `/api/v1/svms/${d.svm}/unwrap-batch`, { wrapped: [d.wrapped] }), spec);
}

async function health(s: TestServer) {
  const h = await s.call('GET', '/api/health', undefined, null);
  expect(h.status).toBe(200);
  return h.body;
}

describe.each(STORES)('sealing on %s', (store) => {
  const open: TestServer[] = [];
  let first: TestServer & { kmUuid: string };
  let s: TestServer; // the node currently running on first's data directory and store
  const deks: Dek[] = [];
  let vs1Pass: string;

  const restart = async (sealed: boolean) => {
    await s.close();
    open.splice(open.indexOf(s), 1);
    s = await startServer({ store, dataDir: first.dataDir, storeUrl: first.storeUrl, pgSchema: first.pgSchema, token: first.token, sealed });
    open.push(s);
    return s;
  };

  beforeAll(async () => {
    first = await startWithOkm({ store });
    s = first;
    open.push(s);
    expect((await s.call('POST', '/api/svm/svms', { name: 'vs1' })).status).toBe(201);
    vs1Pass = newPassphrase();
    expect((await s.call('POST', KM, { svm: { name: 'vs1' }, onboard: { passphrase: vs1Pass } })).status).toBe(201);
    for (let i = 0; i < 3; i++) deks.push(await dataKey(s, 'cluster1'));
    for (let i = 0; i < 2; i++) deks.push(await dataKey(s, 'vs1'));
  });
  afterAll(async () => {
    for (const x of open) await x.close();
  });

  it('a restart needs no passphrase: every key unwraps on the new process', async () => {
    await restart(false);
    expect((await health(s)).sealed).toBe(false);
    await expectUnwraps(s, deks);
    const st = await s.call('GET', `${KM}?fields=status`);
    expect(st.body.records.map((r: any) => r.status.code)).toEqual([0, 0]);
    deks.push(await dataKey(s, 'cluster1'));
  });

  it('a sealed start serves no key (503 65600004) and says so in health and status', async () => {
    await restart(true);
    expect((await health(s)).sealed).toBe(true);
    for (const d of [deks[0], deks[4]]) await expectRefused(s, d, ERRORS.sealed);
    const st = await s.call('GET', `${KM}?fields=status`);
    expect(st.status).toBe(200);
    for (const r of st.body.records) expect(r.status.code).toBe(Number(ERRORS.sealed.code));
    // the backup needs the root key, which a sealed node does not hold
    expectError(await s.call('GET', `${KM}/${first.kmUuid}?fields=onboard.key_backup`), ERRORS.sealed);
    expectError(await s.call('POST', KM, { svm: { name: 'vs1' }, onboard: { passphrase: newPassphrase() } }), ERRORS.sealed);
  });

  it('unseal with a wrong passphrase: 400 65600005, still sealed', async () => {
    const r = await s.call('POST', '/api/v1/sys/unseal', { passphrase: newPassphrase() });
    expectError(r, ERRORS.unseal_failed);
    expect((await health(s)).sealed).toBe(true);
    await expectRefused(s, deks[0], ERRORS.sealed);
    expectError(await s.call('POST', '/api/v1/sys/unseal', {}), ERRORS.invalid_field);
    expectError(await s.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE }, null), ERRORS.not_authenticated);
    expect((await health(s)).sealed).toBe(true);
  });

  it('unseal opens key managers one passphrase at a time; keys are served once all are open', async () => {
    const a = await s.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE });
    expect(a.status).toBe(200);
    expect(a.body.sealed).toBe(true);
    expect(a.body.opened).toEqual([first.kmUuid]);
    expect(a.body.remaining).toHaveLength(1);
    expect((await health(s)).sealed).toBe(true);
    await expectRefused(s, deks[0], ERRORS.sealed);
    const b = await s.call('POST', '/api/v1/sys/unseal', { passphrase: vs1Pass });
    expect(b.status).toBe(200);
    expect(b.body).toMatchObject({ sealed: false, remaining: [] });
    expect((await health(s)).sealed).toBe(false);
    await expectUnwraps(s, deks);
    const st = await s.call('GET', `${KM}?fields=status`);
    expect(st.body.records.map((r: any) => r.status.code)).toEqual([0, 0]);
    deks.push(await dataKey(s, 'vs1'));
  });

  it('POST /api/v1/sys/seal seals a running node until unsealed', async () => {
    const r = await s.call('POST', '/api/v1/sys/seal');
    expect(r.status).toBe(200);
    expect(r.body.sealed).toBe(true);
    expect((await health(s)).sealed).toBe(true);
    for (const d of [deks[1], deks[deks.length - 1]]) await expectRefused(s, d, ERRORS.sealed);
    expectError(await s.call('POST', '/api/v1/sys/unseal', { passphrase: newPassphrase() }), ERRORS.unseal_failed);
    expect((await s.call('POST', '/api/v1/sys/unseal', { passphrase: vs1Pass })).body.sealed).toBe(true);
    expect((await s.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE })).body.sealed).toBe(false);
    await expectUnwraps(s, deks);
  });

  it('after a passphrase change, a sealed start unseals with the new passphrase only', async () => {
    const next = newPassphrase();
    expect((await s.call('PATCH', `${KM}/${first.kmUuid}`, { onboard: { existing_passphrase: PASSPHRASE, passphrase: next } })).status).toBe(200);
    await restart(true);
    expectError(await s.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE }), ERRORS.unseal_failed);
    expect((await s.call('POST', '/api/v1/sys/unseal', { passphrase: next })).body.opened).toEqual([first.kmUuid]);
    expect((await s.call('POST', '/api/v1/sys/unseal', { passphrase: vs1Pass })).body.sealed).toBe(false);
    await expectUnwraps(s, deks);
    // and a plain restart still needs nothing
    await restart(false);
    await expectUnwraps(s, deks);
  });

  it('seal and unseal need a cluster admin token', async () => {
    expectError(await s.call('POST', '/api/v1/sys/seal', undefined, null), ERRORS.not_authenticated);
    expectError(await s.call('POST', '/api/v1/sys/seal', undefined, 'not-a-token'), ERRORS.not_authenticated);
    expect((await health(s)).sealed).toBe(false);
  });
});

describe.runIf(STORES.includes('postgres'))('a node joining a PostgreSQL cluster', () => {
  const open: TestServer[] = [];
  let a: TestServer & { kmUuid: string };
  let b: TestServer;
  const deks: Dek[] = [];

  beforeAll(async () => {
    a = await startWithOkm({ store: 'postgres' });
    open.push(a);
    for (let i = 0; i < 3; i++) deks.push(await dataKey(a, 'cluster1'));
    // a new node: its own data directory (so its own node key), the same store
    b = await startServer({ store: 'postgres', dataDir: mkdtempSync(join(tmpdir(), 'keysmith-node2-')), storeUrl: a.storeUrl, pgSchema: a.pgSchema, token: a.token });
    open.push(b);
  });
  afterAll(async () => {
    for (const x of open.reverse()) await x.close();
  });

  it('is a different node of the same cluster', async () => {
    const ha = await health(a);
    const hb = await health(b);
    expect(hb.node).not.toBe(ha.node);
    expect(hb.sealed).toBe(false);
    const ca = await a.call('GET', '/api/cluster');
    const cb = await b.call('GET', '/api/cluster');
    expect(cb.body.uuid).toBe(ca.body.uuid);
    expect(b.app.unsynchronized).toEqual([a.kmUuid]);
  });

  it('reports a non-zero key manager status and refuses keys with 503 65600006 until synchronized', async () => {
    const st = await b.call('GET', `${KM}/${a.kmUuid}?fields=status`);
    expect(st.status).toBe(200);
    expect(st.body.status.code).toBe(Number(ERRORS.not_synchronized.code));
    expect(st.body.status.message).toMatch(/synchronize/);
    expect((await a.call('GET', `${KM}/${a.kmUuid}?fields=status`)).body.status.code).toBe(0);
    await expectRefused(b, deks[0], ERRORS.not_synchronized);
    // node A is unaffected
    await expectUnwraps(a, deks);
  });

  it('synchronize refuses a wrong or missing passphrase and stays unsynchronized', async () => {
    expectError(await b.call('PATCH', `${KM}/${a.kmUuid}`, { onboard: { synchronize: true, existing_passphrase: newPassphrase() } }), ERRORS.passphrase_mismatch);
    expectError(await b.call('PATCH', `${KM}/${a.kmUuid}`, { onboard: { synchronize: true } }), ERRORS.sync_needs_existing);
    expectError(await b.call('PATCH', `${KM}/${a.kmUuid}`, { onboard: { synchronize: true, existing_passphrase: PASSPHRASE, passphrase: newPassphrase() } }), ERRORS.sync_forbids_passphrase);
    expect((await b.call('GET', `${KM}/${a.kmUuid}?fields=status`)).body.status.code).toBe(Number(ERRORS.not_synchronized.code));
    expectError(await b.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: deks[0].wrapped }), ERRORS.not_synchronized);
  });

  it('synchronize with the passphrase gives the node its own seal: keys are served there', async () => {
    const r = await b.call('PATCH', `${KM}/${a.kmUuid}`, { onboard: { synchronize: true, existing_passphrase: PASSPHRASE } });
    expect(r.status).toBe(200);
    expect((await b.call('GET', `${KM}/${a.kmUuid}?fields=status`)).body.status.code).toBe(0);
    await expectUnwraps(b, deks);
    const made = await dataKey(b, 'cluster1');
    deks.push(made);
    await expectUnwraps(a, [made]);
  });

  it('the synchronized node restarts without the passphrase', async () => {
    const dataDir = b.dataDir;
    await b.close();
    open.splice(open.indexOf(b), 1);
    b = await startServer({ store: 'postgres', dataDir, storeUrl: a.storeUrl, pgSchema: a.pgSchema, token: a.token });
    open.push(b);
    expect(b.app.unsynchronized).toEqual([]);
    await expectUnwraps(b, deks);
  });
});
