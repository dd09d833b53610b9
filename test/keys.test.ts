/**
 * The data plane (/api/v1/svms/{svm}/keys, data-keys, unwrap, unwrap-batch) over real HTTP on
 * SQLite and PostgreSQL: metadata, paging, envelope round trips, KMIP lifecycle, tamper and
 * context-swap refusals, input validation.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PASSPHRASE, STORES, noteSecret, startServer, startWithOkm, type TestServer } from './helpers.js';

const KEY_FIELDS = [
  'activated_at',
  'algorithm',
  'compromised_at',
  'created_at',
  'deactivated_at',
  'destroyed_at',
  'id',
  'kek_version',
  'length',
  'name',
  'state',
  'svm',
  'updated_at',
].sort();

/** The wrapped form, built independently of the production encoder: 'K' | u8 len | id | blob, base64. */
function buildWrapped(dekId: string, blob: Buffer): string {
  const id = Buffer.from(dekId, 'ascii');
  return Buffer.concat([Buffer.from([0x4b, id.length]), id, blob]).toString('base64');
}

function splitWrapped(wrapped: string): { id: string; blob: Buffer } {
  const b = Buffer.from(wrapped, 'base64');
  expect(b[0]).toBe(0x4b);
  const len = b[1];
  return { id: b.subarray(2, 2 + len).toString('ascii'), blob: Buffer.from(b.subarray(2 + len)) };
}

function flip(wrapped: string, fromEnd: number): string {
  const b = Buffer.from(wrapped, 'base64');
  b[b.length - fromEnd] ^= 0x01;
  return b.toString('base64');
}

async function raw(s: TestServer, method: string, path: string, body: string, contentType: string) {
  const res = await fetch(s.url + path, { method, headers: { authorization: `Bearer ${s.token}`, 'content-type': contentType }, body });
  const text = await res.text();
  let parsed: any = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: parsed };
}

function expectError(r: { status: number; body: any }, status: number, code: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.body?.error?.code, JSON.stringify(r.body)).toBe(code);
  expect(typeof r.body.error.message).toBe('string');
}

describe.each(STORES)('data plane on %s', (store) => {
  let s: TestServer;
  let svmA: { uuid: string; name: string };
  let svmB: { uuid: string; name: string };
  const db = () => s.app.services.store.db;
  const dekRow = (id: string) => db().selectFrom('deks').selectAll().where('id', '=', id).executeTakeFirst();
  const dekCount = async () => Number((await db().selectFrom('deks').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n);

  async function createSvm(name: string) {
    const r = await s.call('POST', '/api/svm/svms?return_records=true', { name });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return { uuid: r.body.records[0].uuid as string, name };
  }

  async function dataKey(svm: string, body: Record<string, unknown> = {}) {
    const r = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, body);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    noteSecret(r.body.plaintext);
    return r.body as { key_id: string; plaintext: string; wrapped: string; kek_version: number };
  }

  async function createKey(svm: string, body: Record<string, unknown> = {}) {
    const r = await s.call('POST', `/api/v1/svms/${svm}/keys`, body);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body;
  }

  const unwrap = (svm: string, wrapped: string) => s.call('POST', `/api/v1/svms/${svm}/unwrap`, { wrapped });
  const act = (svm: string, id: string, action: string) => s.call('POST', `/api/v1/svms/${svm}/keys/${id}/state`, { action });

  beforeAll(async () => {
    s = await startWithOkm({ store });
    svmA = await createSvm('vs_alpha');
    svmB = await createSvm('vs_beta');
  });
  afterAll(() => s?.close());

  describe('create, get, list', () => {
    it('creates a DEK: 201, metadata only, material stored wrapped', async () => {
      const r = await s.call('POST', '/api/v1/svms/cluster1/keys', { name: 'vol1-key' });
      expect(r.status).toBe(201);
      const k = r.body;
      expect(Object.keys(k).sort()).toEqual(KEY_FIELDS);
      expect(k.id).toMatch(/^dek_[0-9a-z]{26}$/);
      expect(k.name).toBe('vol1-key');
      expect(k.algorithm).toBe('AES');
      expect(k.length).toBe(256);
      expect(k.state).toBe('active');
      expect(k.kek_version).toBe(1);
      expect(k.svm.name).toBe('cluster1');
      expect(k.activated_at).toBe(k.created_at);
      expect(k.deactivated_at).toBeNull();
      expect(k.destroyed_at).toBeNull();
      expect(r.headers.get('location')).toBe(`/api/v1/svms/${k.svm.uuid}/keys/${k.id}`);
      const text = JSON.stringify(r.body);
      expect(text).not.toMatch(/plaintext|wrapped|material|"key"/);
      const row = await dekRow(k.id);
      expect(row?.wrapped).toBeInstanceOf(Buffer);
      expect(row!.wrapped!.length).toBeGreaterThan(32);
      // The stored wrapped blob is not in the response either.
      expect(text).not.toContain(row!.wrapped!.toString('base64'));
    });

    it('creates with defaults (empty object) and with length 128 and state pre-active', async () => {
      const d = await s.call('POST', `/api/v1/svms/${svmA.uuid}/keys`, {});
      expect(d.status).toBe(201);
      expect(d.body.name).toBeNull();
      expect(d.body.length).toBe(256);
      expect(d.body.svm).toEqual({ uuid: svmA.uuid, name: svmA.name });
      const p = await createKey(svmA.name, { length: 128, state: 'pre-active' });
      expect(p.length).toBe(128);
      expect(p.state).toBe('pre-active');
      expect(p.activated_at).toBeNull();
    });

    it('gets a key by id, through the SVM name or uuid; another SVM or an unknown id is 404', async () => {
      const k = await createKey(svmA.name, { name: 'g' });
      const byName = await s.call('GET', `/api/v1/svms/${svmA.name}/keys/${k.id}`);
      expect(byName.status).toBe(200);
      expect(byName.body).toEqual(k);
      const byUuid = await s.call('GET', `/api/v1/svms/${svmA.uuid}/keys/${k.id}`);
      expect(byUuid.body).toEqual(k);
      expectError(await s.call('GET', `/api/v1/svms/${svmB.name}/keys/${k.id}`), 404, '4');
      expectError(await s.call('GET', `/api/v1/svms/cluster1/keys/${k.id}`), 404, '4');
      expectError(await s.call('GET', `/api/v1/svms/${svmA.name}/keys/dek_00000000000000000000000000`), 404, '4');
    });

    it('lists in pages that cover every key exactly once', async () => {
      const svm = await createSvm('vs_paging');
      const ids: string[] = [];
      for (let i = 0; i < 7; i++) ids.push((await createKey(svm.name, { name: `p${i}` })).id);
      const seen: string[] = [];
      let after: string | undefined;
      let pages = 0;
      for (;;) {
        const r = await s.call('GET', `/api/v1/svms/${svm.name}/keys?limit=3${after ? `&after=${after}` : ''}`);
        expect(r.status).toBe(200);
        expect(r.body.num_records).toBe(r.body.records.length);
        for (const rec of r.body.records) {
          expect(Object.keys(rec).sort()).toEqual(KEY_FIELDS);
          expect(rec.svm.uuid).toBe(svm.uuid);
        }
        seen.push(...r.body.records.map((x: { id: string }) => x.id));
        pages += 1;
        if (!r.body.next) break;
        expect(r.body.records.length).toBe(3);
        expect(r.body.next).toBe(r.body.records[2].id);
        after = r.body.next;
        expect(pages).toBeLessThan(10);
      }
      expect(pages).toBe(3);
      expect(seen.length).toBe(7);
      expect(new Set(seen).size).toBe(7);
      expect([...seen].sort()).toEqual([...ids].sort());
      expect(seen).toEqual([...seen].sort());

      // Exactly a multiple of the page size: the last full page has no `next` pointing at an empty page.
      const six = await s.call('GET', `/api/v1/svms/${svm.name}/keys?limit=7`);
      expect(six.body.records.length).toBe(7);
      expect(six.body.next).toBeUndefined();
      const all = await s.call('GET', `/api/v1/svms/${svm.name}/keys`);
      expect(all.body.num_records).toBe(7);
      // A list shows no key material.
      expect(JSON.stringify(all.body)).not.toMatch(/plaintext|wrapped/);
      // Keys of other SVMs do not leak into this list.
      const other = await s.call('GET', `/api/v1/svms/${svmB.name}/keys?limit=1000`);
      for (const rec of other.body.records) expect(ids).not.toContain(rec.id);
    });

    it('refuses bad list parameters', async () => {
      expectError(await s.call('GET', `/api/v1/svms/${svmA.name}/keys?limit=0`), 400, '262197');
      expectError(await s.call('GET', `/api/v1/svms/${svmA.name}/keys?limit=1001`), 400, '262197');
      expectError(await s.call('GET', `/api/v1/svms/${svmA.name}/keys?limit=abc`), 400, '2');
      expectError(await s.call('GET', `/api/v1/svms/${svmA.name}/keys?limit=-1`), 400, '2');
      expectError(await s.call('GET', `/api/v1/svms/${svmA.name}/keys?colour=red`), 400, '262179');
    });
  });

  describe('data keys and unwrap', () => {
    it('generates a 256-bit data key and unwraps it to the same bytes', async () => {
      const g = await dataKey(svmA.name, { name: 'env1' });
      expect(Buffer.from(g.plaintext, 'base64').length).toBe(32);
      expect(g.key_id).toMatch(/^dek_/);
      expect(g.kek_version).toBe(1);
      expect(splitWrapped(g.wrapped).id).toBe(g.key_id);
      const u = await unwrap(svmA.name, g.wrapped);
      expect(u.status).toBe(200);
      expect(u.body).toEqual({ key_id: g.key_id, plaintext: g.plaintext });
      // By uuid too, and again (cached KEK path).
      expect((await unwrap(svmA.uuid, g.wrapped)).body.plaintext).toBe(g.plaintext);
      // The key is listed as an ordinary active key, with no material.
      const meta = await s.call('GET', `/api/v1/svms/${svmA.name}/keys/${g.key_id}`);
      expect(meta.body.state).toBe('active');
      expect(meta.body.name).toBe('env1');
      // The store holds it only wrapped.
      const row = await dekRow(g.key_id);
      expect(row!.wrapped!.includes(Buffer.from(g.plaintext, 'base64'))).toBe(false);
      expect(row!.wrapped!.equals(splitWrapped(g.wrapped).blob)).toBe(true);
    });

    it('generates a 128-bit data key', async () => {
      const g = await dataKey(svmA.name, { length: 128 });
      expect(Buffer.from(g.plaintext, 'base64').length).toBe(16);
      expect((await unwrap(svmA.name, g.wrapped)).body.plaintext).toBe(g.plaintext);
      expect((await s.call('GET', `/api/v1/svms/${svmA.name}/keys/${g.key_id}`)).body.length).toBe(128);
    });

    it('generates distinct keys', async () => {
      const a = await dataKey('cluster1');
      const b = await dataKey('cluster1');
      expect(a.plaintext).not.toBe(b.plaintext);
      expect(a.key_id).not.toBe(b.key_id);
    });

    it('unwraps a batch: per-entry results and errors, in order', async () => {
      const g1 = await dataKey(svmA.name);
      const g2 = await dataKey(svmA.name, { length: 128 });
      const foreign = await dataKey(svmB.name);
      const doomed = await dataKey(svmA.name);
      expect((await act(svmA.name, doomed.key_id, 'compromise')).status).toBe(200);
      const tampered = flip(g1.wrapped, 1);
      const batch = [g1.wrapped, tampered, foreign.wrapped, g2.wrapped, 'AAAA', doomed.wrapped, g1.wrapped];
      const r = await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, { wrapped: batch });
      expect(r.status).toBe(200);
      expect(r.body.num_records).toBe(7);
      const rec = r.body.records;
      expect(rec[0]).toEqual({ key_id: g1.key_id, plaintext: g1.plaintext });
      expect(rec[1].key_id).toBe(g1.key_id);
      expect(rec[1].error.code).toBe('65600012');
      expect(rec[1].plaintext).toBeUndefined();
      expect(rec[2].key_id).toBe(foreign.key_id);
      expect(rec[2].error.code).toBe('65600012');
      expect(rec[2].plaintext).toBeUndefined();
      expect(rec[3]).toEqual({ key_id: g2.key_id, plaintext: g2.plaintext });
      expect(rec[4].key_id).toBeNull();
      expect(rec[4].error.code).toBe('65600012');
      expect(rec[5].key_id).toBe(doomed.key_id);
      expect(rec[5].error.code).toBe('65600010');
      expect(rec[6]).toEqual({ key_id: g1.key_id, plaintext: g1.plaintext });
      // No plaintext of a refused entry anywhere in the answer.
      expect(JSON.stringify(r.body)).not.toContain(foreign.plaintext);
      expect(JSON.stringify(r.body)).not.toContain(doomed.plaintext);
      // The foreign key still unwraps in its own SVM.
      expect((await unwrap(svmB.name, foreign.wrapped)).body.plaintext).toBe(foreign.plaintext);
    });

    it('refuses bad batch bodies', async () => {
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, { wrapped: [] }), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, { wrapped: 'x' }), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, { wrapped: [1] }), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, {}), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, { wrapped: ['AAAA'], extra: 1 }), 400, '262179');
      expectError(await s.call('POST', '/api/v1/svms/no_such_svm/unwrap-batch', { wrapped: ['AAAA'] }), 404, '4');
    });
  });

  describe('KMIP lifecycle', () => {
    /** Snapshot of everything a refused transition must leave alone. */
    async function snapshot(svm: string, id: string) {
      const meta = (await s.call('GET', `/api/v1/svms/${svm}/keys/${id}`)).body;
      const row = await dekRow(id);
      return { meta, row: { ...row, wrapped: row?.wrapped ? row.wrapped.toString('hex') : null } };
    }
    async function refused(svm: string, id: string, action: string) {
      const before = await snapshot(svm, id);
      const r = await act(svm, id, action);
      expectError(r, 409, '65600011');
      expect(r.body.error.target).toBe('state');
      expect(await snapshot(svm, id)).toEqual(before);
    }
    /** The wrapped form of a key created without one, from its stored blob. */
    async function wrappedOf(id: string) {
      const row = await dekRow(id);
      return buildWrapped(id, row!.wrapped!);
    }

    it('walks pre-active → active → deactivated → destroyed → destroyed-compromised', async () => {
      const k = await createKey(svmA.name, { state: 'pre-active' });
      const w = await wrappedOf(k.id);

      // pre-active: does not unwrap; cannot be deactivated.
      expectError(await unwrap(svmA.name, w), 409, '65600010');
      await refused(svmA.name, k.id, 'deactivate');

      const a = await act(svmA.name, k.id, 'activate');
      expect(a.status).toBe(200);
      expect(a.body.state).toBe('active');
      expect(a.body.activated_at).toBeTruthy();
      const plain = (await unwrap(svmA.name, w)).body.plaintext;
      expect(Buffer.from(plain, 'base64').length).toBe(32);
      noteSecret(plain);
      await refused(svmA.name, k.id, 'activate');
      await refused(svmA.name, k.id, 'destroy');
      expectError(await s.call('DELETE', `/api/v1/svms/${svmA.name}/keys/${k.id}`), 409, '65600011');
      expect((await dekRow(k.id))!.state).toBe('active');

      const d = await act(svmA.name, k.id, 'deactivate');
      expect(d.status).toBe(200);
      expect(d.body.state).toBe('deactivated');
      expect(d.body.deactivated_at).toBeTruthy();
      // Deactivated keys still unwrap (existing data stays readable).
      expect((await unwrap(svmA.name, w)).body.plaintext).toBe(plain);
      await refused(svmA.name, k.id, 'activate');
      await refused(svmA.name, k.id, 'deactivate');

      const x = await act(svmA.name, k.id, 'destroy');
      expect(x.status).toBe(200);
      expect(x.body.state).toBe('destroyed');
      expect(x.body.destroyed_at).toBeTruthy();
      // The material is gone from the store, and the old wrapped form no longer unwraps.
      const row = await dekRow(k.id);
      expect(row!.wrapped).toBeNull();
      const nulls = await db().selectFrom('deks').select('id').where('id', '=', k.id).where('wrapped', 'is', null).execute();
      expect(nulls.length).toBe(1);
      expectError(await unwrap(svmA.name, w), 409, '65600010');
      await refused(svmA.name, k.id, 'destroy');
      await refused(svmA.name, k.id, 'activate');
      await refused(svmA.name, k.id, 'deactivate');
      // Destroyed keys stay listed, as metadata.
      expect((await s.call('GET', `/api/v1/svms/${svmA.name}/keys/${k.id}`)).body.state).toBe('destroyed');

      const c = await act(svmA.name, k.id, 'compromise');
      expect(c.status).toBe(200);
      expect(c.body.state).toBe('destroyed-compromised');
      expect(c.body.compromised_at).toBeTruthy();
      expect(c.body.destroyed_at).toBe(x.body.destroyed_at);
      expect((await dekRow(k.id))!.wrapped).toBeNull();
      for (const action of ['activate', 'deactivate', 'compromise', 'destroy']) await refused(svmA.name, k.id, action);
      expectError(await unwrap(svmA.name, w), 409, '65600010');
    });

    it('compromises from pre-active, active and deactivated; compromised keys do not unwrap; destroy makes them destroyed-compromised', async () => {
      for (const start of ['pre-active', 'active', 'deactivated'] as const) {
        const k = await createKey(svmA.name, { state: start === 'pre-active' ? 'pre-active' : 'active' });
        if (start === 'deactivated') expect((await act(svmA.name, k.id, 'deactivate')).body.state).toBe('deactivated');
        const w = await wrappedOf(k.id);
        const c = await act(svmA.name, k.id, 'compromise');
        expect(c.status, start).toBe(200);
        expect(c.body.state).toBe('compromised');
        expect(c.body.compromised_at).toBeTruthy();
        expectError(await unwrap(svmA.name, w), 409, '65600010');
        await refused(svmA.name, k.id, 'activate');
        await refused(svmA.name, k.id, 'deactivate');
        await refused(svmA.name, k.id, 'compromise');
        const x = await act(svmA.name, k.id, 'destroy');
        expect(x.body.state).toBe('destroyed-compromised');
        expect(x.body.compromised_at).toBe(c.body.compromised_at);
        expect((await dekRow(k.id))!.wrapped).toBeNull();
        expectError(await unwrap(svmA.name, w), 409, '65600010');
      }
    });

    it('destroys a pre-active key directly, and DELETE destroys a deactivated key', async () => {
      const p = await createKey(svmA.name, { state: 'pre-active' });
      const x = await act(svmA.name, p.id, 'destroy');
      expect(x.body.state).toBe('destroyed');
      expect((await dekRow(p.id))!.wrapped).toBeNull();

      const g = await dataKey(svmA.name);
      await act(svmA.name, g.key_id, 'deactivate');
      const del = await s.call('DELETE', `/api/v1/svms/${svmA.name}/keys/${g.key_id}`);
      expect(del.status).toBe(200);
      expect(del.body.state).toBe('destroyed');
      expect((await dekRow(g.key_id))!.wrapped).toBeNull();
      expectError(await unwrap(svmA.name, g.wrapped), 409, '65600010');
    });

    it('refuses unknown actions and keys, and other SVMs’ keys', async () => {
      const k = await createKey(svmA.name);
      expectError(await act(svmA.name, k.id, 'revive'), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/keys/${k.id}/state`, {}), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/keys/${k.id}/state`, { action: 'activate', when: 'now' }), 400, '262179');
      expectError(await act(svmA.name, 'dek_00000000000000000000000000', 'destroy'), 404, '4');
      // Another SVM cannot touch this key.
      const before = await dekRow(k.id);
      expectError(await act(svmB.name, k.id, 'deactivate'), 404, '4');
      expectError(await s.call('DELETE', `/api/v1/svms/${svmB.name}/keys/${k.id}`), 404, '4');
      expect(await dekRow(k.id)).toEqual(before);
    });
  });

  describe('tamper and context swaps', () => {
    it('refuses a wrapped form with any flipped byte in iv, tag or ciphertext', async () => {
      const g = await dataKey(svmA.name);
      const len = Buffer.from(g.wrapped, 'base64').length;
      // Last 32 bytes are ciphertext, then 16 tag and 12 iv before them; sample positions in each part.
      for (const fromEnd of [1, 16, 32, 33, 40, 48, 49, 55, 60, len - 2, len - 10]) {
        const r = await unwrap(svmA.name, flip(g.wrapped, fromEnd));
        expect([r.status, r.body?.error?.code], `byte -${fromEnd}`).toEqual([400, '65600012']);
        expect(JSON.stringify(r.body)).not.toContain(g.plaintext);
      }
      // Truncated and extended forms.
      const b = Buffer.from(g.wrapped, 'base64');
      expectError(await unwrap(svmA.name, b.subarray(0, b.length - 1).toString('base64')), 400, '65600012');
      expectError(await unwrap(svmA.name, Buffer.concat([b, Buffer.from([0])]).toString('base64')), 400, '65600012');
      expectError(await unwrap(svmA.name, b.subarray(0, 20).toString('base64')), 400, '65600012');
      // Not base64, wrong leading byte.
      expectError(await unwrap(svmA.name, '!!!not base64!!!'), 400, '65600012');
      const wrongTag = Buffer.from(b);
      wrongTag[0] = 0x4c;
      expectError(await unwrap(svmA.name, wrongTag.toString('base64')), 400, '65600012');
      // The original still works.
      expect((await unwrap(svmA.name, g.wrapped)).body.plaintext).toBe(g.plaintext);
    });

    it('refuses every single-byte alteration of a wrapped form, and out-of-range KEK versions in its header', async () => {
      const g = await dataKey(svmA.name);
      const b = Buffer.from(g.wrapped, 'base64');
      const forms: string[] = [];
      for (let i = 0; i < b.length; i++)
        for (const mask of [0x01, 0x80]) {
          const t = Buffer.from(b);
          t[i] ^= mask;
          forms.push(t.toString('base64'));
        }
      const r = await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, { wrapped: forms });
      expect(r.status, JSON.stringify(r.body).slice(0, 300)).toBe(200);
      expect(r.body.records.length).toBe(forms.length);
      r.body.records.forEach((rec: any, i: number) => {
        expect(rec.plaintext, `form ${i}`).toBeUndefined();
        expect(rec.error?.code, `form ${i}`).toBe('65600012');
      });
      // The KEK version sits after 'K' | len | id | format | len | kek id, as a u32be.
      const { blob } = splitWrapped(g.wrapped);
      const verAt = 2 + blob[1];
      for (const version of [0, 2, 0x7fffffff, 0x80000000, 0x80000001, 0xffffffff]) {
        const t = Buffer.from(blob);
        t.writeUInt32BE(version, verAt);
        const r1 = await unwrap(svmA.name, buildWrapped(g.key_id, t));
        expect([r1.status, r1.body?.error?.code], `version ${version}`).toEqual([400, '65600012']);
        const rb = await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap-batch`, { wrapped: [buildWrapped(g.key_id, t), g.wrapped] });
        expect(rb.status, `batch version ${version}`).toBe(200);
        expect(rb.body.records[0].error.code).toBe('65600012');
        expect(rb.body.records[1].plaintext).toBe(g.plaintext);
      }
    });

    it('refuses a wrapped form whose key id was rewritten to another existing key', async () => {
      const g1 = await dataKey(svmA.name);
      const g2 = await dataKey(svmA.name);
      const { id, blob } = splitWrapped(g1.wrapped);
      expect(id).toBe(g1.key_id);
      const swapped = buildWrapped(g2.key_id, blob);
      const r = await unwrap(svmA.name, swapped);
      expectError(r, 400, '65600012');
      expect(JSON.stringify(r.body)).not.toContain(g1.plaintext);
      expect(JSON.stringify(r.body)).not.toContain(g2.plaintext);
      // A created (non data-key) DEK as the target too.
      const k = await createKey(svmA.name);
      expectError(await unwrap(svmA.name, buildWrapped(k.id, blob)), 400, '65600012');
      // Both keys are unharmed.
      expect((await unwrap(svmA.name, g1.wrapped)).body.plaintext).toBe(g1.plaintext);
      expect((await unwrap(svmA.name, g2.wrapped)).body.plaintext).toBe(g2.plaintext);
    });

    it('refuses a wrapped key of one SVM through another SVM', async () => {
      const a = await dataKey(svmA.name);
      const c = await dataKey('cluster1');
      for (const other of [svmB.name, svmB.uuid, 'cluster1']) {
        const r = await unwrap(other, a.wrapped);
        expectError(r, 400, '65600012');
        expect(JSON.stringify(r.body)).not.toContain(a.plaintext);
      }
      expectError(await unwrap(svmA.name, c.wrapped), 400, '65600012');
      // Even when the id is rewritten to a key that does exist in the other SVM.
      const b = await dataKey(svmB.name);
      expectError(await unwrap(svmB.name, buildWrapped(b.key_id, splitWrapped(a.wrapped).blob)), 400, '65600012');
      expect((await unwrap(svmA.name, a.wrapped)).body.plaintext).toBe(a.plaintext);
      expect((await unwrap('cluster1', c.wrapped)).body.plaintext).toBe(c.plaintext);
    });

    it('refuses unknown SVMs with 404 code 4 on every data-plane route', async () => {
      const g = await dataKey(svmA.name);
      expectError(await s.call('POST', '/api/v1/svms/no_such_svm/keys', {}), 404, '4');
      expectError(await s.call('GET', '/api/v1/svms/no_such_svm/keys'), 404, '4');
      expectError(await s.call('GET', `/api/v1/svms/no_such_svm/keys/${g.key_id}`), 404, '4');
      expectError(await s.call('POST', '/api/v1/svms/no_such_svm/data-keys', {}), 404, '4');
      expectError(await unwrap('no_such_svm', g.wrapped), 404, '4');
      expectError(await unwrap('00000000-0000-4000-8000-000000000000', g.wrapped), 404, '4');
      expectError(await act('no_such_svm', g.key_id, 'deactivate'), 404, '4');
    });
  });

  describe('input validation', () => {
    it('refuses bad bodies with ONTAP error bodies and creates nothing', async () => {
      const before = await dekCount();
      const path = `/api/v1/svms/${svmA.name}/keys`;
      const unknown = await s.call('POST', path, { name: 'x', colour: 'red' });
      expectError(unknown, 400, '262179');
      expect(unknown.body.error.target).toBe('colour');
      expectError(await s.call('POST', path, { length: 512 }), 400, '2');
      expectError(await s.call('POST', path, { length: 0 }), 400, '2');
      expectError(await s.call('POST', path, { length: '256' }), 400, '2');
      expectError(await s.call('POST', path, { length: 256.5 }), 400, '2');
      expectError(await s.call('POST', path, { state: 'destroyed' }), 400, '2');
      expectError(await s.call('POST', path, { name: 'n'.repeat(256) }), 400, '2');
      expectError(await s.call('POST', path, { name: 7 }), 400, '2');
      expectError(await s.call('POST', path, []), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/data-keys`, { length: 64 }), 400, '2');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/data-keys`, { state: 'active' }), 400, '262179');
      expectError(await s.call('POST', `/api/v1/svms/${svmA.name}/data-keys`, { length: 128, plaintext: 'AAAA' }), 400, '262179');
      const notJson = await raw(s, 'POST', path, '{"name": "x",', 'application/json');
      expectError(notJson, 400, '2');
      expectError(await raw(s, 'POST', `/api/v1/svms/${svmA.name}/data-keys`, 'length=128', 'application/json'), 400, '2');
      const wrongType = await raw(s, 'POST', path, 'name=x', 'text/plain');
      expect(wrongType.status).toBeGreaterThanOrEqual(400);
      expect(wrongType.status).toBeLessThan(500);
      expect(wrongType.body.error.code).toBe('2');
      expect(await dekCount()).toBe(before);
    });

    it('refuses NUL characters and malformed URLs with ONTAP bodies', async () => {
      const before = await dekCount();
      const k = await createKey(svmA.name);
      for (const [method, path, body] of [
        ['GET', '/api/v1/svms/a%00b/keys'],
        ['GET', `/api/v1/svms/${svmA.name}/keys/dek_%00`],
        ['GET', `/api/v1/svms/${svmA.name}/keys?after=%00`],
        ['POST', `/api/v1/svms/${svmA.name}/keys`, { name: 'a\u0000b' }],
        ['POST', `/api/v1/svms/${svmA.name}/data-keys`, { name: '\u0000' }],
        ['POST', `/api/v1/svms/${svmA.name}/keys/${k.id}%00/state`, { action: 'deactivate' }],
        ['POST', `/api/v1/svms/a%00/unwrap`, { wrapped: 'AAAA' }],
      ] as [string, string, unknown?][]) {
        const r = await s.call(method, path, body);
        expect([r.status, r.body?.error?.code], `${method} ${path}`).toEqual([400, '2']);
      }
      expect(await dekCount()).toBe(before + 1);
      expect((await dekRow(k.id))!.state).toBe('active');
      for (const path of ['/api/v1/svms/%ff/keys', `/api/v1/svms/${'x'.repeat(5000)}/keys`]) {
        const r = await s.call('GET', path);
        expect(r.status, path.slice(0, 40)).toBe(400);
        expect(r.body.error.code).toBe('2');
        expect(typeof r.body.error.message).toBe('string');
      }
    });

    it('refuses bad unwrap bodies', async () => {
      const path = `/api/v1/svms/${svmA.name}/unwrap`;
      expectError(await s.call('POST', path, {}), 400, '2');
      expectError(await s.call('POST', path, { wrapped: 12 }), 400, '2');
      expectError(await s.call('POST', path, { wrapped: 'A'.repeat(4097) }), 400, '2');
      expectError(await s.call('POST', path, { wrapped: 'AAAA', key_id: 'x' }), 400, '262179');
      expectError(await raw(s, 'POST', path, '{"wrapped":', 'application/json'), 400, '2');
      expectError(await s.call('POST', path, { wrapped: '' }), 400, '65600012');
    });

    it('needs credentials', async () => {
      const r = await s.call('POST', `/api/v1/svms/${svmA.name}/data-keys`, {}, null);
      expect(r.status).toBe(401);
      expect(r.body.error.code).toBe('10');
      expect(JSON.stringify(r.body)).not.toMatch(/plaintext/);
      expect((await s.call('POST', `/api/v1/svms/${svmA.name}/unwrap`, { wrapped: 'AAAA' }, 'not-a-token')).status).toBe(401);
    });
  });

  describe('stored material', () => {
    it('a stored blob moved to another key does not open as that key', async () => {
      const svm = await createSvm('vs_moved');
      const x = await dataKey(svm.name);
      const y = await dataKey(svm.name);
      const yRow = await dekRow(y.key_id);
      await db().updateTable('deks').set({ wrapped: yRow!.wrapped }).where('id', '=', x.key_id).execute();
      const moved = await dekRow(x.key_id);
      expect(moved!.wrapped!.equals(yRow!.wrapped!)).toBe(true);
      // The wrapped form the store now implies for X does not unwrap (it is Y's blob, bound to Y).
      const r = await unwrap(svm.name, buildWrapped(x.key_id, moved!.wrapped!));
      expectError(r, 400, '65600012');
      expect(JSON.stringify(r.body)).not.toContain(y.plaintext);
      // A backup taken now is refused on verification: the moved blob does not open as X.
      const km = await s.call('GET', `/api/security/key-managers/${(s as TestServer & { kmUuid: string }).kmUuid}?fields=onboard.key_backup`);
      expect(km.status).toBe(200);
      const backup = km.body.onboard.key_backup as string;
      expect(typeof backup).toBe('string');
      const v = await s.call('POST', '/api/security/key-managers/onboard/verify-backup', { key_backup: backup, passphrase: PASSPHRASE });
      expectError(v, 400, '65600008');
      // Put it back so the server's store is whole again.
      await db().updateTable('deks').set({ wrapped: splitWrapped(x.wrapped).blob }).where('id', '=', x.key_id).execute();
      expect((await unwrap(svm.name, x.wrapped)).body.plaintext).toBe(x.plaintext);
    });
  });
});

describe.each(STORES)('data plane without a key manager on %s', (store) => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer({ store });
  });
  afterAll(() => s?.close());

  it('refuses keys with 409 65600017 and creates nothing, until a key manager exists', async () => {
    const svm = await s.call('POST', '/api/svm/svms?return_records=true', { name: 'vs_nokm' });
    expect(svm.status).toBe(201);
    for (const target of ['cluster1', 'vs_nokm']) {
      expectError(await s.call('POST', `/api/v1/svms/${target}/keys`, {}), 409, '65600017');
      expectError(await s.call('POST', `/api/v1/svms/${target}/data-keys`, { length: 128 }), 409, '65600017');
      const list = await s.call('GET', `/api/v1/svms/${target}/keys`);
      expect(list.status).toBe(200);
      expect(list.body.num_records).toBe(0);
    }
    const db = s.app.services.store.db;
    expect(await db.selectFrom('deks').selectAll().execute()).toEqual([]);
    expect(await db.selectFrom('keks').selectAll().execute()).toEqual([]);
    // A wrapped-looking input is refused without a key manager as well (nothing to unwrap with).
    expect((await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: 'AAAA' })).status).toBe(400);

    const km = await s.call('POST', '/api/security/key-managers', { onboard: { passphrase: 'another passphrase of decent length' } });
    noteSecret('another passphrase of decent length');
    expect(km.status).toBe(201);
    const g = await s.call('POST', '/api/v1/svms/vs_nokm/data-keys', {});
    expect(g.status).toBe(201);
    noteSecret(g.body.plaintext);
    expect((await s.call('POST', '/api/v1/svms/vs_nokm/unwrap', { wrapped: g.body.wrapped })).body.plaintext).toBe(g.body.plaintext);
  });
});
