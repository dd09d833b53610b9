/**
 * The audit log over real HTTP on SQLite and PostgreSQL: what a sequence of calls records, the
 * filters of /api/v1/audit/events, that reads are durable before their response, that the hash
 * chain verifies, and that each kind of tampering in the store is caught.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, noteSecret, startServer, type TestServer } from './helpers.js';

const PASS = 'audit test passphrase: long, and never to be recorded';
const WRONG = 'a wrong existing passphrase, also never recorded';
const NEW_PASS = 'the passphrase we asked for but were refused';

interface Story {
  svm: { uuid: string; name: string };
  adminUuid: string;
  kmUuid: string;
  keys: { key_id: string; plaintext: string; wrapped: string }[];
  secrets: string[];
  requestIds: string[];
}

/** Drives a server through a small, known story and returns what it made. */
async function story(s: TestServer): Promise<Story> {
  noteSecret(PASS);
  noteSecret(WRONG);
  noteSecret(NEW_PASS);
  const km = await s.call('POST', '/api/security/key-managers', { onboard: { passphrase: PASS } });
  expect(km.status).toBe(201);
  const kmUuid = (await s.call('GET', '/api/security/key-managers')).body.records[0].uuid as string;
  const svm = await s.call('POST', '/api/svm/svms?return_records=true', { name: 'vs_audit' });
  expect(svm.status).toBe(201);
  const keys = [];
  for (const length of [256, 128]) {
    const g = await s.call('POST', '/api/v1/svms/vs_audit/data-keys', { length });
    expect(g.status).toBe(201);
    noteSecret(g.body.plaintext);
    keys.push(g.body);
  }
  const u = await s.call('POST', '/api/v1/svms/vs_audit/unwrap', { wrapped: keys[0].wrapped });
  expect(u.status).toBe(200);
  // A refused unwrap: the wrapped form with a flipped ciphertext byte.
  const b = Buffer.from(keys[1].wrapped, 'base64');
  b[b.length - 1] ^= 0x01;
  const bad = await s.call('POST', '/api/v1/svms/vs_audit/unwrap', { wrapped: b.toString('base64') });
  expect(bad.status).toBe(400);
  // A refused passphrase change.
  const p = await s.call('PATCH', `/api/security/key-managers/${kmUuid}`, { onboard: { existing_passphrase: WRONG, passphrase: NEW_PASS } });
  expect(p.status).toBe(400);
  const admin = await s.app.services.store.db.selectFrom('svms').select('uuid').where('scope', '=', 'cluster').executeTakeFirstOrThrow();
  return {
    svm: { uuid: svm.body.records[0].uuid, name: 'vs_audit' },
    adminUuid: admin.uuid,
    kmUuid,
    keys,
    secrets: [PASS, WRONG, NEW_PASS, s.token, ...keys.flatMap((k) => [k.plaintext, Buffer.from(k.plaintext, 'base64').toString('hex')])],
    requestIds: [],
  };
}

const events = async (s: TestServer, query = '') => {
  const r = await s.call('GET', `/api/v1/audit/events${query}`);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body as { records: any[]; num_records: number; next?: number };
};

describe.each(STORES)('audit log on %s', (store) => {
  let s: TestServer;
  let st: Story;
  beforeAll(async () => {
    s = await startServer({ store });
    st = await story(s);
  });
  afterAll(() => s?.close());

  it('records the story in order, with actor, action, object, outcome and request id', async () => {
    const all = await events(s, '?limit=1000');
    const recs = all.records;
    expect(all.num_records).toBe(recs.length);
    // Strictly increasing, gap-free sequence numbers from 1.
    recs.forEach((r, i) => expect(r.seq).toBe(i + 1));
    const actions = recs.map((r) => `${r.action}:${r.outcome}`);
    expect(actions).toEqual([
      'svm.create:success', // admin SVM at first start
      'token.create:success', // bootstrap token
      'key_manager.create:success',
      'svm.create:success',
      'key.generate_data_key:success',
      'key.generate_data_key:success',
      'key.unwrap:success',
      'key.unwrap:failure',
      'key_manager.update_passphrase:failure',
    ]);
    const [adminSvm, token, km, svm, g1, g2, un, bad, pass] = recs;
    expect(adminSvm.actor).toBe('system');
    expect(adminSvm.object_id).toBe(st.adminUuid);
    expect(token.actor).toBe('system');
    for (const r of [km, svm, g1, g2, un, bad, pass]) {
      expect(r.actor).toMatch(/^token:bootstrap:tok_/);
      expect(r.request_id).toMatch(/^req_/);
      expect(r.id).toMatch(/^evt_/);
      expect(Number.isNaN(Date.parse(r.time))).toBe(false);
    }
    // One request, one request id.
    expect(new Set([km, svm, g1, g2, un, bad, pass].map((r) => r.request_id)).size).toBe(7);
    expect(km.object_type).toBe('key_manager');
    expect(km.object_id).toBe(st.kmUuid);
    expect(km.svm_uuid).toBe(st.adminUuid);
    expect(svm.object_type).toBe('svm');
    expect(svm.object_id).toBe(st.svm.uuid);
    expect(svm.detail).toEqual({ name: 'vs_audit' });
    expect(g1.object_type).toBe('key');
    expect(g1.object_id).toBe(st.keys[0].key_id);
    expect(g1.svm_uuid).toBe(st.svm.uuid);
    expect(g1.detail).toMatchObject({ length: 256, state: 'active' });
    expect(g2.object_id).toBe(st.keys[1].key_id);
    expect(g2.detail).toMatchObject({ length: 128 });
    expect(un.object_id).toBe(st.keys[0].key_id);
    expect(un.svm_uuid).toBe(st.svm.uuid);
    expect(bad.object_id).toBe(st.keys[1].key_id);
    expect(bad.outcome).toBe('failure');
    expect(pass.object_id).toBe(st.kmUuid);
    // Times never go backwards.
    for (let i = 1; i < recs.length; i++) expect(recs[i].time >= recs[i - 1].time).toBe(true);
  });

  it('filters by action, object id, outcome, svm, and pages with after/limit', async () => {
    const un = await events(s, '?action=key.unwrap');
    expect(un.records.map((r) => r.outcome)).toEqual(['success', 'failure']);
    for (const r of un.records) expect(r.action).toBe('key.unwrap');

    const byKey = await events(s, `?object_id=${st.keys[0].key_id}`);
    expect(byKey.records.map((r) => r.action)).toEqual(['key.generate_data_key', 'key.unwrap']);
    for (const r of byKey.records) expect(r.object_id).toBe(st.keys[0].key_id);

    const failures = await events(s, '?outcome=failure');
    expect(failures.records.map((r) => r.action)).toEqual(['key.unwrap', 'key_manager.update_passphrase']);
    const both = await events(s, `?outcome=failure&object_id=${st.keys[1].key_id}`);
    expect(both.records.length).toBe(1);
    expect(both.records[0].action).toBe('key.unwrap');

    const bySvmName = await events(s, '?svm=vs_audit');
    const bySvmUuid = await events(s, `?svm=${st.svm.uuid}`);
    expect(bySvmName.records).toEqual(bySvmUuid.records);
    expect(bySvmName.records.map((r) => r.action)).toEqual(['svm.create', 'key.generate_data_key', 'key.generate_data_key', 'key.unwrap', 'key.unwrap']);
    for (const r of bySvmName.records) expect(r.svm_uuid).toBe(st.svm.uuid);
    const admin = await events(s, '?svm=cluster1');
    for (const r of admin.records) expect(r.svm_uuid).toBe(st.adminUuid);
    expect(admin.records.map((r) => r.action)).toContain('key_manager.create');
    expect((await events(s, '?svm=no_such_svm')).records).toEqual([]);

    expect((await events(s, '?actor=system')).records.map((r) => r.action)).toEqual(['svm.create', 'token.create']);

    // Paging: every event exactly once, in order.
    const seen: number[] = [];
    let after: number | undefined;
    for (let i = 0; i < 20; i++) {
      const page = await events(s, `?limit=4${after !== undefined ? `&after=${after}` : ''}`);
      seen.push(...page.records.map((r) => r.seq));
      if (page.next === undefined) break;
      expect(page.next).toBe(page.records[page.records.length - 1].seq);
      after = page.next;
    }
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect((await events(s, '?after=7')).records.map((r) => r.seq)).toEqual([8, 9]);
    expect((await events(s, '?after=9')).records).toEqual([]);
    const one = await events(s, '?action=key.generate_data_key&limit=1');
    expect(one.records.length).toBe(1);
    expect(one.records[0].object_id).toBe(st.keys[0].key_id);
    expect(one.next).toBe(one.records[0].seq);
    const two = await events(s, `?action=key.generate_data_key&limit=1&after=${one.next}`);
    expect(two.records[0].object_id).toBe(st.keys[1].key_id);
  });

  it('refuses bad filters', async () => {
    for (const q of ['?outcome=maybe', '?after=-1', '?after=x', '?limit=ten']) {
      const r = await s.call('GET', `/api/v1/audit/events${q}`);
      expect(r.status, q).toBe(400);
      expect(r.body.error.code, q).toBe('2');
    }
    const zero = await s.call('GET', '/api/v1/audit/events?limit=0');
    expect(zero.status).toBe(400);
    expect(zero.body.error.code).toBe('262197');
    for (const q of ['?action=%00', '?svm=%00', '?object_id=a%00', '?actor=%00x', '?since=%00']) {
      const r = await s.call('GET', `/api/v1/audit/events${q}`);
      expect([r.status, r.body?.error?.code], q).toEqual([400, '2']);
    }
    const unknown = await s.call('GET', '/api/v1/audit/events?colour=red');
    expect(unknown.body.error.code).toBe('262179');
    expect((await s.call('GET', '/api/v1/audit/events', undefined, null)).status).toBe(401);
    expect((await s.call('GET', '/api/v1/audit/verify', undefined, null)).status).toBe(401);
  });

  it('has the unwrap event in the store as soon as the unwrap response arrives', async () => {
    const db = s.app.services.store.db;
    for (const k of st.keys) {
      const u = await s.call('POST', '/api/v1/svms/vs_audit/unwrap', { wrapped: k.wrapped });
      expect(u.status).toBe(200);
      // Straight to the store, no drain: the event was committed before the response was sent.
      const last = await db.selectFrom('audit_events').selectAll().orderBy('seq', 'desc').limit(1).executeTakeFirstOrThrow();
      expect(last.action).toBe('key.unwrap');
      expect(last.object_id).toBe(k.key_id);
      expect(last.outcome).toBe('success');
    }
    // A refused unwrap too.
    const bad = await s.call('POST', '/api/v1/svms/vs_audit/unwrap', { wrapped: 'AAAA' });
    expect(bad.status).toBe(400);
    const last = await db.selectFrom('audit_events').selectAll().orderBy('seq', 'desc').limit(1).executeTakeFirstOrThrow();
    expect(last.action).toBe('key.unwrap');
    expect(last.outcome).toBe('failure');
    // The head moved with it.
    const head = await db.selectFrom('audit_head').selectAll().executeTakeFirstOrThrow();
    expect(Number(head.seq)).toBe(Number(last.seq));
    expect(head.hash).toBe(last.hash);
  });

  it('records every refused call of a known principal once, with the refusal code', async () => {
    const db = s.app.services.store.db;
    const last = () => db.selectFrom('audit_events').selectAll().orderBy('seq', 'desc').limit(1).executeTakeFirstOrThrow();
    const before = await last();
    // A refused state change (an active key cannot be destroyed).
    const k = st.keys[0];
    const r = await s.call('POST', `/api/v1/svms/vs_audit/keys/${k.key_id}/state`, { action: 'destroy' });
    expect(r.status).toBe(409);
    const ev = await last();
    expect(Number(ev.seq)).toBe(Number(before.seq) + 1);
    expect(ev.outcome).toBe('failure');
    expect(ev.object_id).toBe(k.key_id);
    expect(ev.request_id).toMatch(/^req_/);
    expect(JSON.parse(ev.detail!).code).toBe('65600011');
    // A refusal its service already audited is not recorded twice.
    const bad = await s.call('POST', '/api/v1/svms/vs_audit/unwrap', { wrapped: 'AAAA' });
    expect(bad.status).toBe(400);
    const after = await last();
    expect(Number(after.seq)).toBe(Number(ev.seq) + 1);
    expect(after.action).toBe('key.unwrap');
    // Unauthenticated calls have no principal to record.
    expect((await s.call('POST', '/api/svm/svms', { name: 'x' }, null)).status).toBe(401);
    expect(Number((await last()).seq)).toBe(Number(after.seq));
  });

  it('verifies the chain', async () => {
    const v = await s.call('GET', '/api/v1/audit/verify');
    expect(v.status).toBe(200);
    const n = Number((await s.app.services.store.db.selectFrom('audit_events').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n);
    expect(v.body.ok).toBe(true);
    expect(v.body.events).toBe(n);
    expect(v.body.head.seq).toBe(n);
    expect(v.body.broken_at).toBeUndefined();
  });

  it('records no secret: passphrases, tokens and data key plaintexts are nowhere in the audit rows', async () => {
    const rows = await s.app.services.store.db.selectFrom('audit_events').selectAll().execute();
    const text = JSON.stringify(rows);
    expect(rows.length).toBeGreaterThan(9);
    for (const secret of st.secrets) expect(text.includes(secret), `audit holds a secret`).toBe(false);
    // Nor through the API.
    const api = JSON.stringify((await events(s, '?limit=1000')).records);
    for (const secret of st.secrets) expect(api.includes(secret)).toBe(false);
  });
});

describe.each(STORES)('audit tampering on %s', (store) => {
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.close();
  });

  /** A fresh server with the story recorded and a verified chain. */
  async function fresh() {
    const s = await startServer({ store });
    servers.push(s);
    await story(s);
    const v = await s.call('GET', '/api/v1/audit/verify');
    expect(v.body.ok).toBe(true);
    expect(v.body.events).toBe(9);
    return { s, db: s.app.services.store.db };
  }

  async function verify(s: TestServer) {
    const v = await s.call('GET', '/api/v1/audit/verify');
    expect(v.status).toBe(200);
    return v.body as { ok: boolean; broken_at?: number; reason?: string; events: number };
  }

  it('catches an edited outcome', async () => {
    const { s, db } = await fresh();
    const row = await db.selectFrom('audit_events').selectAll().where('action', '=', 'key.unwrap').where('outcome', '=', 'failure').executeTakeFirstOrThrow();
    await db.updateTable('audit_events').set({ outcome: 'success' }).where('seq', '=', row.seq).execute();
    const v = await verify(s);
    expect(v.ok).toBe(false);
    expect(v.broken_at).toBe(Number(row.seq));
    expect(v.reason).toBeTruthy();
    // Putting it back makes the chain whole again: the check reads the store each time.
    await db.updateTable('audit_events').set({ outcome: 'failure' }).where('seq', '=', row.seq).execute();
    expect((await verify(s)).ok).toBe(true);
  });

  it('catches an edited detail, actor or time', async () => {
    const { s, db } = await fresh();
    const row = await db.selectFrom('audit_events').selectAll().where('action', '=', 'key.generate_data_key').orderBy('seq').executeTakeFirstOrThrow();
    const seq = Number(row.seq);
    const edits: Record<string, unknown>[] = [
      { detail: JSON.stringify({ length: 128, state: 'active' }) },
      { detail: null },
      { actor: 'token:someone-else:tok_x' },
      { time: '2001-01-01T00:00:00.000Z' },
      { object_id: 'dek_00000000000000000000000000' },
      { request_id: null },
    ];
    for (const edit of edits) {
      await db.updateTable('audit_events').set(edit).where('seq', '=', row.seq).execute();
      const v = await verify(s);
      expect(v.ok, JSON.stringify(edit)).toBe(false);
      expect(v.broken_at, JSON.stringify(edit)).toBe(seq);
      await db.updateTable('audit_events').set({ detail: row.detail, actor: row.actor, time: row.time, object_id: row.object_id, request_id: row.request_id }).where('seq', '=', row.seq).execute();
      expect((await verify(s)).ok).toBe(true);
    }
  });

  it('catches a deleted middle event', async () => {
    const { s, db } = await fresh();
    await db.deleteFrom('audit_events').where('seq', '=', 5).execute();
    const v = await verify(s);
    expect(v.ok).toBe(false);
    expect(v.broken_at).toBe(5);
    expect(v.events).toBe(4);
  });

  it('catches two events swapped (reordered)', async () => {
    const { s, db } = await fresh();
    await db.transaction().execute(async (tx) => {
      await tx.updateTable('audit_events').set({ seq: -1 }).where('seq', '=', 6).execute();
      await tx.updateTable('audit_events').set({ seq: 6 }).where('seq', '=', 7).execute();
      await tx.updateTable('audit_events').set({ seq: 7 }).where('seq', '=', -1).execute();
    });
    const rows = await db.selectFrom('audit_events').select(['seq', 'action']).orderBy('seq').execute();
    expect(rows.length).toBe(9);
    expect(rows.map((r) => Number(r.seq))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const v = await verify(s);
    expect(v.ok).toBe(false);
    expect(v.broken_at).toBe(6);
  });

  it('catches a deleted last event (the head does not match)', async () => {
    const { s, db } = await fresh();
    await db.deleteFrom('audit_events').where('seq', '=', 9).execute();
    const v = await verify(s);
    expect(v.ok).toBe(false);
    expect(v.broken_at).toBe(9);
    expect(v.events).toBe(8);
  });

  it('catches an inserted event', async () => {
    const { s, db } = await fresh();
    const row = await db.selectFrom('audit_events').selectAll().where('seq', '=', 9).executeTakeFirstOrThrow();
    // Append a forged event after the head, copying the shape of a real one.
    await db.insertInto('audit_events').values({ ...row, seq: 10, id: 'evt_forged', prev_hash: row.hash }).execute();
    const v = await verify(s);
    expect(v.ok).toBe(false);
    expect(v.broken_at).toBe(10);
  });
});
