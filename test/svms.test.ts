/**
 * ONTAP /api/svm/svms over real HTTP on SQLite and PostgreSQL: create, get, list, delete, the admin
 * SVM, name rules and refusals that change nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, noteSecret, startWithOkm, type TestServer } from './helpers.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function expectError(r: { status: number; body: any }, status: number, code: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.body?.error?.code, JSON.stringify(r.body)).toBe(code);
  expect(typeof r.body.error.message).toBe('string');
}

describe.each(STORES)('SVMs on %s', (store) => {
  let s: TestServer;
  const db = () => s.app.services.store.db;
  const svmRows = () => db().selectFrom('svms').selectAll().orderBy('uuid').execute();

  beforeAll(async () => {
    s = await startWithOkm({ store });
  });
  afterAll(() => s?.close());

  it('has the admin SVM from the start: named by /api/cluster, not listed as a data SVM', async () => {
    const c = await s.call('GET', '/api/cluster');
    expect(c.status).toBe(200);
    expect(c.body.name).toBe('cluster1');
    expect(c.body.uuid).toMatch(UUID);
    const admin = await db().selectFrom('svms').selectAll().where('scope', '=', 'cluster').execute();
    expect(admin.length).toBe(1);
    expect(admin[0].name).toBe(c.body.name);
    const list = await s.call('GET', '/api/svm/svms');
    expect(list.status).toBe(200);
    expect(list.body.records.map((r: { name: string }) => r.name)).not.toContain('cluster1');
    expect(list.body.records.map((r: { uuid: string }) => r.uuid)).not.toContain(admin[0].uuid);
    // It exists as a tenant: keys can be made in it by name.
    const k = await s.call('POST', '/api/v1/svms/cluster1/keys', {});
    expect(k.status).toBe(201);
    expect(k.body.svm).toEqual({ uuid: admin[0].uuid, name: 'cluster1' });
    // …but it is not a data SVM resource.
    expectError(await s.call('GET', `/api/svm/svms/${admin[0].uuid}`), 404, '4');
    // …and cannot be deleted.
    expectError(await s.call('DELETE', `/api/svm/svms/${admin[0].uuid}`), 400, '65600014');
    expect((await db().selectFrom('svms').selectAll().where('uuid', '=', admin[0].uuid).execute()).length).toBe(1);
  });

  it('creates, gets and lists a data SVM', async () => {
    const r = await s.call('POST', '/api/svm/svms', { name: 'vs1' });
    expect(r.status).toBe(201);
    expect(r.body).toEqual({});
    const loc = r.headers.get('location')!;
    expect(loc).toMatch(/^\/api\/svm\/svms\/[0-9a-f-]{36}$/);
    const uuid = loc.split('/').pop()!;
    expect(uuid).toMatch(UUID);

    const g = await s.call('GET', `/api/svm/svms/${uuid}`);
    expect(g.status).toBe(200);
    expect(g.body).toEqual({ uuid, name: 'vs1', subtype: 'default', state: 'running', _links: { self: { href: `/api/svm/svms/${uuid}` } } });
    const only = await s.call('GET', `/api/svm/svms/${uuid}?fields=name`);
    expect(only.body).toEqual({ uuid, name: 'vs1', _links: { self: { href: `/api/svm/svms/${uuid}` } } });

    const withRecords = await s.call('POST', '/api/svm/svms?return_records=true', { name: 'vs2.data-2_x' });
    expect(withRecords.status).toBe(201);
    expect(withRecords.body.num_records).toBe(1);
    expect(withRecords.body.records[0].name).toBe('vs2.data-2_x');
    expect(withRecords.body.records[0].uuid).toMatch(UUID);

    const list = await s.call('GET', '/api/svm/svms');
    expect(list.status).toBe(200);
    expect(list.body.num_records).toBe(list.body.records.length);
    const names = list.body.records.map((x: { name: string }) => x.name);
    expect(names).toContain('vs1');
    expect(names).toContain('vs2.data-2_x');
    const vs1 = list.body.records.find((x: { name: string }) => x.name === 'vs1');
    expect(vs1).toEqual({ uuid, name: 'vs1', _links: { self: { href: `/api/svm/svms/${uuid}` } } });
    const star = await s.call('GET', '/api/svm/svms?fields=*&name=vs1');
    expect(star.body.records.length).toBe(1);
    expect(star.body.records[0]).toMatchObject({ uuid, name: 'vs1', subtype: 'default', state: 'running', _links: { self: { href: `/api/svm/svms/${uuid}` } } });
    const byUuid = await s.call('GET', `/api/svm/svms?uuid=${uuid}`);
    expect(byUuid.body.num_records).toBe(1);
    const one = await s.call('GET', '/api/svm/svms?max_records=1');
    expect(one.body.num_records).toBe(1);
    expectError(await s.call('GET', '/api/svm/svms?max_records=0'), 400, '262197');
    expectError(await s.call('GET', '/api/svm/svms?colour=red'), 400, '262179');
    // The largest allowed name: 47 characters.
    expect((await s.call('POST', '/api/svm/svms', { name: 'a'.repeat(47) })).status).toBe(201);
  });

  it('refuses a duplicate name with 409 code 1 and creates nothing', async () => {
    expect((await s.call('POST', '/api/svm/svms', { name: 'dup' })).status).toBe(201);
    const before = await svmRows();
    expectError(await s.call('POST', '/api/svm/svms', { name: 'dup' }), 409, '1');
    // The admin SVM's name is taken too.
    expectError(await s.call('POST', '/api/svm/svms', { name: 'cluster1' }), 409, '1');
    expect(await svmRows()).toEqual(before);
    const list = await s.call('GET', '/api/svm/svms?name=dup');
    expect(list.body.num_records).toBe(1);
  });

  it('refuses invalid names with 262197 and bad bodies with 2/262179', async () => {
    const before = await svmRows();
    for (const name of ['', '1abc', '-abc', '_abc', '.abc', 'has space', 'semi;colon', 'a'.repeat(48), 'sl/ash', 'ünï', 'tab\tname']) {
      const r = await s.call('POST', '/api/svm/svms', { name });
      expectError(r, 400, '262197');
      expect(r.body.error.target).toBe('name');
    }
    expectError(await s.call('POST', '/api/svm/svms', {}), 400, '2');
    expectError(await s.call('POST', '/api/svm/svms', { name: 5 }), 400, '2');
    expectError(await s.call('POST', '/api/svm/svms', { name: 'okname', ipspace: 'x' }), 400, '262179');
    expectError(await s.call('POST', '/api/svm/svms?return_records=maybe', { name: 'okname' }), 400, '262197');
    expect(await svmRows()).toEqual(before);
  });

  it('refuses to delete an SVM that owns keys or a key manager, and keeps it', async () => {
    const c = await s.call('POST', '/api/svm/svms?return_records=true', { name: 'vs_keys' });
    const uuid = c.body.records[0].uuid as string;
    // Keys under the cluster key manager.
    expect((await s.call('POST', '/api/v1/svms/vs_keys/keys', {})).status).toBe(201);
    const g = await s.call('POST', '/api/v1/svms/vs_keys/data-keys', {});
    expect(g.status).toBe(201);
    noteSecret(g.body.plaintext);
    const del = await s.call('DELETE', `/api/svm/svms/${uuid}`);
    expectError(del, 409, '65600013');
    expect((await s.call('GET', `/api/svm/svms/${uuid}`)).status).toBe(200);
    expect((await s.call('GET', '/api/svm/svms?name=vs_keys')).body.num_records).toBe(1);
    // Its keys still work.
    expect((await s.call('POST', '/api/v1/svms/vs_keys/unwrap', { wrapped: g.body.wrapped })).body.plaintext).toBe(g.body.plaintext);
    // Destroyed keys are still keys the SVM owns (their metadata stays).
    await s.call('POST', `/api/v1/svms/vs_keys/keys/${g.body.key_id}/state`, { action: 'deactivate' });
    await s.call('POST', `/api/v1/svms/vs_keys/keys/${g.body.key_id}/state`, { action: 'destroy' });
    expectError(await s.call('DELETE', `/api/svm/svms/${uuid}`), 409, '65600013');
    expect((await s.call('GET', `/api/svm/svms/${uuid}`)).status).toBe(200);

    // An SVM with its own key manager and no keys.
    const k = await s.call('POST', '/api/svm/svms?return_records=true', { name: 'vs_km' });
    const kmSvm = k.body.records[0].uuid as string;
    const pass = 'svm level passphrase, long enough';
    noteSecret(pass);
    const km = await s.call('POST', '/api/security/key-managers', { svm: { name: 'vs_km' }, onboard: { passphrase: pass } });
    expect(km.status, JSON.stringify(km.body)).toBe(201);
    expectError(await s.call('DELETE', `/api/svm/svms/${kmSvm}`), 409, '65600013');
    expect((await s.call('GET', `/api/svm/svms/${kmSvm}`)).status).toBe(200);
  });

  it('deletes an empty SVM: 200, then 404 everywhere', async () => {
    const c = await s.call('POST', '/api/svm/svms?return_records=true', { name: 'vs_empty' });
    const uuid = c.body.records[0].uuid as string;
    // Resolve it once through the data plane so any cache holds it.
    expect((await s.call('GET', '/api/v1/svms/vs_empty/keys')).status).toBe(200);
    const del = await s.call('DELETE', `/api/svm/svms/${uuid}`);
    expect(del.status).toBe(200);
    expectError(await s.call('GET', `/api/svm/svms/${uuid}`), 404, '4');
    expectError(await s.call('DELETE', `/api/svm/svms/${uuid}`), 404, '4');
    expect((await s.call('GET', '/api/svm/svms?name=vs_empty')).body.num_records).toBe(0);
    expectError(await s.call('GET', '/api/v1/svms/vs_empty/keys'), 404, '4');
    expectError(await s.call('POST', `/api/v1/svms/${uuid}/keys`, {}), 404, '4');
    expect(await db().selectFrom('svms').selectAll().where('uuid', '=', uuid).execute()).toEqual([]);
    // The name is free again, for a new SVM with a new uuid.
    const again = await s.call('POST', '/api/svm/svms?return_records=true', { name: 'vs_empty' });
    expect(again.status).toBe(201);
    expect(again.body.records[0].uuid).not.toBe(uuid);
  });

  it('answers unknown SVMs with 404 code 4', async () => {
    expectError(await s.call('GET', '/api/svm/svms/00000000-0000-4000-8000-000000000000'), 404, '4');
    expectError(await s.call('DELETE', '/api/svm/svms/00000000-0000-4000-8000-000000000000'), 404, '4');
    expectError(await s.call('GET', '/api/svm/svms/not-a-uuid'), 404, '4');
    // NUL characters are refused as input, never sent to the store.
    const before = await svmRows();
    expectError(await s.call('GET', '/api/svm/svms/%00'), 400, '2');
    expectError(await s.call('DELETE', '/api/svm/svms/%00'), 400, '2');
    expectError(await s.call('GET', '/api/svm/svms?name=%00'), 400, '2');
    expectError(await s.call('POST', '/api/svm/svms', { name: 'ok\u0000' }), 400, '2');
    expect(await svmRows()).toEqual(before);
  });

  it('needs credentials and the cluster-admin role to create', async () => {
    const r = await s.call('POST', '/api/svm/svms', { name: 'vs_anon' }, null);
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe('10');
    expect((await s.call('GET', '/api/svm/svms', undefined, null)).status).toBe(401);
    expect((await s.call('GET', '/api/svm/svms?name=vs_anon')).body.num_records).toBe(0);
  });
});
