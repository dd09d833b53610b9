/**
 * /api/security/certificates over real HTTP, on both stores: install, list, read, delete, refusals;
 * and, against Debian's real pykmip-server, a certificate an external key manager names is not
 * deleted (ONTAP 3735683) until that key manager is gone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { STORES, expectError, noteSecret, startWithOkm, type TestServer } from './helpers.js';
import { makePki, type Pki } from './kmip/pki.js';
import { makeTestPki, pykmipAvailable, startPykmipServer, type PykmipServer, type TestPki } from '../src/kmip/testing/pykmip.js';

for (const store of STORES) {
  describe(`certificates on ${store}`, () => {
    let s: TestServer;
    let pki: Pki;
    let svmA: { uuid: string; name: string };
    beforeAll(async () => {
      s = await startWithOkm({ store });
      pki = makePki();
      const r = await s.call('POST', '/api/svm/svms', { name: 'certsvm' });
      svmA = { uuid: r.headers.get('location')!.split('/').pop()!, name: 'certsvm' };
    });
    afterAll(() => s?.close());

    it('installs a CA certificate for the cluster and shows what it parsed', async () => {
      const pem = pki.read(pki.caCert);
      const r = await s.call('POST', '/api/security/certificates?return_records=true', { type: 'client_ca', public_certificate: pem, name: 'kmip-ca' });
      expect(r.status).toBe(201);
      const rec = r.body.records[0];
      const x = new X509Certificate(pem);
      expect(rec).toMatchObject({ name: 'kmip-ca', scope: 'cluster', type: 'client_ca', common_name: 'Keysmith Test CA', serial_number: x.serialNumber.toUpperCase(), ca: 'Keysmith Test CA' });
      expect(Date.parse(rec.expiry_time)).toBe(Date.parse(x.validTo));
      expect(rec.svm).toBeUndefined();
      const one = await s.call('GET', `/api/security/certificates/${rec.uuid}`);
      expect(one.status).toBe(200);
      expect(one.body.public_certificate).toContain('BEGIN CERTIFICATE');
      expect(one.body.key_size).toBe(2048);
    });

    it('installs a client certificate with its private key for an SVM; the key is sealed and never shown', async () => {
      const c = pki.client('kmip-client-a');
      noteSecret(c.keyPem.split('\n').slice(1, 3).join(''));
      const r = await s.call('POST', '/api/security/certificates', { svm: { name: svmA.name }, type: 'client', public_certificate: c.pem, private_key: c.keyPem });
      expect(r.status).toBe(201);
      const uuid = r.headers.get('location')!.split('/').pop()!;
      const one = await s.call('GET', `/api/security/certificates/${uuid}?fields=**`);
      expect(one.body).toMatchObject({ uuid, type: 'client', common_name: 'kmip-client-a', ca: 'Keysmith Test CA', svm: { uuid: svmA.uuid, name: svmA.name }, scope: 'svm' });
      expect(JSON.stringify(one.body)).not.toContain('PRIVATE KEY');
      expect(one.body.name).toBe(`kmip-client-a_${one.body.serial_number}`);
      const row = await s.app.services.store.db.selectFrom('certificates').selectAll().where('uuid', '=', uuid).executeTakeFirstOrThrow();
      expect(row.private_key).not.toBeNull();
      expect(Buffer.from(row.private_key!).toString('latin1')).not.toContain('PRIVATE');
      // The service opens it again (what an external key manager's TLS client will do).
      const key = await s.app.services.certificates.privateKey(row);
      expect(new X509Certificate(c.pem).checkPrivateKey(key!)).toBe(true);
      // The client certificate now names a principal on SVM A.
      const who = await s.app.services.certificates.clientPrincipal(new X509Certificate(c.pem).raw);
      expect(who?.svm.uuid).toBe(svmA.uuid);
    });

    it('lists with filters, fields and max_records', async () => {
      const all = await s.call('GET', '/api/security/certificates?fields=type,common_name');
      expect(all.status).toBe(200);
      expect(all.body.num_records).toBeGreaterThanOrEqual(2);
      for (const rec of all.body.records) expect(Object.keys(rec).sort()).toEqual(['_links', 'common_name', 'name', 'type', 'uuid']);
      const clients = await s.call('GET', `/api/security/certificates?type=client&svm.name=${svmA.name}`);
      expect(clients.body.records.map((r: any) => r.common_name)).toEqual(['kmip-client-a']);
      const one = await s.call('GET', '/api/security/certificates?max_records=1');
      expect(one.body.num_records).toBe(1);
      expect((await s.call('GET', '/api/security/certificates?max_records=0')).body.error.code).toBe('262197');
    });

    it('refuses malformed PEM, a mismatched private key, keys on CA types, duplicates and unknown types', async () => {
      const before = await s.call('GET', '/api/security/certificates');
      const bad = await s.call('POST', '/api/security/certificates', { type: 'server_ca', public_certificate: '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n' });
      expect(bad.status).toBe(400);
      expect(bad.body.error).toMatchObject({ code: '65600040', target: 'public_certificate' });
      const two = pki.read(pki.caCert) + pki.read(pki.serverCert);
      expect((await s.call('POST', '/api/security/certificates', { type: 'server_ca', public_certificate: two })).body.error.code).toBe('65600040');
      const c = pki.client('other');
      const mismatch = await s.call('POST', '/api/security/certificates', { type: 'client', public_certificate: c.pem, private_key: pki.read(pki.serverKey) });
      expect(mismatch.body.error).toMatchObject({ code: '65600041', target: 'private_key' });
      const garbageKey = await s.call('POST', '/api/security/certificates', { type: 'client', public_certificate: c.pem, private_key: 'nope' });
      expect(garbageKey.body.error.code).toBe('65600041');
      const caWithKey = await s.call('POST', '/api/security/certificates', { type: 'root_ca', public_certificate: pki.read(pki.caCert), private_key: pki.read(pki.caKey) });
      expect(caWithKey.body.error).toMatchObject({ code: '2', target: 'private_key' });
      const dup = await s.call('POST', '/api/security/certificates', { type: 'client_ca', public_certificate: pki.read(pki.caCert) });
      expect(dup.status).toBe(409);
      expect(dup.body.error.code).toBe('1');
      const type = await s.call('POST', '/api/security/certificates', { type: 'bogus', public_certificate: pki.read(pki.caCert) });
      expect(type.status).toBe(400);
      const cn = await s.call('POST', '/api/security/certificates', { type: 'server_ca', common_name: 'someone else', public_certificate: pki.read(pki.caCert) });
      expect(cn.body.error).toMatchObject({ code: '262197', target: 'common_name' });
      const extra = await s.call('POST', '/api/security/certificates', { type: 'server_ca', public_certificate: pki.read(pki.caCert), bogus: 1 });
      expect(extra.body.error.code).toBe('262179');
      const after = await s.call('GET', '/api/security/certificates');
      expect(after.body.num_records).toBe(before.body.num_records);
    });

    it('refuses a client certificate another SVM already has: it would take over that SVM’s KMIP clients', async () => {
      const device = pki.client('device-of-a');
      const svmB = { name: 'certsvm_b' };
      expect((await s.call('POST', '/api/svm/svms', svmB)).status).toBe(201);
      const mine = await s.call('POST', '/api/security/certificates', { svm: { name: svmA.name }, type: 'client', public_certificate: device.pem });
      expect(mine.status).toBe(201);
      const before = await s.call('GET', '/api/security/certificates');
      const theirs = await s.call('POST', '/api/security/certificates', { svm: { name: svmB.name }, type: 'client', public_certificate: device.pem });
      expect(theirs.status).toBe(409);
      expect(theirs.body.error).toMatchObject({ code: '1', target: 'public_certificate' });
      // It names nothing of the other SVM's.
      expect(theirs.body.error.message).not.toContain(mine.headers.get('location')!.split('/').pop()!);
      expect((await s.call('GET', '/api/security/certificates')).body.num_records).toBe(before.body.num_records);
    });

    it("deleting an SVM deletes its certificates", async () => {
      const r = await s.call('POST', '/api/svm/svms', { name: 'shortlived' });
      const svmUuid = r.headers.get('location')!.split('/').pop()!;
      const c = await s.call('POST', '/api/security/certificates', { svm: { uuid: svmUuid }, type: 'client', public_certificate: pki.client('shortlived').pem });
      expect(c.status).toBe(201);
      expect((await s.call('DELETE', `/api/svm/svms/${svmUuid}`)).status).toBe(200);
      expect((await s.call('GET', c.headers.get('location')!)).status).toBe(404);
    });

    it('deletes by uuid; a second delete is 404', async () => {
      const r = await s.call('POST', '/api/security/certificates', { type: 'server_ca', public_certificate: pki.read(pki.caCert), name: 'to-delete' });
      const uuid = r.headers.get('location')!.split('/').pop()!;
      expect((await s.call('DELETE', `/api/security/certificates/${uuid}`)).status).toBe(200);
      const again = await s.call('DELETE', `/api/security/certificates/${uuid}`);
      expect(again.status).toBe(404);
      expect(again.body.error.code).toBe('4');
      expect((await s.call('GET', `/api/security/certificates/${uuid}`)).status).toBe(404);
      const events = await s.app.services.audit.query({ objectId: uuid, limit: 10 });
      expect(JSON.stringify(events)).toContain('certificate.delete');
    });
  });
}

describe('certificates named by an external key manager', () => {
  let dir: string;
  let pki: TestPki;
  let py: PykmipServer;
  beforeAll(async () => {
    // A real peer is part of the proof: an external key manager is only configured once its server answers.
    if (!pykmipAvailable()) throw new Error('Debian python3-pykmip is not installed (apt-get install -y python3-pykmip)');
    dir = mkdtempSync(join(tmpdir(), 'keysmith-cert-kmip-'));
    pki = makeTestPki(dir);
    noteSecret(pki.client.key.toString('utf8').split('\n')[1]);
    py = await startPykmipServer(pki, { name: 'certs' });
  }, 60_000);
  afterAll(() => {
    py?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const store of STORES) {
    describe(`on ${store}`, () => {
      let s: TestServer;
      const install = async (body: Record<string, unknown>) => {
        const r = await s.call('POST', '/api/security/certificates', { svm: { name: 'certext' }, ...body });
        expect(r.status, JSON.stringify(r.body)).toBe(201);
        return r.headers.get('location')!.split('/').pop()!;
      };
      beforeAll(async () => {
        s = await startWithOkm({ store });
        expect((await s.call('POST', '/api/svm/svms', { name: 'certext' })).status).toBe(201);
      }, 60_000);
      afterAll(() => s?.close());

      it('refuses to delete its client certificate or a server CA (3735683), changing nothing; deletes them once it is gone', { timeout: 60_000 }, async () => {
        const client = await install({ type: 'client', name: 'ext-client', public_certificate: pki.client.cert.toString('utf8'), private_key: pki.client.key.toString('utf8') });
        const ca = await install({ type: 'server_ca', name: 'ext-ca', public_certificate: pki.caPem.toString('utf8') });
        const ca2 = await install({ type: 'server_ca', name: 'ext-ca-2', public_certificate: pki.otherCa.caPem.toString('utf8') });
        // The same PEM as the CA in use, installed as another type: named by no configuration.
        const twin = await install({ type: 'client_ca', name: 'ext-ca-twin', public_certificate: pki.caPem.toString('utf8') });
        const km = await s.call('POST', '/api/security/key-managers', {
          svm: { name: 'certext' },
          external: { servers: [{ server: `127.0.0.1:${py.port}`, timeout: 5 }], client_certificate: { uuid: client }, server_ca_certificates: [{ uuid: ca2 }, { uuid: ca }] },
        });
        expect(km.status, JSON.stringify(km.body)).toBe(201);
        const kmUuid = km.headers.get('location')!.split('/').pop()!;

        const before = (await s.call('GET', '/api/security/certificates?fields=*')).body.records;
        for (const uuid of [client, ca, ca2]) {
          const r = await s.call('DELETE', `/api/security/certificates/${uuid}`);
          expectError(r, 409, '3735683');
          expect(r.body.error.message).toContain(kmUuid);
          expect((await s.call('GET', `/api/security/certificates/${uuid}`)).status).toBe(200);
          const events = await s.app.services.audit.query({ objectId: uuid, limit: 10 });
          expect(events.some((e: { action: string; outcome: string }) => e.action === 'certificate.delete' && e.outcome === 'success')).toBe(false);
        }
        expect((await s.call('GET', '/api/security/certificates?fields=*')).body.records).toEqual(before);
        // The client certificate's sealed private key stayed with it.
        const row = await s.app.services.store.db.selectFrom('certificates').select('private_key').where('uuid', '=', client).executeTakeFirstOrThrow();
        expect(row.private_key).not.toBeNull();
        // A certificate no configuration names is deleted as before.
        expect((await s.call('DELETE', `/api/security/certificates/${twin}`)).status).toBe(200);

        expect((await s.call('DELETE', `/api/security/key-managers/${kmUuid}`)).status).toBe(200);
        for (const uuid of [client, ca, ca2]) {
          expect((await s.call('DELETE', `/api/security/certificates/${uuid}`)).status).toBe(200);
          expect((await s.call('GET', `/api/security/certificates/${uuid}`)).status).toBe(404);
        }
      });
    });
  }
});
