/**
 * Crash safety of the two jobs that move KEKs between roots (invariants 1 and 3): the real server
 * (`node bin/keysmith.js serve`) is killed with SIGKILL at random moments while it
 *
 * - switches the admin SVM's keystore to a second onboard configuration (PATCH
 *   /api/security/key-stores/{uuid}), re-wrapping the KEKs of the admin SVM and of 150 data SVMs
 *   that keep their keys under its key manager, and
 * - migrates a data SVM with 150 KEK versions from the admin SVM's key manager to its own
 *   (POST /api/security/key-managers/{source.uuid}/migrate),
 *
 * one KEK per step (rekeyBatch 1), and restarted on the same store each time. After every kill the
 * store as the dead server left it is read directly: every KEK is under the old root or the new
 * one with its material unchanged, and every DEK (a few hundred) opens to its original bytes. While
 * a switch is unfinished a restarted server refuses rekeys with 65537610. At the end the job has
 * succeeded by itself, every KEK is under the new root, every wrapped form clients hold unwraps
 * over HTTP to its original bytes, and the SVM's rekey works.
 *
 * Keys are seeded in-process: through the real services (data SVMs, generateDataKey) for the
 * switch, and for the migration KEK versions and DEKs written with the same crypto the services
 * use (KEKs wrapped by the keyring under the key manager's root, DEKs sealed under them, bound to
 * tenant, id and version).
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
import type { JobRow } from '../src/store/job-repo.js';


const DATA_SVMS = 150; // switch: data SVMs borrowing the admin SVM's key manager, two keys each
const VERSIONS = 150; // migrate: KEK versions of one data SVM, two keys each
/** Kills while the job is unfinished that each run needs, and the most lives it may use. */
const MIN_KILLS = 3;
const MAX_LIVES = 25;

afterAll(() => reapChildren());

interface Seeded {
  /** dek id → [svm uuid, original bytes] */
  originals: Map<string, [string, Buffer]>;
  /** svm name → wrapped forms clients hold */
  wrapped: Map<string, string[]>;
  /** The job to start, once the real server runs. */
  start: (call: ReturnType<typeof client>) => Promise<string>;
  /** Key managers a KEK may be under while the job runs, and the one all must be under at the end. */
  from: string[];
  to: string;
  /** A rekey that must be refused while the job is unfinished (path, code), if any. */
  refusedRekey?: { path: string; code: string };
  /** The rekey that must work at the end. */
  finalRekey: string;
}

describe.each(STORES)('keystore switch and key migration under kill -9 (%s)', (store) => {
  for (const op of ['switch', 'migrate'] as const) {
    it(`${op}: the job survives repeated SIGKILLs and restarts, and no key is lost`, { timeout: 240_000 }, async () => {
      requireBuilt();
      const dataDir = mkdtempSync(join(tmpdir(), `ks-${op}-crash-`));
      const pgSchema = store === 'postgres' ? `ks_${op}_crash_${randomBytes(5).toString('hex')}` : undefined;
      const storeUrl = store === 'postgres' ? PG_URL : `sqlite:${join(dataDir, 'keysmith.db')}`;
      const token = `crash-admin-${randomBytes(12).toString('hex')}`;
      const log = createWriteStream(join(RUN_DIR, 'logs', `${Date.now()}-${op}-crash-${store}.log`));

      // ---- 1. Seed in-process. ----
      const s = await startWithOkm({ store, dataDir, storeUrl, pgSchema, token });
      let seeded: Seeded;
      try {
        const svc = s.app.services;
        const adminSvm = (await svc.svms.admin())!;
        const originals = new Map<string, [string, Buffer]>();
        const wrapped = new Map<string, string[]>();
        const keep = (svm: { uuid: string; name: string }, id: string, plain: Buffer, w: string) => {
          originals.set(id, [svm.uuid, Buffer.from(plain)]);
          wrapped.set(svm.name, [...(wrapped.get(svm.name) ?? []), w]);
        };
        const who = { actor: `test:${op}-crash` };
        if (op === 'switch') {
          const b = await s.call('POST', '/api/security/key-managers?create_inactive=true', { onboard: { passphrase: PASSPHRASE } });
          expect(b.status, JSON.stringify(b.body)).toBe(201);
          const B = b.headers.get('location')!.split('/').pop()!;
          for (let i = 0; i < 20; i++) {
            const out = await svc.deks.generateDataKey(adminSvm, {}, who);
            keep(adminSvm, out.row.id, out.plaintext, out.wrapped);
          }
          for (let i = 0; i < DATA_SVMS; i++) {
            const svm = await svc.svms.create(`vs${i}`, who);
            for (let j = 0; j < 2; j++) {
              const out = await svc.deks.generateDataKey(svm, {}, who);
              keep(svm, out.row.id, out.plaintext, out.wrapped);
            }
          }
          seeded = {
            originals,
            wrapped,
            from: [s.kmUuid],
            to: B,
            start: async (call) => {
              const r = await call('PATCH', `/api/security/key-stores/${B}?return_timeout=0`, { enabled: true });
              expect(r.status, JSON.stringify(r.body)).toBe(202);
              return r.body.job.uuid;
            },
            refusedRekey: { path: `/api/security/key-managers/${B}/rekey-internal?return_timeout=0`, code: '65537610' },
            finalRekey: `/api/security/key-managers/${B}/rekey-internal?return_timeout=60`,
          };
        } else {
          const svm = await svc.svms.create('vs1', who);
          const km = (await svc.repos.keyManagers.findByUuid(s.kmUuid))!;
          const now = new Date().toISOString();
          await svc.store.db.transaction().execute(async (tx) => {
            for (let v = 1; v <= VERSIONS; v++) {
              const kek = { id: newId('kek'), svm_uuid: svm.uuid, version: v, key_manager_uuid: km.uuid, root_version: km.root_version, state: (v === VERSIONS ? 'active' : 'decommissioned') as 'active' | 'decommissioned', created_at: now };
              const material = randomBytes(32);
              await tx.insertInto('keks').values({ ...kek, wrapped: svc.keyring.wrapKek(km, kek, material) }).execute();
              for (let j = 0; j < 2; j++) {
                const id = newId('dek');
                const plain = randomBytes(32);
                const blob = seal(material, kek.id, v, dekContext(svm.uuid, id, v), plain);
                await tx
                  .insertInto('deks')
                  .values({ id, svm_uuid: svm.uuid, name: null, algorithm: 'AES', length: 256, state: 'active', kek_version: v, wrapped: blob, created_at: now, updated_at: now, activated_at: now, deactivated_at: null, compromised_at: null, destroyed_at: null })
                  .execute();
                keep(svm, id, plain, encodeWrapped(id, blob));
              }
            }
          });
          const own = await s.call('POST', '/api/security/key-managers', { svm: { name: 'vs1' }, onboard: { passphrase: PASSPHRASE } });
          expect(own.status, JSON.stringify(own.body)).toBe(201);
          const dest = own.headers.get('location')!.split('/').pop()!;
          expectRefused(await s.call('POST', `/api/security/key-managers/${dest}/rekey-internal?return_timeout=0`), '65537547');
          seeded = {
            originals,
            wrapped,
            from: [s.kmUuid],
            to: dest,
            start: async (call) => {
              const r = await call('POST', `/api/security/key-managers/${s.kmUuid}/migrate?return_timeout=0`, { uuid: dest });
              expect(r.status, JSON.stringify(r.body)).toBe(202);
              return r.body.job.uuid;
            },
            refusedRekey: { path: `/api/security/key-managers/${dest}/rekey-internal?return_timeout=0`, code: '65600031' },
            finalRekey: `/api/security/key-managers/${dest}/rekey-internal?return_timeout=60`,
          };
        }
      } finally {
        await s.close();
      }
      for (const [, plain] of [...seeded.originals.values()].slice(0, 10)) noteSecret(plain.toString('base64'));

      /** The store as the dead server left it: every KEK under an allowed root with unchanged material, every DEK opening to its bytes. */
      const kekMaterial = new Map<string, Buffer>();
      async function inspect(): Promise<{ job: JobRow | undefined; moved: number; total: number }> {
        const st = await openStore({ url: storeUrl, pgSchema });
        const keyring = createKeyring({ node: loadNodeIdentity(dataDir), startSealed: false, keyManagers: createKeyManagerRepo(st.db), keks: createKekRepo(st.db) });
        try {
          expect((await keyring.load()).unsynchronized).toEqual([]);
          const bad: string[] = [];
          const keks = await st.db.selectFrom('keks').select(['svm_uuid', 'version', 'key_manager_uuid']).execute();
          let moved = 0;
          for (const k of keks) {
            if (k.key_manager_uuid === seeded.to) moved += 1;
            else if (!seeded.from.includes(k.key_manager_uuid)) bad.push(`KEK ${k.svm_uuid}:${k.version} is under ${k.key_manager_uuid}`);
            const opened = await keyring.kek(k.svm_uuid, k.version);
            if (!opened) bad.push(`KEK ${k.svm_uuid}:${k.version} does not open`);
            else {
              const slot = `${k.svm_uuid}:${k.version}`;
              const before = kekMaterial.get(slot);
              if (before && !before.equals(opened.key)) bad.push(`KEK ${slot} changed its material`);
              kekMaterial.set(slot, Buffer.from(opened.key));
            }
          }
          const deks = await st.db.selectFrom('deks').select(['id', 'svm_uuid', 'kek_version', 'wrapped']).execute();
          expect(deks.length).toBe(seeded.originals.size);
          for (const d of deks) {
            const [svm, original] = seeded.originals.get(d.id) ?? [];
            const kek = await keyring.kek(d.svm_uuid, d.kek_version);
            const plain = kek && d.wrapped ? open(kek.key, dekContext(d.svm_uuid, d.id, d.kek_version), d.wrapped) : null;
            if (svm !== d.svm_uuid || !plain || !original || !plain.equals(original)) bad.push(`DEK ${d.id} does not open to its original bytes`);
          }
          expect(bad.slice(0, 10), `${bad.length} keys lost or unreadable`).toEqual([]);
          const job = await st.db.selectFrom('jobs').selectAll().where('type', 'in', ['key-store-switch', 'key-manager-migrate']).executeTakeFirst();
          return { job, moved, total: keks.length };
        } finally {
          keyring.seal();
          await st.close();
        }
      }

      // ---- 2. The real server: start the job, kill it again and again. ----
      const configFile = join(dataDir, 'serve.json');
      writeFileSync(configFile, JSON.stringify({ host: '127.0.0.1', port: 0, dataDir, store: storeUrl, ...(pgSchema ? { pgSchema } : {}), kdfCost: 14, rekeyBatch: 1, logLevel: 'warn', bootstrapToken: token, nodeName: 'crash1' }), { mode: 0o600 });
      let life = spawnServer(configFile, log);
      const jobUuid = await seeded.start(client(await life.listening, token));
      const lives: string[] = [];
      let killsMidJob = 0;
      let refusals = 0;
      let lastDone = -1;
      for (let n = 0; ; n++) {
        const duringStartup = n > 0 && Math.random() < 0.2;
        if (duringStartup) await sleep(randomInt(0, 300));
        else {
          const call = client(await life.listening, token);
          const j0 = (await call('GET', `/api/cluster/jobs/${jobUuid}`)).body;
          // Probed only while the job is far from its end, so the answer cannot race its completion.
          if (seeded.refusedRekey && j0.state !== 'success' && j0.progress.done < j0.progress.total / 2) {
            const r = await call('POST', seeded.refusedRekey.path);
            expectRefused(r, seeded.refusedRekey.code);
            refusals += 1;
          }
          // A point ahead of where the job stands, within the next 40% of what is left.
          const target = j0.progress.done + randomInt(1, Math.max(2, Math.floor((j0.progress.total - j0.progress.done) * 0.4)));
          for (let t = Date.now(); ; ) {
            const j = (await call('GET', `/api/cluster/jobs/${jobUuid}`)).body;
            if (j.progress.done >= target || j.state !== 'running') break;
            if (Date.now() - t > 60_000) throw new Error(`the job made no progress: ${JSON.stringify(j)}`);
            await sleep(2);
          }
        }
        await kill9(life);
        const seen = await inspect();
        expect(seen.job?.uuid).toBe(jobUuid);
        expect(seen.job!.progress_done).toBeGreaterThanOrEqual(Math.max(lastDone, 0)); // the cursor never goes back
        lastDone = seen.job!.progress_done;
        lives.push(`${duringStartup ? 'killed during start-up' : 'killed mid-run'} → ${seen.job!.state} ${seen.job!.progress_done}/${seen.job!.progress_total}, ${seen.moved}/${seen.total} KEKs under the new root`);
        if (seen.job!.state === 'success' || seen.job!.state === 'failure') break;
        killsMidJob += 1;
        if (killsMidJob >= MIN_KILLS + 2 || n >= MAX_LIVES) break;
        life = spawnServer(configFile, log);
      }

      // ---- 3. One last start: the job finishes by itself; every key unwraps; the rekey works. ----
      life = spawnServer(configFile, log);
      const call = client(await life.listening, token);
      try {
        let job: any;
        for (const end = Date.now() + 120_000; ; ) {
          job = (await call('GET', `/api/cluster/jobs/${jobUuid}`)).body;
          if (job.state === 'success' || job.state === 'failure') break;
          if (Date.now() > end) throw new Error(`the job did not finish: ${JSON.stringify(job)}`);
          await sleep(50);
        }
        console.log(`${op}-crash (${store}): ${seeded.originals.size} DEKs; ${killsMidJob} kills with the job unfinished, ${refusals} rekeys refused meanwhile; lives:\n  ${lives.join('\n  ')}`);
        expect(job, JSON.stringify(job)).toMatchObject({ state: 'success', code: 0 });
        expect(job.progress.done).toBe(job.progress.total);
        expect(killsMidJob, `only ${killsMidJob} kills landed before the job finished`).toBeGreaterThanOrEqual(MIN_KILLS);
        for (const [svm, forms] of seeded.wrapped) {
          const r = await call('POST', `/api/v1/svms/${svm}/unwrap-batch`, { wrapped: forms });
          expect(r.status, JSON.stringify(r.body).slice(0, 300)).toBe(200);
          for (const rec of r.body.records) expect(Buffer.from(rec.plaintext ?? '', 'base64').equals(seeded.originals.get(rec.key_id)![1]), JSON.stringify(rec)).toBe(true);
        }
        const rk = await call('POST', seeded.finalRekey);
        expect(rk.status, JSON.stringify(rk.body)).toBe(201);
        const audit = await call('GET', '/api/v1/audit/verify');
        expect(audit.body, JSON.stringify(audit.body)).toMatchObject({ ok: true });
      } finally {
        life.proc.kill('SIGTERM');
        await life.exited;
        log.end();
      }
      const end = await inspect();
      expect(end.moved).toBe(end.total - (op === 'migrate' ? 1 : 0)); // migrate: the admin SVM's own KEK stays where it is

      rmSync(dataDir, { recursive: true, force: true });
      await dropPgSchema(pgSchema);
    });
  }
});

function expectRefused(r: { status: number; body: any }, code: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(code === '65600031' ? 409 : 400);
  expect(r.body.error.code, JSON.stringify(r.body)).toBe(code);
}
