/**
 * The onboard key manager's backup: fetched through ONTAP's onboard.key_backup field, checked with
 * verify-backup, restored into fresh servers across stores, also while a master-key rekey paused or
 * cancelled mid-way leaves KEKs under two roots. Invariant 1: every key restored unwraps to the same
 * bytes; invariant 6: every refused restore changes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { ERRORS } from '../src/errors.js';
import { PASSPHRASE, STORES, expectRpcResult, noteSecret, rpc, startServer, startWithOkm, waitAsync, type TestServer } from './helpers.js';

const KM = '/api/security/key-managers';
const VERIFY = '/api/security/key-managers/onboard/verify-backup';
const RESTORE = '/api/security/key-managers/onboard/restore';

type Store = 'sqlite' | 'postgres';
interface Dek {
  svm: string;
  id: string;
  wrapped: string;
  plaintext: string;
  /** what unwrap must say on a restored server */
  unwraps: boolean;
}
interface Source {
  s: TestServer & { kmUuid: string };
  deks: Dek[];
  /** id → full key record, per SVM, as the source lists it */
  records: Record<string, Record<string, any>>;
  backup: string;
  counts: { svms: number; keks: number; deks: number };
}

const servers: TestServer[] = [];
async function fresh(store: Store, opts: Parameters<typeof startServer>[0] = {}) {
  const s = await startServer({ store, ...opts });
  servers.push(s);
  return s;
}

function expectError(r: { status: number; body: any }, spec: { code: string; status: number }) {
  expect({ status: r.status, code: r.body?.error?.code }).toEqual({ status: spec.status, code: spec.code });
}

function newPassphrase(): string {
  const p = `backup-pass-${randomBytes(18).toString('hex')}`;
  noteSecret(p);
  return p;
}

async function backupOf(s: TestServer, kmUuid: string): Promise<string> {
  const r = await s.call('GET', `${KM}/${kmUuid}?fields=onboard.key_backup`);
  expect(r.status).toBe(200);
  expect(typeof r.body.onboard.key_backup).toBe('string');
  return r.body.onboard.key_backup;
}

async function listKeys(s: TestServer, svm: string): Promise<Record<string, any>> {
  const r = await s.call('GET', `/api/v1/svms/${svm}/keys?limit=1000`);
  expect(r.status).toBe(200);
  return Object.fromEntries(r.body.records.map((k: any) => [k.id, k]));
}

async function dataKey(s: TestServer, svm: string): Promise<Dek> {
  const g = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, {});
  expect(g.status).toBe(201);
  noteSecret(g.body.plaintext);
  return { svm, id: g.body.key_id, wrapped: g.body.wrapped, plaintext: g.body.plaintext, unwraps: true };
}

async function transition(s: TestServer, svm: string, id: string, action: string) {
  const r = await s.call('POST', `/api/v1/svms/${svm}/keys/${id}/state`, { action });
  expect(r.status).toBe(200);
  return r.body;
}

/** A server with the cluster key manager, 50 plain data keys, keys in every other state, and a data SVM falling back to it. */
async function buildSource(store: Store): Promise<Source> {
  const s = await startWithOkm({ store });
  servers.push(s);
  expect((await s.call('POST', '/api/svm/svms', { name: 'vs1' })).status).toBe(201);
  const deks: Dek[] = [];
  for (let i = 0; i < 50; i++) deks.push(await dataKey(s, 'cluster1'));
  for (let i = 0; i < 3; i++) deks.push(await dataKey(s, 'vs1'));
  // keys in other states
  const pre = await s.call('POST', '/api/v1/svms/cluster1/keys', { state: 'pre-active', name: 'stays pre-active' });
  expect(pre.status).toBe(201);
  const toActivate = await s.call('POST', '/api/v1/svms/cluster1/keys', { state: 'pre-active' });
  expect((await transition(s, 'cluster1', toActivate.body.id, 'activate')).state).toBe('active');
  const preDestroyed = await s.call('POST', '/api/v1/svms/vs1/keys', { state: 'pre-active' });
  expect((await transition(s, 'vs1', preDestroyed.body.id, 'destroy')).state).toBe('destroyed');
  const deactivated = await dataKey(s, 'cluster1');
  expect((await transition(s, 'cluster1', deactivated.id, 'deactivate')).state).toBe('deactivated');
  deks.push(deactivated); // deactivated keys still unwrap
  const compromised = await dataKey(s, 'cluster1');
  expect((await transition(s, 'cluster1', compromised.id, 'compromise')).state).toBe('compromised');
  deks.push({ ...compromised, unwraps: false });
  const destroyed = await dataKey(s, 'vs1');
  await transition(s, 'vs1', destroyed.id, 'deactivate');
  expect((await transition(s, 'vs1', destroyed.id, 'destroy')).state).toBe('destroyed');
  deks.push({ ...destroyed, unwraps: false });

  const records = { cluster1: await listKeys(s, 'cluster1'), vs1: await listKeys(s, 'vs1') };
  expect(Object.keys(records.cluster1)).toHaveLength(50 + 2 + 2);
  expect(Object.keys(records.vs1)).toHaveLength(3 + 2);
  const backup = await backupOf(s, s.kmUuid);
  return { s, deks, records, backup, counts: { svms: 2, keks: 2, deks: 50 + 3 + 6 } };
}

/** Rebuilds the armored backup from raw bytes (the test's own writer, not the product's). */
function armor(bytes: Buffer, original: string): string {
  const lines = original.trim().split('\n');
  const b64 = bytes.toString('base64').match(/.{1,64}/g)!;
  return [lines[0], ...b64, lines[lines.length - 1]].join('\n');
}

function innerBytes(backup: string): Buffer {
  const lines = backup.trim().split('\n');
  return Buffer.from(lines.slice(1, -1).join(''), 'base64');
}

/** Alters one byte of the sealed payload and fixes up the digest, so only the AEAD can notice. */
function tamperKeepingDigest(backup: string): string {
  const bytes = innerBytes(backup);
  expect(bytes.subarray(0, 4).toString('ascii')).toBe('KSBK');
  const hlen = bytes.readUInt32BE(5);
  const header = JSON.parse(bytes.subarray(9, 9 + hlen).toString('utf8'));
  const body = Buffer.from(bytes.subarray(9 + hlen));
  body[body.length - 40] ^= 0x01;
  header.digest = createHash('sha256').update(body).digest('hex');
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(h.length);
  return armor(Buffer.concat([bytes.subarray(0, 5), len, h, body]), backup);
}

function flipOneChar(backup: string): string {
  const lines = backup.split('\n');
  const i = Math.floor(lines.length / 2);
  const c = lines[i][10];
  lines[i] = lines[i].slice(0, 10) + (c === 'A' ? 'B' : 'A') + lines[i].slice(11);
  return lines.join('\n');
}

async function expectEmpty(t: TestServer) {
  const kms = await t.call('GET', KM);
  expect(kms.status).toBe(200);
  expect(kms.body.num_records).toBe(0);
  const svms = await t.call('GET', '/api/svm/svms');
  expect(svms.body.num_records).toBe(0);
  const keys = await t.call('GET', '/api/v1/svms/cluster1/keys');
  expect(keys.body.num_records).toBe(0);
}

/** Everything the source had is on the target, byte for byte and state for state. */
async function expectRestored(t: TestServer, src: Source) {
  const kms = await t.call('GET', KM);
  expect(kms.body.records.map((r: any) => r.uuid)).toEqual([src.s.kmUuid]);
  expect(kms.body.records[0].scope).toBe('cluster');
  const st = await t.call('GET', `${KM}/${src.s.kmUuid}?fields=status`);
  expect(st.body.status.code).toBe(0);
  expect((await t.call('GET', '/api/svm/svms?name=vs1')).body.num_records).toBe(1);
  for (const d of src.deks) {
    const u = await t.call('POST', `/api/v1/svms/${d.svm}/unwrap`, { wrapped: d.wrapped });
    if (d.unwraps) {
      expect(u.status).toBe(200);
      expect(u.body.key_id).toBe(d.id);
      expect(u.body.plaintext).toBe(d.plaintext);
    } else expectError(u, ERRORS.key_state);
  }
  for (const svm of ['cluster1', 'vs1']) {
    const got = await listKeys(t, svm);
    expect(got).toEqual(src.records[svm]);
  }
  // the restored hierarchy keeps working: new keys, and the backup's passphrase governs it
  const g = await dataKey(t, 'vs1');
  expect((await t.call('POST', '/api/v1/svms/vs1/unwrap', { wrapped: g.wrapped })).body.plaintext).toBe(g.plaintext);
}

afterAll(async () => {
  for (const s of servers.reverse()) await s.close();
});

const sources: Partial<Record<Store, Source>> = {};
async function source(store: Store): Promise<Source> {
  return (sources[store] ??= await buildSource(store));
}

describe.each(STORES)('backup of a %s key manager', (store) => {
  let src: Source;
  beforeAll(async () => {
    src = await source(store);
  });

  it('is armored base64 between BEGIN BACKUP and END BACKUP lines, without any secret in clear', () => {
    const lines = src.backup.split('\n');
    expect(lines[0]).toMatch(/^-+BEGIN BACKUP-+$/);
    expect(lines[lines.length - 1]).toMatch(/^-+END BACKUP-+$/);
    const body = lines.slice(1, -1);
    expect(body.length).toBeGreaterThan(10);
    for (const l of body) expect(l).toMatch(/^[A-Za-z0-9+/=]{1,64}$/);
    expect(src.backup).not.toContain(PASSPHRASE);
    for (const d of src.deks) expect(src.backup).not.toContain(d.plaintext);
    expect(Buffer.from(body.join(''), 'base64').toString('latin1')).not.toContain(src.deks[0].plaintext);
  });

  it('verifies with the passphrase and reports what it holds', async () => {
    const r = await src.s.call('POST', VERIFY, { key_backup: src.backup, passphrase: PASSPHRASE });
    expect(r.status).toBe(200);
    expect(r.body.key_manager.uuid).toBe(src.s.kmUuid);
    expect({ svms: r.body.svms, keks: r.body.keks, deks: r.body.deks }).toEqual(src.counts);
  });

  it('verify refuses a wrong passphrase, a truncated and an altered backup with the right codes', async () => {
    const wrong = newPassphrase();
    expectError(await src.s.call('POST', VERIFY, { key_backup: src.backup, passphrase: wrong }), ERRORS.backup_wrong_passphrase);
    const noEnd = src.backup.split('\n').slice(0, -1).join('\n');
    expectError(await src.s.call('POST', VERIFY, { key_backup: noEnd, passphrase: PASSPHRASE }), ERRORS.backup_malformed);
    expectError(await src.s.call('POST', VERIFY, { key_backup: tamperKeepingDigest(src.backup), passphrase: PASSPHRASE }), ERRORS.backup_tampered);
    expectError(await src.s.call('POST', VERIFY, { key_backup: 'hello', passphrase: PASSPHRASE }), ERRORS.backup_malformed);
    expectError(await src.s.call('POST', VERIFY, { key_backup: src.backup, passphrase: 'short' }), ERRORS.passphrase_length);
    expectError(await src.s.call('POST', VERIFY, { key_backup: src.backup }), ERRORS.invalid_field);
    expectError(await src.s.call('POST', VERIFY, { key_backup: src.backup, passphrase: PASSPHRASE, x: 1 }), ERRORS.unexpected_argument);
  });

  it('a second backup of the same hierarchy also verifies (each backup is sealed afresh)', async () => {
    const again = await backupOf(src.s, src.s.kmUuid);
    const r = await src.s.call('POST', VERIFY, { key_backup: again, passphrase: PASSPHRASE });
    expect(r.status).toBe(200);
    expect(r.body.deks).toBe(src.counts.deks);
  });
});

const PAIRS = ([['sqlite', 'sqlite'], ['sqlite', 'postgres'], ['postgres', 'sqlite']] as [Store, Store][]).filter(([a, b]) => STORES.includes(a) && STORES.includes(b));

describe.each(PAIRS)('restore %s → %s', (from, to) => {
  let src: Source;
  let t: TestServer;
  beforeAll(async () => {
    src = await source(from);
    t = await fresh(to);
  });

  it('refuses a wrong passphrase (65600002) and restores nothing', async () => {
    const r = await t.call('POST', RESTORE, { key_backup: src.backup, passphrase: newPassphrase() });
    expectError(r, ERRORS.backup_wrong_passphrase);
    await expectEmpty(t);
  });

  it('refuses truncated backups (65600001) and restores nothing', async () => {
    const lines = src.backup.split('\n');
    const variants = [
      lines.slice(0, -1).join('\n'), // no END line
      [...lines.slice(0, 3), ...lines.slice(4)].join('\n'), // one whole line cut out
      [...lines.slice(0, Math.floor(lines.length / 2)), lines[lines.length - 1]].join('\n'), // second half lost
      [...lines.slice(0, -2), lines[lines.length - 2].slice(0, 8), lines[lines.length - 1]].join('\n'), // last line cut short
      lines.slice(1).join('\n'), // no BEGIN line
    ];
    for (const v of variants) {
      const r = await t.call('POST', RESTORE, { key_backup: v, passphrase: PASSPHRASE });
      expectError(r, ERRORS.backup_malformed);
    }
    await expectEmpty(t);
  });

  it('refuses a backup with one base64 character changed, and restores nothing', async () => {
    const r = await t.call('POST', RESTORE, { key_backup: flipOneChar(src.backup), passphrase: PASSPHRASE });
    expect(r.status).toBe(400);
    expect([ERRORS.backup_malformed.code, ERRORS.backup_tampered.code]).toContain(r.body.error.code);
    const r2 = await t.call('POST', RESTORE, { key_backup: tamperKeepingDigest(src.backup), passphrase: PASSPHRASE });
    expectError(r2, ERRORS.backup_tampered);
    await expectEmpty(t);
  });

  it('refuses malformed requests and restores nothing', async () => {
    expectError(await t.call('POST', RESTORE, { key_backup: src.backup }), ERRORS.invalid_field);
    expectError(await t.call('POST', RESTORE, { key_backup: src.backup, passphrase: 'too short' }), ERRORS.passphrase_length);
    expectError(await t.call('POST', RESTORE, { key_backup: src.backup, passphrase: PASSPHRASE, svm: 'x' }), ERRORS.unexpected_argument);
    expectError(await t.call('POST', RESTORE, { key_backup: src.backup, passphrase: PASSPHRASE }, null), ERRORS.not_authenticated);
    await expectEmpty(t);
  });

  it('restores with the right passphrase: 201, every key unwraps to its bytes, states preserved', async () => {
    const r = await t.call('POST', RESTORE, { key_backup: src.backup, passphrase: PASSPHRASE });
    expect(r.status).toBe(201);
    expect(r.body.key_manager.uuid).toBe(src.s.kmUuid);
    expect(r.body.deks).toBe(src.counts.deks);
    await expectRestored(t, src);
  });

  it('refuses to restore the same backup again (65600003) and changes nothing', async () => {
    const before = await listKeys(t, 'cluster1');
    const r = await t.call('POST', RESTORE, { key_backup: src.backup, passphrase: PASSPHRASE });
    expectError(r, ERRORS.restore_not_empty);
    expect(await listKeys(t, 'cluster1')).toEqual(before);
    expect((await t.call('GET', KM)).body.num_records).toBe(1);
  });

  it('the restored key manager is governed by the backup passphrase', async () => {
    const next = newPassphrase();
    const wrong = await t.call('PATCH', `${KM}/${src.s.kmUuid}`, { onboard: { existing_passphrase: newPassphrase(), passphrase: next } });
    expectError(wrong, ERRORS.passphrase_mismatch);
    const r = await t.call('PATCH', `${KM}/${src.s.kmUuid}`, { onboard: { existing_passphrase: PASSPHRASE, passphrase: next } });
    expect(r.status).toBe(200);
    const d = src.deks[7];
    expect((await t.call('POST', `/api/v1/svms/${d.svm}/unwrap`, { wrapped: d.wrapped })).body.plaintext).toBe(d.plaintext);
  });

  it('the restored node holds its own seal: a restart needs no passphrase', async () => {
    await t.close();
    servers.splice(servers.indexOf(t), 1);
    t = await fresh(to, { dataDir: t.dataDir, storeUrl: t.storeUrl, pgSchema: t.pgSchema, token: t.token });
    for (const d of src.deks.slice(0, 5)) {
      const u = await t.call('POST', `/api/v1/svms/${d.svm}/unwrap`, { wrapped: d.wrapped });
      expect(u.status).toBe(200);
      expect(u.body.plaintext).toBe(d.plaintext);
    }
  });
});

describe.each(STORES)('restore conflicts on %s', (store) => {
  it('a server that already has a key manager for the same SVMs refuses with 409 and keeps its keys', async () => {
    const src = await source(STORES[0]);
    const t = await startWithOkm({ store });
    servers.push(t);
    const own = await dataKey(t, 'cluster1');
    const r = await t.call('POST', RESTORE, { key_backup: src.backup, passphrase: PASSPHRASE });
    expectError(r, ERRORS.restore_not_empty);
    const kms = await t.call('GET', KM);
    expect(kms.body.records.map((x: any) => x.uuid)).toEqual([t.kmUuid]);
    expect((await t.call('GET', '/api/svm/svms')).body.num_records).toBe(0);
    const u = await t.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: own.wrapped });
    expect(u.body.plaintext).toBe(own.plaintext);
    // the source's keys are not served here
    const foreign = await t.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: src.deks[0].wrapped });
    expectError(foreign, ERRORS.unwrap_failed);

    // a data SVM's own key manager, backed up elsewhere, restores beside it
    const other = await startServer({ store });
    servers.push(other);
    expect((await other.call('POST', '/api/svm/svms', { name: 'vs9' })).status).toBe(201);
    const p9 = newPassphrase();
    const km9 = await other.call('POST', KM, { svm: { name: 'vs9' }, onboard: { passphrase: p9 } });
    expect(km9.status).toBe(201);
    const km9Uuid = km9.headers.get('location')!.split('/').pop()!;
    const k9 = await dataKey(other, 'vs9');
    const b9 = await backupOf(other, km9Uuid);
    const vs9Uuid = (await other.call('GET', '/api/svm/svms?name=vs9')).body.records[0].uuid;
    // an empty SVM of the same name here takes the backup's identity
    expect((await t.call('POST', '/api/svm/svms', { name: 'vs9' })).status).toBe(201);
    expect((await t.call('GET', '/api/svm/svms?name=vs9')).body.records[0].uuid).not.toBe(vs9Uuid);
    const r9 = await t.call('POST', RESTORE, { key_backup: b9, passphrase: p9 });
    expect(r9.status).toBe(201);
    expect((await t.call('GET', KM)).body.records.map((x: any) => x.uuid).sort()).toEqual([t.kmUuid, km9Uuid].sort());
    expect((await t.call('GET', '/api/svm/svms')).body.records.map((x: any) => [x.name, x.uuid])).toEqual([['vs9', vs9Uuid]]);
    expect((await t.call('POST', '/api/v1/svms/vs9/unwrap', { wrapped: k9.wrapped })).body.plaintext).toBe(k9.plaintext);
    expect((await t.call('POST', `/api/v1/svms/${vs9Uuid}/unwrap`, { wrapped: k9.wrapped })).body.plaintext).toBe(k9.plaintext);
    expect((await t.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: own.wrapped })).body.plaintext).toBe(own.plaintext);
  });
});

describe('backup after a passphrase change', () => {
  it('opens only with the new passphrase, and restores with it', async () => {
    const store = STORES[0];
    const s = await startWithOkm({ store });
    servers.push(s);
    const keys = [await dataKey(s, 'cluster1'), await dataKey(s, 'cluster1')];
    const before = await backupOf(s, s.kmUuid);
    const next = newPassphrase();
    expect((await s.call('PATCH', `${KM}/${s.kmUuid}`, { onboard: { existing_passphrase: PASSPHRASE, passphrase: next } })).status).toBe(200);
    const after = await backupOf(s, s.kmUuid);
    expectError(await s.call('POST', VERIFY, { key_backup: after, passphrase: PASSPHRASE }), ERRORS.backup_wrong_passphrase);
    const ok = await s.call('POST', VERIFY, { key_backup: after, passphrase: next });
    expect(ok.status).toBe(200);
    expect(ok.body.deks).toBe(2);
    // a backup taken before the change still opens with the passphrase it was made under
    expect((await s.call('POST', VERIFY, { key_backup: before, passphrase: PASSPHRASE })).status).toBe(200);

    const t = await fresh(store);
    expectError(await t.call('POST', RESTORE, { key_backup: after, passphrase: PASSPHRASE }), ERRORS.backup_wrong_passphrase);
    await expectEmpty(t);
    const r = await t.call('POST', RESTORE, { key_backup: after, passphrase: next });
    expect(r.status).toBe(201);
    for (const k of keys) expect((await t.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: k.wrapped })).body.plaintext).toBe(k.plaintext);
    // the restored key manager takes the passphrase the backup was opened with
    const p = await t.call('PATCH', `${KM}/${s.kmUuid}`, { onboard: { existing_passphrase: next, passphrase: newPassphrase() } });
    expect(p.status).toBe(200);
  });
});

describe.each(STORES)('backup around a paused and cancelled master-key rekey on %s', (store) => {
  /** Data SVMs without a key manager of their own: each one's KEK is under the cluster key manager's root. */
  const SVMS = 100;

  it('holds both roots while KEKs sit under two; verifies, restores every key under one root; the source keeps serving across an unseal and a later rekey', { timeout: 180_000 }, async () => {
    // One KEK per step, so the rekey can be paused mid-way.
    const s = await startWithOkm({ store, rekeyBatch: 1 });
    servers.push(s);
    const deks: Dek[] = [await dataKey(s, 'cluster1')];
    for (let i = 0; i < SVMS; i += 10) {
      const names = Array.from({ length: Math.min(10, SVMS - i) }, (_, j) => `mk${i + j}`);
      for (const n of names) expect((await s.call('POST', '/api/svm/svms', { name: n })).status).toBe(201);
      deks.push(...(await Promise.all(names.map((n) => dataKey(s, n)))));
    }
    const db = s.app.services.store.db;
    const kekRoots = async () => (await db.selectFrom('keks').select(['root_version']).where('key_manager_uuid', '=', s.kmUuid).execute()).map((k) => k.root_version);
    expect(new Set(await kekRoots())).toEqual(new Set([1]));
    const unwrapAll = async (t: TestServer) => {
      for (const d of deks) {
        const r = await t.call('POST', `/api/v1/svms/${d.svm}/unwrap`, { wrapped: d.wrapped });
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect(r.body.plaintext).toBe(d.plaintext);
      }
    };

    // Element's master-key rekey, paused once it has moved a few KEKs.
    const started = expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey', { keyManagementType: 'Internal' }));
    const uuid = (await s.app.services.repos.jobs.findByHandle(started.asyncHandle))!.uuid;
    const job = async () => (await s.call('GET', `/api/cluster/jobs/${uuid}`)).body;
    for (const end = Date.now() + 30_000; (await job()).progress.done < 3; ) {
      if (Date.now() > end) throw new Error('the master-key rekey made no progress');
    }
    expect((await s.call('PATCH', `/api/cluster/jobs/${uuid}?action=pause`)).status).toBe(200);
    const paused = await job();
    expect(paused.state).toBe('paused');
    expect(paused.progress.done).toBeLessThan(paused.progress.total);
    expect(new Set(await kekRoots())).toEqual(new Set([1, 2]));
    const whilePaused = await backupOf(s, s.kmUuid);

    const c = await s.call('PATCH', `/api/cluster/jobs/${uuid}?action=cancel`);
    expect(c.status, JSON.stringify(c.body)).toBe(200);
    expect(await job()).toMatchObject({ state: 'failure', code: 65600050 });
    // The cancelled rekey left KEKs under both root versions; every key is still served.
    expect(new Set(await kekRoots())).toEqual(new Set([1, 2]));
    await unwrapAll(s);

    const backup = await backupOf(s, s.kmUuid);
    for (const b of [whilePaused, backup]) {
      const v = await s.call('POST', VERIFY, { key_backup: b, passphrase: PASSPHRASE });
      expect(v.status, JSON.stringify(v.body)).toBe(200);
      expect(v.body).toMatchObject({ svms: SVMS + 1, keks: SVMS + 1, deks: deks.length });
    }

    // Restored elsewhere: every key unwraps to its bytes, every KEK under the restored root alone.
    const t = await fresh(store);
    const r = await t.call('POST', RESTORE, { key_backup: backup, passphrase: PASSPHRASE });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    await unwrapAll(t);
    const km = (await t.app.services.repos.keyManagers.findByUuid(s.kmUuid))!;
    const restoredRoots = (await t.app.services.store.db.selectFrom('keks').select('root_version').execute()).map((k) => k.root_version);
    expect(restoredRoots).toHaveLength(SVMS + 1);
    expect(new Set(restoredRoots)).toEqual(new Set([km.root_version]));
    // ... and opens with the passphrase alone, after a seal.
    expect((await t.call('POST', '/api/v1/sys/seal')).status).toBeLessThan(300);
    expect((await t.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE })).status).toBe(200);
    await unwrapAll(t);

    // The source, sealed and unsealed with the passphrase (which opens the newest root only), still
    // serves the keys whose KEKs are under the older one.
    expect((await s.call('POST', '/api/v1/sys/seal')).status).toBeLessThan(300);
    expect((await s.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE })).status).toBe(200);
    await unwrapAll(s);

    // A later master-key rekey moves every KEK under one new root; backups stay whole.
    const again = expectRpcResult(await rpc(s, 'RekeySoftwareEncryptionAtRestMasterKey'));
    const done = await waitAsync(s, again.asyncHandle, 60_000);
    expect(done.error, JSON.stringify(done)).toBeUndefined();
    expect(new Set(await kekRoots())).toEqual(new Set([3]));
    await unwrapAll(s);
    const after = await s.call('POST', VERIFY, { key_backup: await backupOf(s, s.kmUuid), passphrase: PASSPHRASE });
    expect(after.body).toMatchObject({ keks: SVMS + 1, deks: deks.length });
  });
});
