/**
 * Older root versions after a paused or cancelled master-key rekey (Element
 * RekeySoftwareEncryptionAtRestMasterKey): KEKs stay under them until a rekey finishes, and the
 * passphrase opens only the newest version. A node that joins afterwards (its own data directory,
 * the same store) and runs ONTAP's synchronize must get every root version some KEK is still
 * under, also after a passphrase change, a restart and an unseal; a finished rekey drops the older
 * versions' seals from the store. Two nodes (three, with one joining late) on PostgreSQL; the
 * single-node parts on SQLite, where the node that joins takes over the store of a stopped one.
 * Invariant 1: every key unwraps to its bytes on every node, throughout.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { ERRORS } from '../src/errors.js';
import { NEXT_ROOT_SEAL } from '../src/hierarchy/keyring.js';
import { PASSPHRASE, STORES, dataKeys, dropPgSchema, expectAllUnwrap, expectError, expectRpcResult, noteSecret, rpc, startServer, startWithOkm, waitAsync, type DataKey, type TestServer } from './helpers.js';

const KM = '/api/security/key-managers';
/** Data SVMs without a key manager of their own: each one's KEK is under the cluster key manager's root. */
const SVMS = 60;

const open: TestServer[] = [];
const dirs: string[] = [];
const schemas: string[] = [];

afterAll(async () => {
  for (const s of open.reverse()) await s.close().catch(() => undefined);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  for (const p of schemas) await dropPgSchema(p);
});

function newPassphrase(): string {
  const p = `older-roots-pass-${randomBytes(16).toString('hex')}`;
  noteSecret(p);
  return p;
}

interface Cluster {
  a: TestServer & { kmUuid: string };
  /** svm name → its data keys */
  keys: Map<string, DataKey[]>;
}

/** Node A with the cluster key manager, SVMS data SVMs falling back to it, and a data key in each. */
async function setup(store: 'sqlite' | 'postgres'): Promise<Cluster> {
  // One KEK per step, so a rekey can be paused mid-way.
  const a = await startWithOkm({ store, rekeyBatch: 1 });
  open.push(a);
  dirs.push(a.dataDir);
  if (a.pgSchema) schemas.push(a.pgSchema);
  const keys = new Map<string, DataKey[]>([['cluster1', await dataKeys(a, 'cluster1', 3)]]);
  for (let i = 0; i < SVMS; i++) {
    const name = `or${i}`;
    const r = await a.call('POST', '/api/svm/svms', { name });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    keys.set(name, await dataKeys(a, name, 1));
  }
  return { a, keys };
}

/** Another node on the same store: its own data directory, so its own node id and seal key. */
async function node(from: TestServer, opts: { dataDir?: string; sealed?: boolean } = {}): Promise<TestServer> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'keysmith-older-roots-'));
  if (!opts.dataDir) dirs.push(dataDir);
  const s = await startServer({ store: from.store, dataDir, storeUrl: from.storeUrl, pgSchema: from.pgSchema, token: from.token, rekeyBatch: 1, sealed: opts.sealed });
  open.push(s);
  return s;
}

async function restart(s: TestServer, opts: { sealed?: boolean } = {}): Promise<TestServer> {
  await s.close();
  open.splice(open.indexOf(s), 1);
  return node(s, { dataDir: s.dataDir, sealed: opts.sealed });
}

async function unwrapAll(c: Cluster, s: TestServer) {
  for (const [svm, ks] of c.keys) await expectAllUnwrap(s, svm, ks);
}

/** The root versions the key manager's KEKs are under, read through a running node `via`. */
const kekRoots = async (c: Cluster, via: TestServer = c.a) =>
  new Set((await via.app.services.store.db.selectFrom('keks').select('root_version').where('key_manager_uuid', '=', c.a.kmUuid).execute()).map((k) => k.root_version));

/** The key manager's root seals in the store, as `version:holder` (holder: a node's id or NEXT_ROOT_SEAL). */
async function seals(c: Cluster, via: TestServer = c.a): Promise<string[]> {
  const rows = await via.app.services.store.db.selectFrom('root_seals').select(['root_version', 'node_id']).where('key_manager_uuid', '=', c.a.kmUuid).execute();
  return rows.map((r) => `${r.root_version}:${r.node_id}`).sort();
}

/** Starts a master-key rekey on `s`, pauses it once it has moved `atLeast` KEKs, then cancels it. */
async function cancelledRekey(s: TestServer, atLeast: number): Promise<number> {
  const started = expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey'));
  const uuid = (await s.app.services.repos.jobs.findByHandle(started.asyncHandle))!.uuid;
  const job = async () => (await s.call('GET', `/api/cluster/jobs/${uuid}`)).body;
  for (const end = Date.now() + 30_000; ((await job()).progress?.done ?? 0) < atLeast; ) {
    if (Date.now() > end) throw new Error('the master-key rekey made no progress');
  }
  expect((await s.call('PATCH', `/api/cluster/jobs/${uuid}?action=pause`)).status).toBe(200);
  const paused = await job();
  expect(paused.state).toBe('paused');
  expect(paused.progress.done).toBeLessThan(paused.progress.total);
  const c = await s.call('PATCH', `/api/cluster/jobs/${uuid}?action=cancel`);
  expect(c.status, JSON.stringify(c.body)).toBe(200);
  expect(await job()).toMatchObject({ state: 'failure', code: Number(ERRORS.job_cancelled.code) });
  return paused.progress.done;
}

async function sync(s: TestServer, kmUuid: string, passphrase: string) {
  return s.call('PATCH', `${KM}/${kmUuid}`, { onboard: { synchronize: true, existing_passphrase: passphrase } });
}

/** A node without the root refuses every key with 65600006; a synchronize with a wrong passphrase changes that for none. */
async function expectUnsynchronized(c: Cluster, s: TestServer, wrong: string) {
  const [k] = c.keys.get('cluster1')!;
  expectError(await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: k.wrapped }), 503, ERRORS.not_synchronized.code);
  expectError(await sync(s, c.a.kmUuid, wrong), ERRORS.passphrase_mismatch.status, ERRORS.passphrase_mismatch.code);
  expectError(await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: k.wrapped }), 503, ERRORS.not_synchronized.code);
}

/** Runs a master-key rekey on `s` to its end; returns the new root version. */
async function finishedRekey(c: Cluster, s: TestServer): Promise<number> {
  const started = expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey'));
  const done = await waitAsync(s, started.asyncHandle, 120_000);
  expect(done.error, JSON.stringify(done)).toBeUndefined();
  const km = (await s.app.services.repos.keyManagers.findByUuid(c.a.kmUuid))!;
  expect(await kekRoots(c, s)).toEqual(new Set([km.root_version]));
  return km.root_version;
}

describe.runIf(STORES.includes('postgres'))('older root versions on a node that joins after cancelled master-key rekeys (PostgreSQL, several nodes)', () => {
  it('synchronize gives the joining node every root version a KEK is under; a passphrase change, a restart and an unseal keep them; a finished rekey drops their seals', { timeout: 300_000 }, async () => {
    const c = await setup('postgres');
    const { a } = c;
    const aId = a.app.services.keyring.node.id;

    // Two cancelled rekeys: KEKs under versions 1, 2 and 3 (each rekey moves the oldest KEKs first).
    const first = await cancelledRekey(a, 15);
    expect(await kekRoots(c)).toEqual(new Set([1, 2]));
    expect(await seals(c)).toEqual([`1:${aId}`, `1:${NEXT_ROOT_SEAL}`, `2:${aId}`].sort());
    const second = await cancelledRekey(a, 3);
    expect(second).toBeLessThan(first);
    expect(await kekRoots(c)).toEqual(new Set([1, 2, 3]));
    expect(await seals(c)).toEqual([`1:${aId}`, `1:${NEXT_ROOT_SEAL}`, `2:${aId}`, `2:${NEXT_ROOT_SEAL}`, `3:${aId}`].sort());
    await unwrapAll(c, a);

    // Node B joins: nothing until synchronize; a wrong passphrase gives it nothing.
    let b = await node(a);
    const bId = b.app.services.keyring.node.id;
    await expectUnsynchronized(c, b, newPassphrase());
    const s1 = await sync(b, a.kmUuid, PASSPHRASE);
    expect(s1.status, JSON.stringify(s1.body)).toBe(200);
    await unwrapAll(c, b);
    // B holds its own seal of the newest version only: the older ones came through their seals under the next.
    expect((await seals(c)).filter((x) => x.endsWith(`:${bId}`))).toEqual([`3:${bId}`]);
    // B's backup holds every root version in use, and verifies.
    const bk = await b.call('GET', `${KM}/${a.kmUuid}?fields=onboard.key_backup`);
    expect(bk.status, JSON.stringify(bk.body)).toBe(200);
    const v = await b.call('POST', `${KM}/onboard/verify-backup`, { key_backup: bk.body.onboard.key_backup, passphrase: PASSPHRASE });
    expect(v.status, JSON.stringify(v.body)).toBe(200);
    expect(v.body).toMatchObject({ keks: SVMS + 1, deks: SVMS + 3 });

    // A restart of B opens them all again from the store.
    b = await restart(b);
    await unwrapAll(c, b);

    // The passphrase changes (on B); node C joins afterwards: only the new passphrase synchronizes
    // it, and then with every version still in use.
    const next = newPassphrase();
    const p = await b.call('PATCH', `${KM}/${a.kmUuid}`, { onboard: { existing_passphrase: PASSPHRASE, passphrase: next } });
    expect(p.status, JSON.stringify(p.body)).toBe(200);
    await unwrapAll(c, b);
    let n3 = await node(a);
    await expectUnsynchronized(c, n3, PASSPHRASE);
    const s2 = await sync(n3, a.kmUuid, next);
    expect(s2.status, JSON.stringify(s2.body)).toBe(200);
    await unwrapAll(c, n3);
    // C started sealed: the unseal with the new passphrase opens every version.
    n3 = await restart(n3, { sealed: true });
    expectError(await n3.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE }), ERRORS.unseal_failed.status, ERRORS.unseal_failed.code);
    const u = await n3.call('POST', '/api/v1/sys/unseal', { passphrase: next });
    expect(u.status, JSON.stringify(u.body)).toBe(200);
    await unwrapAll(c, n3);

    // A master-key rekey that finishes moves every KEK under one new version and drops every older
    // version's seals, the ones under a newer root included. Whichever node ran it, the others
    // synchronize to the new version and serve every key.
    const top = await finishedRekey(c, b);
    expect(top).toBe(4);
    const left = await seals(c);
    expect(left.length).toBeGreaterThan(0);
    expect(left.filter((x) => !x.startsWith(`${top}:`))).toEqual([]);
    expect(left.filter((x) => x.endsWith(`:${NEXT_ROOT_SEAL}`))).toEqual([]);
    for (const s of [a, b, n3]) {
      const r = await sync(s, a.kmUuid, next);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      await unwrapAll(c, s);
    }
    expect(await seals(c)).toEqual([aId, bId, n3.app.services.keyring.node.id].map((id) => `${top}:${id}`).sort());
  });
});

describe('older root versions after a cancelled master-key rekey, one node at a time (SQLite)', () => {
  it('a passphrase change, an unseal and a restart keep the older version; a node taking over the store synchronizes it; a finished rekey drops its seals', { timeout: 300_000 }, async () => {
    const c = await setup('sqlite');
    let a: TestServer = c.a;
    const aId = a.app.services.keyring.node.id;
    await cancelledRekey(a, 15);
    expect(await kekRoots(c)).toEqual(new Set([1, 2]));
    expect(await seals(c)).toEqual([`1:${aId}`, `1:${NEXT_ROOT_SEAL}`, `2:${aId}`].sort());

    // The passphrase changes while KEKs are still under version 1.
    const next = newPassphrase();
    const p = await a.call('PATCH', `${KM}/${c.a.kmUuid}`, { onboard: { existing_passphrase: PASSPHRASE, passphrase: next } });
    expect(p.status, JSON.stringify(p.body)).toBe(200);
    await unwrapAll(c, a);
    expect((await a.call('POST', '/api/v1/sys/seal')).status).toBeLessThan(300);
    const u = await a.call('POST', '/api/v1/sys/unseal', { passphrase: next });
    expect(u.status, JSON.stringify(u.body)).toBe(200);
    await unwrapAll(c, a);
    a = await restart(a);
    await unwrapAll(c, a);
    const storeOf = a;

    // Another node takes over the store (A stopped): only the new passphrase synchronizes it.
    await a.close();
    open.splice(open.indexOf(a), 1);
    let t = await node(storeOf);
    const tId = t.app.services.keyring.node.id;
    await expectUnsynchronized(c, t, PASSPHRASE);
    const s = await sync(t, c.a.kmUuid, next);
    expect(s.status, JSON.stringify(s.body)).toBe(200);
    await unwrapAll(c, t);
    expect(await seals(c, t)).toEqual([`1:${aId}`, `1:${NEXT_ROOT_SEAL}`, `2:${aId}`, `2:${tId}`].sort());
    t = await restart(t);
    await unwrapAll(c, t);

    // The rekey that finishes leaves the new version's seals only.
    const top = await finishedRekey(c, t);
    expect(top).toBe(3);
    expect(await seals(c, t)).toEqual([`3:${tId}`].sort());
    await unwrapAll(c, t);
    t = await restart(t);
    await unwrapAll(c, t);
  });
});
