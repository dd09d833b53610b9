/**
 * A certificate deleted while an external KMIP key manager naming it is being created or changed,
 * against Debian's real pykmip-server on both stores. The configuration reads its certificates before
 * its round trips to the server, and the delete's own in-use check (3735683) cannot see a
 * configuration not yet committed; so the configuration's transaction reads them again, share-locked
 * on PostgreSQL, and refuses with 65536821 when one is gone: nothing is recorded and a root created
 * for it is destroyed on the server. Each interleaving is forced through the `db` the service is given:
 * - the delete commits between the checks and the configuration's transaction (create and PATCH);
 * - the delete has run but not committed when the configuration's transaction starts: the
 *   configuration waits for it, then sees the certificate gone (create and PATCH);
 * - the configuration's transaction has read the certificate and not committed when the delete starts:
 *   the delete waits for it, then is refused as in use.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STORES, expectError, noteSecret, startWithOkm, type TestServer } from './helpers.js';
import { makeTestPki, pykmipAvailable, startPykmipServer, onPykmip, type PykmipServer, type TestPki } from '../src/kmip/testing/pykmip.js';
import { KmipClient } from '../src/kmip/client.js';
import { createKmipConnector, createKmipKeyManager } from '../src/keymanagers/kmip-key-manager.js';
import { createKmipConfigService } from '../src/keymanagers/kmip-config-service.js';
import type { Db, Tx } from '../src/store/schema.js';
import type { SvmRow } from '../src/store/svm-repo.js';

const KM = '/api/security/key-managers';
const CERTS = '/api/security/certificates';
const WHO = { actor: 'test:races' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
let pki: TestPki;
let py: PykmipServer;

beforeAll(async () => {
  if (!pykmipAvailable()) throw new Error('Debian python3-pykmip is not installed (apt-get install -y python3-pykmip)');
  dir = mkdtempSync(join(tmpdir(), 'keysmith-review-races-'));
  pki = makeTestPki(dir);
  noteSecret(pki.client.key.toString('utf8').split('\n')[1]);
  py = await startPykmipServer(pki, { name: 'races' });
}, 60_000);

afterAll(() => {
  py?.kill();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const onServer = <T>(fn: (c: KmipClient) => Promise<T>): Promise<T> => onPykmip(py, pki, fn);

/** Settles to whether `p` settled within `ms`, without consuming its outcome. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await sleep(ms);
  return done;
}

for (const store of STORES) {
  describe(`certificate delete racing an external key manager on ${store}`, () => {
    let s: TestServer;
    const servers = () => [{ server: `127.0.0.1:${py.port}`, timeout: 5 }];

    beforeAll(async () => {
      s = await startWithOkm({ store });
      for (const body of [
        { type: 'server_ca', name: 'kmip-ca', public_certificate: pki.caPem.toString('utf8') },
        { type: 'client', name: 'kmip-client', public_certificate: pki.client.cert.toString('utf8'), private_key: pki.client.key.toString('utf8') },
      ]) {
        const r = await s.call('POST', CERTS, body);
        expect(r.status, JSON.stringify(r.body)).toBe(201);
      }
    }, 60_000);
    afterAll(() => s?.close());

    /** A new SVM with the test CA installed as its own server_ca certificate (the one the races delete). */
    async function svmWithCa(name: string): Promise<{ svm: SvmRow; ca: string }> {
      const r = await s.call('POST', '/api/svm/svms', { name });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      const svm = (await s.app.services.svms.resolve(r.headers.get('location')!.split('/').pop()!))!;
      const c = await s.call('POST', CERTS, { svm: { name }, type: 'server_ca', name: `${name}-ca`, public_certificate: pki.caPem.toString('utf8') });
      expect(c.status, JSON.stringify(c.body)).toBe(201);
      return { svm, ca: c.headers.get('location')!.split('/').pop()! };
    }

    /** The service as app.ts wires it, but over `db`: the interleavings are forced there. */
    function serviceOver(db: Db) {
      const a = s.app.services;
      const connector = createKmipConnector();
      const certificateKey = async (u: string) => {
        const c = await a.certificates.get(u);
        return c ? a.certificates.privateKey(c) : null;
      };
      const manager = createKmipKeyManager({ keyring: a.keyring, repo: a.repos.kmipServers, connector, certificateKey });
      const service = createKmipConfigService({ db, repo: a.repos.kmipServers, keyManagers: a.repos.keyManagers, certificates: a.certificates, certificateRows: a.repos.certificates, svms: a.svms, keyring: a.keyring, connector, manager, audit: a.audit, clusterUuid: a.cluster.uuid });
      return { service, connector };
    }

    /** The store's db, running `before` when the service opens its transaction (after every check it makes outside). */
    function dbWith(before: () => Promise<void>): Db {
      const real = s.app.services.store.db;
      return { transaction: () => ({ execute: async (fn: (tx: Tx) => Promise<unknown>) => (await before(), real.transaction().execute(fn)) }) } as unknown as Db;
    }

    /**
     * A delete of `uuid` as certificates.remove makes it, held open after its DELETE ran: `ran` settles
     * then; `commit()` lets it finish (its in-use check, then COMMIT) and settles to its outcome.
     */
    function openDelete(uuid: string): { ran: Promise<void>; commit: () => Promise<unknown> } {
      let ran!: () => void;
      let go!: () => void;
      const ranP = new Promise<void>((r) => (ran = r));
      const gate = new Promise<void>((r) => (go = r));
      const a = s.app.services;
      const done = a.store.db.transaction().execute(async (tx) => {
        await a.repos.certificates.remove(uuid, tx);
        ran();
        await gate;
        if ((await a.repos.certificates.keyManagersUsing(uuid, tx)).length > 0) throw new Error('in use');
      });
      done.catch(() => undefined);
      return {
        ran: ranP,
        commit: () => {
          go();
          return done;
        },
      };
    }

    const external = (ca: string) => ({ servers: servers(), client_certificate: { name: 'kmip-client' }, server_ca_certificates: [{ uuid: ca }] });
    const kmCount = async () => (await s.app.services.repos.keyManagers.list()).length;
    const cfgCount = async () => (await s.app.services.store.db.selectFrom('kmip_configs').select('key_manager_uuid').execute()).length;
    async function failures(svmUuid: string): Promise<Record<string, unknown>[]> {
      await s.app.services.audit.drain();
      const rows = await s.app.services.store.db.selectFrom('audit_events').selectAll().where('action', '=', 'key_manager.create').where('outcome', '=', 'failure').where('svm_uuid', '=', svmUuid).execute();
      return rows.map((e) => JSON.parse(e.detail ?? '{}'));
    }

    /** The refusal of a create whose CA went away: nothing recorded, its root destroyed on the server. */
    async function expectCreateRefused(p: Promise<unknown>, svm: SvmRow, ca: string, name: string, before: { kms: number; cfgs: number }) {
      await expect(p).rejects.toMatchObject({ code: '65536821', kind: 'certificate_not_installed', target: 'external.server_ca_certificates[0]' });
      expect(await s.app.services.repos.keyManagers.findEnabledForSvm(svm.uuid)).toBeUndefined();
      expect(await kmCount()).toBe(before.kms);
      expect(await cfgCount()).toBe(before.cfgs);
      expect(await s.app.services.repos.certificates.find(ca)).toBeUndefined();
      // The root was made on the server (its name was given) and is gone again.
      expect(await onServer((c) => c.locateByName(name))).toEqual([]);
      expect(await failures(svm.uuid)).toContainEqual(expect.objectContaining({ code: '65536821', root_cleanup: 'destroyed' }));
    }

    it('create: the CA is deleted after the checks, before the transaction: refused with 65536821, nothing recorded, the root destroyed', async () => {
      const { svm, ca } = await svmWithCa('racecreate');
      const before = { kms: await kmCount(), cfgs: await cfgCount() };
      let deleted = 0;
      const { service, connector } = serviceOver(
        dbWith(async () => {
          const d = await s.call('DELETE', `${CERTS}/${ca}`);
          expect(d.status, JSON.stringify(d.body)).toBe(200);
          deleted += 1;
        }),
      );
      const name = `races-create-${store}-${randomBytes(4).toString('hex')}`;
      try {
        await expectCreateRefused(service.create(svm, external(ca), WHO, { rootName: name }), svm, ca, name, before);
      } finally {
        connector.close();
      }
      expect(deleted).toBe(1);
    }, 60_000);

    it('create: a delete that ran but has not committed: the configuration waits for it, then is refused', async () => {
      const { svm, ca } = await svmWithCa('racecreatewait');
      const before = { kms: await kmCount(), cfgs: await cfgCount() };
      let del: ReturnType<typeof openDelete> | undefined;
      const { service, connector } = serviceOver(
        dbWith(async () => {
          del = openDelete(ca);
          await del.ran;
        }),
      );
      const name = `races-wait-${store}-${randomBytes(4).toString('hex')}`;
      try {
        const p = service.create(svm, external(ca), WHO, { rootName: name });
        // Wait until the delete is open, then give the configuration time to get past its check if it could.
        while (!del) await sleep(20);
        await del.ran;
        expect(await settlesWithin(p, 700)).toBe(false);
        await del.commit();
        await expectCreateRefused(p, svm, ca, name, before);
      } finally {
        connector.close();
      }
    }, 60_000);

    it('create: a delete that starts while the configuration is being recorded waits for it, then is refused with 3735683', async () => {
      const { svm, ca } = await svmWithCa('racedelwait');
      let deleting: Promise<{ status: number; body: any }> | undefined;
      const real = s.app.services.store.db;
      const db = {
        transaction: () => ({
          execute: (fn: (tx: Tx) => Promise<unknown>) =>
            real.transaction().execute(async (tx) => {
              const out = await fn(tx);
              // Everything is written, not committed: the delete must not get through now.
              deleting = s.call('DELETE', `${CERTS}/${ca}`);
              expect(await settlesWithin(deleting, 700)).toBe(false);
              return out;
            }),
        }),
      } as unknown as Db;
      const { service, connector } = serviceOver(db);
      let km;
      try {
        km = await service.create(svm, external(ca), WHO);
      } finally {
        connector.close();
      }
      expect(deleting).toBeDefined();
      expectError(await deleting!, 409, '3735683');
      expect((await s.app.services.repos.certificates.find(ca))?.uuid).toBe(ca);
      const cfg = await s.app.services.repos.kmipServers.findConfig(km.uuid);
      expect(JSON.parse(cfg!.server_ca_uuids)).toEqual([ca]);
      s.app.services.externalKmip.forget(km.uuid);
      expect((await s.call('GET', `${KM}/${km.uuid}?fields=status`)).body.status.code).toBe(0);
    }, 60_000);

    /** An SVM with a configuration naming the admin SVM's CA, and its own CA installed, for PATCHes to name. */
    async function configured(name: string) {
      const { svm, ca } = await svmWithCa(name);
      const r = await s.call('POST', KM, { svm: { name }, external: { servers: servers(), client_certificate: { name: 'kmip-client' }, server_ca_certificates: [{ name: 'kmip-ca' }] } });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      const km = (await s.app.services.repos.keyManagers.findByUuid(r.headers.get('location')!.split('/').pop()!))!;
      return { svm, ca, km, cfg: (await s.app.services.repos.kmipServers.findConfig(km.uuid))! };
    }

    async function updates(kmUuid: string): Promise<number> {
      await s.app.services.audit.drain();
      return (await s.app.services.store.db.selectFrom('audit_events').select('seq').where('action', '=', 'key_manager.update_external').where('object_id', '=', kmUuid).execute()).length;
    }

    it('PATCH: the new CA is deleted after the checks, before the transaction: refused with 65536821, the settings unchanged', async () => {
      const { ca, km, cfg } = await configured('racepatch');
      const { service, connector } = serviceOver(
        dbWith(async () => {
          const d = await s.call('DELETE', `${CERTS}/${ca}`);
          expect(d.status, JSON.stringify(d.body)).toBe(200);
        }),
      );
      try {
        await expect(service.update(km, { server_ca_certificates: [{ uuid: ca }] }, WHO)).rejects.toMatchObject({ code: '65536821', target: 'external.server_ca_certificates[0]' });
      } finally {
        connector.close();
      }
      expect(await s.app.services.repos.kmipServers.findConfig(km.uuid)).toEqual(cfg);
      expect(await updates(km.uuid)).toBe(0);
      expect((await s.call('GET', `${KM}/${km.uuid}?fields=status`)).body.status.code).toBe(0);
    }, 60_000);

    it('PATCH: a delete that ran but has not committed: the change waits for it, then is refused', async () => {
      const { ca, km, cfg } = await configured('racepatchwait');
      let del: ReturnType<typeof openDelete> | undefined;
      const { service, connector } = serviceOver(
        dbWith(async () => {
          del = openDelete(ca);
          await del.ran;
        }),
      );
      try {
        const p = service.update(km, { server_ca_certificates: [{ uuid: ca }] }, WHO);
        while (!del) await sleep(20);
        await del.ran;
        expect(await settlesWithin(p, 700)).toBe(false);
        await del.commit();
        await expect(p).rejects.toMatchObject({ code: '65536821', target: 'external.server_ca_certificates[0]' });
      } finally {
        connector.close();
      }
      expect(await s.app.services.repos.certificates.find(ca)).toBeUndefined();
      expect(await s.app.services.repos.kmipServers.findConfig(km.uuid)).toEqual(cfg);
      expect(await updates(km.uuid)).toBe(0);
    }, 60_000);

    it('without a delete, the same PATCH through the same path is recorded (the races above are what refuse)', async () => {
      const { ca, km } = await configured('racepatchok');
      const { service, connector } = serviceOver(dbWith(async () => undefined));
      try {
        await service.update(km, { server_ca_certificates: [{ uuid: ca }] }, WHO);
      } finally {
        connector.close();
      }
      expect(JSON.parse((await s.app.services.repos.kmipServers.findConfig(km.uuid))!.server_ca_uuids)).toEqual([ca]);
      expect(await updates(km.uuid)).toBe(1);
      expectError(await s.call('DELETE', `${CERTS}/${ca}`), 409, '3735683');
    }, 60_000);
  });
}
