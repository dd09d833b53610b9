/**
 * Crash safety of the Element master-key rekey (invariants 1 and 3), small: the real server
 * (`node bin/keysmith.js serve`) is killed with SIGKILL at random moments while it re-wraps the
 * KEKs of the admin key manager (several SVMs, many KEK versions, a few hundred DEKs under them)
 * under a new root version, and restarted on the same data directory each time; the job resumes by
 * itself and finishes, and no key is ever unreadable:
 *
 * - after every kill, the store as the dead server left it is read directly with this node's seal:
 *   every KEK opens under the root version it names, every DEK opens to its original bytes;
 * - while each server lives, DEKs of every SVM unwrap over HTTP (online);
 * - at the end: GetAsyncResult reports newKey and keyToDecommission, every KEK is under the new root
 *   version and only its seals remain, every DEK unwraps over HTTP, and the passphrase still opens
 *   the new root (seal, unseal, unwrap).
 *
 * The extra KEK versions and the DEKs under them are written in-process with the same crypto as
 * the service (each KEK wrapped under the root, each DEK under its KEK version), so the job has
 * enough KEKs to be interrupted mid-way.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { client, kill9, reapChildren, requireBuilt, sleep, spawnServer } from './crash-harness.js';
import { createWriteStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { PASSPHRASE, PG_URL, dropPgSchema, RUN_DIR, STORES, noteSecret, startWithOkm } from './helpers.js';
import { open, seal } from '../src/crypto/aead.js';
import { dekContext, encodeWrapped } from '../src/hierarchy/dek-service.js';
import { createKeyring, loadNodeIdentity } from '../src/hierarchy/keyring.js';
import { newId } from '../src/ids.js';
import { openStore } from '../src/store/db.js';
import { createKekRepo } from '../src/store/kek-repo.js';
import { createKeyManagerRepo } from '../src/store/key-manager-repo.js';


const SVMS = 6; // data SVMs without their own key manager, plus the admin SVM
// KEK versions per SVM: (SVMS + 1) × 60 = 420 KEKs under the admin root; SQLite commits a step in
// about a millisecond, so it gets 180 (1,260 KEKs) for the kills to land mid-job.
const VERSIONS_OF = { sqlite: 180, postgres: 60 };
const DEKS_PER_SVM = 40; // 280 DEKs, spread over the versions
const BATCH = 1; // KEKs per step: 420 steps
const MIN_KILLS = 4;
const MAX_KILLS = 20;

afterAll(() => reapChildren());

describe.each(STORES)('master-key rekey under kill -9 (%s)', (store) => {
  const VERSIONS = VERSIONS_OF[store];
  it('re-wraps every KEK under the new master key across SIGKILLs and restarts, losing no key', { timeout: 240_000 }, async () => {
    requireBuilt();
    const dataDir = mkdtempSync(join(tmpdir(), 'ks-mcrash-'));
    const pgSchema = store === 'postgres' ? `ks_mcrash_${randomBytes(5).toString('hex')}` : undefined;
    const storeUrl = store === 'postgres' ? PG_URL : `sqlite:${join(dataDir, 'keysmith.db')}`;
    const token = `mcrash-admin-${randomBytes(12).toString('hex')}`;
    const log = createWriteStream(join(RUN_DIR, 'logs', `${Date.now()}-rekey-master-crash-${store}.log`));

    // ---- 1. Seed: SVMs and keys over HTTP, extra KEK versions and keys under them in-process. ----
    const originals = new Map<string, { svm: string; svmName: string; plain: Buffer; wrapped: string }>();
    const s = await startWithOkm({ store, dataDir, storeUrl, pgSchema, token });
    let kmUuid: string;
    try {
      kmUuid = s.kmUuid;
      const names = ['cluster1'];
      for (let i = 0; i < SVMS; i++) {
        const n = `mc${i}`;
        expect((await s.call('POST', '/api/svm/svms', { name: n })).status).toBe(201);
        names.push(n);
      }
      const svc = s.app.services;
      const km = (await svc.repos.keyManagers.findByUuid(kmUuid))!;
      const db = svc.store.db;
      for (const name of names) {
        const svm = (await svc.svms.resolve(name))!;
        // Version 1 through the service (a first key creates it), 2..VERSIONS in-process, all under root version 1.
        for (let i = 0; i < 5; i++) {
          const r = await s.call('POST', `/api/v1/svms/${name}/data-keys`, {});
          expect(r.status).toBe(201);
          originals.set(r.body.key_id, { svm: svm.uuid, svmName: name, plain: Buffer.from(r.body.plaintext, 'base64'), wrapped: r.body.wrapped });
        }
        const kekMaterial = new Map<number, { id: string; key: Buffer }>();
        await db.transaction().execute(async (tx) => {
          for (let v = 2; v <= VERSIONS; v++) {
            const row = { id: newId('kek'), svm_uuid: svm.uuid, version: v, key_manager_uuid: km.uuid, root_version: km.root_version, state: 'decommissioned' as const, created_at: new Date().toISOString() };
            const material = randomBytes(32);
            await tx.insertInto('keks').values({ ...row, wrapped: svc.keyring.wrapKek(km, row, material) }).execute();
            kekMaterial.set(v, { id: row.id, key: material });
          }
          const now = new Date().toISOString();
          for (let i = 5; i < DEKS_PER_SVM; i++) {
            const v = 2 + (i % (VERSIONS - 1));
            const id = newId('dek');
            const plain = randomBytes(32);
            const k = kekMaterial.get(v)!;
            const blob = seal(k.key, k.id, v, dekContext(svm.uuid, id, v), plain);
            await tx
              .insertInto('deks')
              .values({ id, svm_uuid: svm.uuid, name: null, algorithm: 'AES', length: 256, state: 'active', kek_version: v, wrapped: blob, created_at: now, updated_at: now, activated_at: now, deactivated_at: null, compromised_at: null, destroyed_at: null })
              .execute();
            originals.set(id, { svm: svm.uuid, svmName: name, plain, wrapped: encodeWrapped(id, blob) });
          }
        });
      }
      expect(await svc.repos.masterKeys.countKeks(kmUuid)).toBe((SVMS + 1) * VERSIONS);
    } finally {
      await s.close();
    }
    for (const o of [...originals.values()].slice(0, 10)) noteSecret(o.plain.toString('base64'));

    /** The store as the dead server left it: every KEK opens under its root version, every DEK to its bytes. */
    async function inspect(): Promise<{ rootVersions: Record<number, number>; job: any }> {
      const st = await openStore({ url: storeUrl, pgSchema });
      const keks = createKekRepo(st.db);
      const keyring = createKeyring({ node: loadNodeIdentity(dataDir), startSealed: false, keyManagers: createKeyManagerRepo(st.db), keks });
      try {
        expect((await keyring.load()).unsynchronized).toEqual([]);
        const rootVersions: Record<number, number> = {};
        const bad: string[] = [];
        for (const k of await keks.listAll()) {
          rootVersions[k.root_version] = (rootVersions[k.root_version] ?? 0) + 1;
          try {
            if (!(await keyring.kek(k.svm_uuid, k.version))) bad.push(`KEK ${k.id} missing`);
          } catch (e) {
            bad.push(`KEK ${k.id} of ${k.svm_uuid} v${k.version} under root v${k.root_version}: ${(e as Error).message}`);
          }
        }
        for (const d of await st.db.selectFrom('deks').select(['id', 'svm_uuid', 'kek_version', 'wrapped']).execute()) {
          const o = originals.get(d.id);
          const kek = bad.length ? null : await keyring.kek(d.svm_uuid, d.kek_version);
          const plain = kek && d.wrapped ? open(kek.key, dekContext(d.svm_uuid, d.id, d.kek_version), d.wrapped) : null;
          if (!o || !plain || !plain.equals(o.plain)) bad.push(`DEK ${d.id} does not open to its bytes`);
        }
        expect(bad.slice(0, 5), `${bad.length} keys unreadable`).toEqual([]);
        const job = await st.db.selectFrom('jobs').selectAll().where('type', '=', 'rekey-master').executeTakeFirst();
        return { rootVersions, job };
      } finally {
        keyring.seal();
        await st.close();
      }
    }

    async function probe(base: string): Promise<void> {
      const call = client(base, token);
      const byName = new Map<string, [string, { plain: Buffer; wrapped: string }][]>();
      for (const [id, o] of originals) byName.set(o.svmName, [...(byName.get(o.svmName) ?? []), [id, o]]);
      for (const [name, list] of byName) {
        const sample = list.filter(() => Math.random() < 0.25).slice(0, 10);
        if (sample.length === 0) continue;
        let r;
        try {
          r = await call('POST', `/api/v1/svms/${name}/unwrap-batch`, { wrapped: sample.map(([, o]) => o.wrapped) });
        } catch {
          return; // killed mid-request
        }
        expect(r.status, JSON.stringify(r.body).slice(0, 300)).toBe(200);
        sample.forEach(([id, o], i) => {
          expect(r.body.records[i].key_id).toBe(id);
          expect(Buffer.from(r.body.records[i].plaintext, 'base64').equals(o.plain)).toBe(true);
        });
      }
    }

    // ---- 2. The real server: start the rekey over JSON-RPC, then kill it again and again. ----
    const configFile = join(dataDir, 'serve.json');
    writeFileSync(configFile, JSON.stringify({ host: '127.0.0.1', port: 0, dataDir, store: storeUrl, ...(pgSchema ? { pgSchema } : {}), kdfCost: 14, rekeyBatch: BATCH, logLevel: 'warn', bootstrapToken: token, nodeName: 'mcrash1' }), { mode: 0o600 });
    let life = spawnServer(configFile, log);
    let base = await life.listening;
    const before = (await client(base, token)('POST', '/json-rpc/12.5', { method: 'GetSoftwareEncryptionAtRestInfo', id: 1 })).body.result.masterKeyInfo;
    const started = await client(base, token)('POST', '/json-rpc/12.5', { method: 'RekeySoftwareEncryptionAtRestMasterKey', params: { keyManagementType: 'Internal' }, id: 2 });
    expect(started.status, JSON.stringify(started.body)).toBe(200);
    const handle: number = started.body.result.asyncHandle;
    const total = (SVMS + 1) * VERSIONS;
    const lives: string[] = [];
    let killsMidJob = 0;
    let lastDone = -1;
    for (;;) {
      // Each life: keys are served (probe), the job advances past where the last life left it, then a kill 0–30 ms later.
      await probe(base);
      const call = client(base, token);
      for (const end = Date.now() + 60_000; ; ) {
        const r = await call('POST', '/json-rpc/12.5', { method: 'GetAsyncResult', params: { asyncHandle: handle, keepResult: true }, id: 3 });
        expect(r.status).toBe(200);
        if (r.body.result.status === 'complete' || (r.body.result.details?.progress?.done ?? 0) > lastDone) break;
        if (Date.now() > end) throw new Error(`no progress: ${JSON.stringify(r.body)}`);
        await sleep(2);
      }
      // SQLite commits a step in about a millisecond (its fsync runs off the event loop): kill sooner there.
      await sleep(randomInt(0, store === 'sqlite' ? 6 : 31));
      await kill9(life);
      const seen = await inspect();
      lives.push(`→ ${seen.job.state} ${seen.job.progress_done}/${seen.job.progress_total} root versions ${JSON.stringify(seen.rootVersions)}`);
      expect(seen.job.progress_done).toBeGreaterThanOrEqual(Math.max(lastDone, 0));
      lastDone = seen.job.progress_done;
      if (seen.job.state === 'success' || seen.job.state === 'failure') break;
      killsMidJob += 1;
      life = spawnServer(configFile, log);
      base = await life.listening;
      if (killsMidJob >= MAX_KILLS) break;
    }

    // ---- 3. One last start (if needed): the job finishes by itself. ----
    if (life.proc.exitCode !== null || life.proc.signalCode !== null) {
      life = spawnServer(configFile, log);
      base = await life.listening;
    }
    const call = client(base, token);
    try {
      let done: any;
      for (const end = Date.now() + 60_000; ; ) {
        const r = await call('POST', '/json-rpc/12.5', { method: 'GetAsyncResult', params: { asyncHandle: handle, keepResult: true }, id: 4 });
        done = r.body.result;
        if (done.status === 'complete') break;
        if (Date.now() > end) throw new Error(`the rekey did not finish: ${JSON.stringify(r.body)}`);
        await sleep(50);
      }
      console.log(`rekey-master-crash (${store}): ${total} KEKs, ${originals.size} DEKs, ${killsMidJob} kills mid-job:\n  ${lives.join('\n  ')}`);
      expect(done.error, JSON.stringify(done)).toBeUndefined();
      expect(done.result.keyToDecommission).toEqual(before);
      expect(done.result.newKey.keyID).not.toBe(before.keyID);
      expect(killsMidJob, `only ${killsMidJob} kills landed before the job finished`).toBeGreaterThanOrEqual(MIN_KILLS);
      const info = await call('POST', '/json-rpc/12.5', { method: 'GetSoftwareEncryptionAtRestInfo', id: 5 });
      expect(info.body.result.masterKeyInfo).toEqual(done.result.newKey);
      // Every DEK over HTTP, then again after the passphrase alone reopened the new root.
      const all = async () => {
        const byName = new Map<string, [string, { plain: Buffer; wrapped: string }][]>();
        for (const [id, o] of originals) byName.set(o.svmName, [...(byName.get(o.svmName) ?? []), [id, o]]);
        for (const [name, list] of byName) {
          const r = await call('POST', `/api/v1/svms/${name}/unwrap-batch`, { wrapped: list.map(([, o]) => o.wrapped) });
          expect(r.status).toBe(200);
          const wrong = list.filter(([id, o], i) => r.body.records[i].key_id !== id || !Buffer.from(r.body.records[i].plaintext ?? '', 'base64').equals(o.plain));
          expect(wrong.length, `${name}: keys that do not unwrap to their bytes`).toBe(0);
        }
      };
      await all();
      expect((await call('POST', '/api/v1/sys/seal')).status).toBeLessThan(300);
      expect((await call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE })).status).toBe(200);
      await all();
    } finally {
      life.proc.kill('SIGTERM');
      await life.exited;
      log.end();
    }

    // ---- 4. The store: every KEK under the new root version, only its seals left. ----
    const end = await inspect();
    expect(end.job.state).toBe('success');
    expect(end.rootVersions).toEqual({ 2: total });
    const st = await openStore({ url: storeUrl, pgSchema });
    try {
      const seals = await st.db.selectFrom('root_seals').select('root_version').where('key_manager_uuid', '=', kmUuid!).execute();
      expect(seals.map((x) => x.root_version)).toEqual([2]);
    } finally {
      await st.close();
    }
    rmSync(dataDir, { recursive: true, force: true });
    await dropPgSchema(pgSchema);
  });
});
