/**
 * ONTAP /api/security/key-managers for the onboard key manager, through real HTTP on both stores:
 * create, list and read, the PATCH rules of the ONTAP contract (passphrase change, synchronize) and
 * delete. Every refusal is checked to change nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { ERRORS } from '../src/errors.js';
import { STORES, noteSecret, startServer, type TestServer } from './helpers.js';

/** A distinct printable-ASCII passphrase of exactly `len` characters, noted as a secret. */
function passphrase(len = 40): string {
  let p = '';
  while (p.length < len) p += randomBytes(48).toString('base64').replace(/[^A-Za-z0-9]/g, '') + ' ';
  p = 'pp' + p.slice(0, len - 2);
  noteSecret(p);
  return p;
}

const KM = '/api/security/key-managers';

function expectError(r: { status: number; body: any }, spec: { code: string; status: number }) {
  expect({ status: r.status, code: r.body?.error?.code }).toEqual({ status: spec.status, code: spec.code });
  expect(typeof r.body.error.message).toBe('string');
}

describe.each(STORES)('onboard key manager on %s', (store) => {
  let s: TestServer;
  let clusterPass: string;
  let clusterKm: string;
  let vs1Km: string;
  let vs1Pass: string;

  beforeAll(async () => {
    s = await startServer({ store });
  });
  afterAll(() => s?.close());

  describe('create', () => {
    it('refuses passphrases too short, too long or not ASCII, and creates nothing', async () => {
      for (const bad of [passphrase(31), passphrase(257), 'é'.repeat(40), passphrase(39) + '\u00e9', passphrase(39) + '\n', '']) {
        if (bad.length >= 8) noteSecret(bad);
        const r = await s.call('POST', KM, { onboard: { passphrase: bad } });
        expectError(r, ERRORS.passphrase_length);
      }
      const list = await s.call('GET', KM);
      expect(list.status).toBe(200);
      expect(list.body.num_records).toBe(0);
      expect(list.body.records).toEqual([]);
      // and with no key manager, no key can be made
      const g = await s.call('POST', '/api/v1/svms/cluster1/data-keys', {});
      expectError(g, ERRORS.key_manager_missing);
    });

    it('refuses unknown body fields with 262179 and creates nothing', async () => {
      const p = passphrase();
      for (const body of [{ onboard: { passphrase: p }, bogus: 1 }, { onboard: { passphrase: p, colour: 'red' } }, { onboard: { passphrase: p }, svm: { name: 'x', id: 1 } }]) {
        const r = await s.call('POST', KM, body);
        expectError(r, ERRORS.unexpected_argument);
      }
      expect((await s.call('GET', KM)).body.num_records).toBe(0);
    });

    it('creates the cluster key manager: 201 and a Location that resolves', async () => {
      clusterPass = passphrase(32); // the shortest accepted length
      const r = await s.call('POST', KM, { onboard: { passphrase: clusterPass } });
      expect(r.status).toBe(201);
      const loc = r.headers.get('location');
      expect(loc).toMatch(/^\/api\/security\/key-managers\/[0-9a-f-]{36}$/);
      clusterKm = loc!.split('/').pop()!;
      const g = await s.call('GET', loc!);
      expect(g.status).toBe(200);
      expect(g.body.uuid).toBe(clusterKm);
      expect(g.body.scope).toBe('cluster');
      expect(g.body.svm).toBeUndefined();
      expect(g.body.onboard).toEqual({ enabled: true });
      expect(JSON.stringify(g.body)).not.toContain(clusterPass);
    });

    it('refuses a second key manager for the cluster (409) and keeps the first', async () => {
      const r = await s.call('POST', KM, { onboard: { passphrase: passphrase() } });
      expectError(r, ERRORS.key_manager_exists);
      const list = await s.call('GET', KM);
      expect(list.body.records.map((x: any) => x.uuid)).toEqual([clusterKm]);
    });

    it('creates a key manager for a data SVM, once', async () => {
      const sv = await s.call('POST', '/api/svm/svms', { name: 'vs1' });
      expect(sv.status).toBe(201);
      const sv2 = await s.call('POST', '/api/svm/svms', { name: 'vs2' });
      expect(sv2.status).toBe(201);
      vs1Pass = passphrase(256); // the longest accepted length
      const r = await s.call('POST', KM, { svm: { name: 'vs1' }, onboard: { passphrase: vs1Pass } });
      expect(r.status).toBe(201);
      vs1Km = r.headers.get('location')!.split('/').pop()!;
      const g = await s.call('GET', `${KM}/${vs1Km}`);
      expect(g.status).toBe(200);
      expect(g.body.scope).toBe('svm');
      expect(g.body.svm.name).toBe('vs1');
      expect(g.body.svm.uuid).toBe(sv.headers.get('location')!.split('/').pop());

      const again = await s.call('POST', KM, { svm: { name: 'vs1' }, onboard: { passphrase: passphrase() } });
      expectError(again, ERRORS.key_manager_exists);
      const bad = await s.call('POST', KM, { svm: { name: 'vs2' }, onboard: { passphrase: passphrase(20) } });
      expectError(bad, ERRORS.passphrase_length);
      const missing = await s.call('POST', KM, { svm: { name: 'no-such-svm' }, onboard: { passphrase: passphrase() } });
      expect(missing.status).toBe(404);
      expect(missing.body.error.code).toBe('4');
      expect((await s.call('GET', KM)).body.records.map((x: any) => x.uuid)).toEqual([clusterKm, vs1Km]);
    });
  });

  describe('read', () => {
    it('lists the default fields only', async () => {
      const r = await s.call('GET', KM);
      expect(r.status).toBe(200);
      expect(r.body.num_records).toBe(2);
      const [c, v] = r.body.records;
      expect(Object.keys(c).sort()).toEqual(['_links', 'is_default_data_at_rest_encryption_disabled', 'onboard', 'scope', 'uuid', 'volume_encryption']);
      expect(c._links.self.href).toBe(`${KM}/${clusterKm}`);
      expect(c.onboard).toEqual({ enabled: true });
      expect(c.status).toBeUndefined();
      expect(v.svm.name).toBe('vs1');
      expect(v.onboard.key_backup).toBeUndefined();
    });

    it('fields=* adds no expensive field, fields=** adds status and the backup', async () => {
      const star = await s.call('GET', `${KM}?fields=*`);
      expect(star.status).toBe(200);
      for (const rec of star.body.records) {
        expect(rec.status).toBeUndefined();
        expect(rec.onboard.key_backup).toBeUndefined();
        expect(rec.volume_encryption.supported).toBe(true);
      }
      const all = await s.call('GET', `${KM}?fields=**`);
      expect(all.status).toBe(200);
      expect(all.body.num_records).toBe(2);
      for (const rec of all.body.records) {
        expect(rec.status).toEqual({ code: 0, message: '' });
        expect(rec.onboard.key_backup).toMatch(/BEGIN BACKUP[\s\S]+END BACKUP/);
        expect(rec.onboard.enabled).toBe(true);
      }
    });

    it('fields=status gives status.code 0 and the key fields only', async () => {
      const r = await s.call('GET', `${KM}?fields=status`);
      expect(r.status).toBe(200);
      for (const rec of r.body.records) {
        expect(Object.keys(rec).sort()).toEqual(['_links', 'status', 'uuid']);
        expect(rec.status.code).toBe(0);
      }
      const one = await s.call('GET', `${KM}/${vs1Km}?fields=status.code`);
      expect(one.status).toBe(200);
      expect(one.body.status.code).toBe(0);
    });

    it('max_records and the filters', async () => {
      const one = await s.call('GET', `${KM}?max_records=1`);
      expect(one.body.num_records).toBe(1);
      expect(one.body.records).toHaveLength(1);
      const bad = await s.call('GET', `${KM}?max_records=0`);
      expectError(bad, ERRORS.invalid_value);

      const svmScope = await s.call('GET', `${KM}?scope=svm`);
      expect(svmScope.body.records.map((x: any) => x.uuid)).toEqual([vs1Km]);
      const clusterScope = await s.call('GET', `${KM}?scope=cluster`);
      expect(clusterScope.body.records.map((x: any) => x.uuid)).toEqual([clusterKm]);
      const byName = await s.call('GET', `${KM}?svm.name=vs1`);
      expect(byName.body.records.map((x: any) => x.uuid)).toEqual([vs1Km]);
      const none = await s.call('GET', `${KM}?svm.name=vs2`);
      expect(none.body).toMatchObject({ num_records: 0, records: [] });
      const byUuid = await s.call('GET', `${KM}?uuid=${clusterKm}`);
      expect(byUuid.body.records.map((x: any) => x.uuid)).toEqual([clusterKm]);
      const unknownFilter = await s.call('GET', `${KM}?colour=red`);
      expectError(unknownFilter, ERRORS.unexpected_argument);
    });

    it('an unknown uuid is 404 with code 4', async () => {
      for (const u of ['00000000-0000-4000-8000-000000000000', 'nope']) {
        const r = await s.call('GET', `${KM}/${u}`);
        expectError(r, ERRORS.not_found);
      }
      const p = await s.call('PATCH', `${KM}/00000000-0000-4000-8000-000000000000`, { onboard: { existing_passphrase: clusterPass, passphrase: passphrase() } });
      expectError(p, ERRORS.not_found);
      const d = await s.call('DELETE', `${KM}/00000000-0000-4000-8000-000000000000`);
      expectError(d, ERRORS.not_found);
    });

    it('refuses reads without a token', async () => {
      const r = await s.call('GET', KM, undefined, null);
      expectError(r, ERRORS.not_authenticated);
    });
  });

  describe('PATCH', () => {
    const wrapped: { wrapped: string; plaintext: string; svm: string }[] = [];
    const patch = (body: unknown, km = clusterKm) => s.call('PATCH', `${KM}/${km}`, body);

    /** Proves the passphrase is still `clusterPass` by changing it (to a fresh one, which becomes current). */
    async function provePassphraseUnchanged() {
      const next = passphrase();
      const r = await patch({ onboard: { existing_passphrase: clusterPass, passphrase: next } });
      expect(r.status).toBe(200);
      clusterPass = next;
    }

    beforeAll(async () => {
      // DEKs of the admin tenant and of a data tenant that falls back to the cluster key manager.
      for (const svm of ['cluster1', 'cluster1', 'cluster1', 'vs2', 'vs2', 'vs1']) {
        const g = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, {});
        expect(g.status).toBe(201);
        noteSecret(g.body.plaintext);
        wrapped.push({ wrapped: g.body.wrapped, plaintext: g.body.plaintext, svm });
      }
    });

    it('changes the passphrase; the old one no longer works, the new one does; every DEK still unwraps', async () => {
      const old = clusterPass;
      const next = passphrase();
      const r = await patch({ onboard: { existing_passphrase: old, passphrase: next } });
      expect(r.status).toBe(200);
      expect(JSON.stringify(r.body ?? '')).not.toContain(next);
      const withOld = await patch({ onboard: { existing_passphrase: old, passphrase: passphrase() } });
      expectError(withOld, ERRORS.passphrase_mismatch);
      clusterPass = next;
      await provePassphraseUnchanged();
      for (const w of wrapped) {
        const u = await s.call('POST', `/api/v1/svms/${w.svm}/unwrap`, { wrapped: w.wrapped });
        expect(u.status).toBe(200);
        expect(u.body.plaintext).toBe(w.plaintext);
      }
      // new keys can still be made under the same hierarchy
      const g = await s.call('POST', '/api/v1/svms/cluster1/data-keys', {});
      expect(g.status).toBe(201);
      noteSecret(g.body.plaintext);
      wrapped.push({ wrapped: g.body.wrapped, plaintext: g.body.plaintext, svm: 'cluster1' });
    });

    it('the data SVM key manager has its own passphrase', async () => {
      const wrong = await patch({ onboard: { existing_passphrase: clusterPass, passphrase: passphrase() } }, vs1Km);
      expectError(wrong, ERRORS.passphrase_mismatch);
      const next = passphrase();
      const r = await patch({ onboard: { existing_passphrase: vs1Pass, passphrase: next } }, vs1Km);
      expect(r.status).toBe(200);
      vs1Pass = next;
      await provePassphraseUnchanged(); // the cluster's passphrase did not move
    });

    it('existing passphrase mismatch: 65536139, nothing changes', async () => {
      const attempted = passphrase();
      const r = await patch({ onboard: { existing_passphrase: passphrase(), passphrase: attempted } });
      expectError(r, ERRORS.passphrase_mismatch);
      // the refused new passphrase was not installed
      const viaAttempted = await patch({ onboard: { existing_passphrase: attempted, passphrase: passphrase() } });
      expectError(viaAttempted, ERRORS.passphrase_mismatch);
      await provePassphraseUnchanged();
    });

    it('new passphrase same as the old: 65536150, nothing changes', async () => {
      const r = await patch({ onboard: { existing_passphrase: clusterPass, passphrase: clusterPass } });
      expectError(r, ERRORS.passphrase_same);
      await provePassphraseUnchanged();
    });

    it('new passphrase of the wrong length or not ASCII: 65536404, nothing changes', async () => {
      for (const bad of [passphrase(31), passphrase(257), 'ü'.repeat(40)]) {
        noteSecret(bad);
        const r = await patch({ onboard: { existing_passphrase: clusterPass, passphrase: bad } });
        expectError(r, ERRORS.passphrase_length);
        const via = await patch({ onboard: { existing_passphrase: bad, passphrase: passphrase() } });
        expect(via.status).toBe(400);
        expect(via.body.error.code).toBe(ERRORS.passphrase_mismatch.code);
      }
      await provePassphraseUnchanged();
    });

    it('only one of existing/new: 65536917, nothing changes', async () => {
      const lone = passphrase();
      const a = await patch({ onboard: { passphrase: lone } });
      expectError(a, ERRORS.passphrase_both_needed);
      const b = await patch({ onboard: { existing_passphrase: clusterPass } });
      expectError(b, ERRORS.passphrase_both_needed);
      const c = await patch({ onboard: { synchronize: false, passphrase: lone } });
      expectError(c, ERRORS.passphrase_both_needed);
      const via = await patch({ onboard: { existing_passphrase: lone, passphrase: passphrase() } });
      expectError(via, ERRORS.passphrase_mismatch);
      await provePassphraseUnchanged();
    });

    it('synchronize without existing passphrase: 65537242', async () => {
      const r = await patch({ onboard: { synchronize: true } });
      expectError(r, ERRORS.sync_needs_existing);
      await provePassphraseUnchanged();
    });

    it('synchronize with a new passphrase: 65537243, nothing changes', async () => {
      const attempted = passphrase();
      const r = await patch({ onboard: { synchronize: true, existing_passphrase: clusterPass, passphrase: attempted } });
      expectError(r, ERRORS.sync_forbids_passphrase);
      const r2 = await patch({ onboard: { synchronize: true, passphrase: attempted } });
      expectError(r2, ERRORS.sync_forbids_passphrase);
      const via = await patch({ onboard: { existing_passphrase: attempted, passphrase: passphrase() } });
      expectError(via, ERRORS.passphrase_mismatch);
      await provePassphraseUnchanged();
    });

    it('synchronize with a wrong existing passphrase: 65536139', async () => {
      const r = await patch({ onboard: { synchronize: true, existing_passphrase: passphrase() } });
      expectError(r, ERRORS.passphrase_mismatch);
      await provePassphraseUnchanged();
    });

    it('synchronize with the right existing passphrase: 200, keys still served, passphrase unchanged', async () => {
      const r = await patch({ onboard: { synchronize: true, existing_passphrase: clusterPass } });
      expect(r.status).toBe(200);
      const st = await s.call('GET', `${KM}/${clusterKm}?fields=status`);
      expect(st.body.status.code).toBe(0);
      const u = await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: wrapped[0].wrapped });
      expect(u.body.plaintext).toBe(wrapped[0].plaintext);
      await provePassphraseUnchanged();
    });

    it('refuses unknown fields, empty bodies and wrong types, and changes nothing', async () => {
      expectError(await patch({ onboard: { existing_passphrase: clusterPass, passphrase: passphrase(), extra: 1 } }), ERRORS.unexpected_argument);
      expectError(await patch({ onboard: { existing_passphrase: clusterPass }, bogus: true }), ERRORS.unexpected_argument);
      expectError(await patch({}), ERRORS.invalid_field);
      expectError(await patch({ onboard: {} }), ERRORS.invalid_field);
      expectError(await patch({ onboard: { synchronize: 'yes', existing_passphrase: clusterPass } }), ERRORS.invalid_field);
      expectError(await patch({ onboard: { existing_passphrase: 12345678901234567890, passphrase: passphrase() } }), ERRORS.invalid_field);
      await provePassphraseUnchanged();
    });

    it('every DEK still unwraps after all of it', async () => {
      for (const w of wrapped) {
        const u = await s.call('POST', `/api/v1/svms/${w.svm}/unwrap`, { wrapped: w.wrapped });
        expect(u.status).toBe(200);
        expect(u.body.plaintext).toBe(w.plaintext);
      }
    });
  });

  describe('DELETE', () => {
    it('is refused (409) while DEKs depend on the key manager, and changes nothing', async () => {
      const r = await s.call('DELETE', `${KM}/${clusterKm}`);
      expectError(r, ERRORS.key_manager_in_use);
      expect((await s.call('GET', `${KM}/${clusterKm}`)).status).toBe(200);
      const g = await s.call('POST', '/api/v1/svms/cluster1/data-keys', {});
      expect(g.status).toBe(201);
      noteSecret(g.body.plaintext);
      const u = await s.call('POST', '/api/v1/svms/cluster1/unwrap', { wrapped: g.body.wrapped });
      expect(u.body.plaintext).toBe(g.body.plaintext);
      // the SVM key manager protects a DEK of vs1 too
      expectError(await s.call('DELETE', `${KM}/${vs1Km}`), ERRORS.key_manager_in_use);
    });

    it('is allowed when no DEK depends on it; then GET is 404', async () => {
      const sv = await s.call('POST', '/api/svm/svms', { name: 'vs3' });
      expect(sv.status).toBe(201);
      const r = await s.call('POST', KM, { svm: { name: 'vs3' }, onboard: { passphrase: passphrase() } });
      expect(r.status).toBe(201);
      const loc = r.headers.get('location')!;
      const d = await s.call('DELETE', loc);
      expect(d.status).toBe(200);
      expectError(await s.call('GET', loc), ERRORS.not_found);
      expectError(await s.call('DELETE', loc), ERRORS.not_found);
      expect((await s.call('GET', `${KM}?svm.name=vs3`)).body.num_records).toBe(0);
      // the SVM can get a key manager again
      const again = await s.call('POST', KM, { svm: { name: 'vs3' }, onboard: { passphrase: passphrase() } });
      expect(again.status).toBe(201);
    });
  });
});
