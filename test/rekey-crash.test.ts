/**
 * Crash safety of rekey-internal (invariants 1 and 3): the real server, as users run it
 * (`node bin/keysmith.js serve`), is killed with SIGKILL many times at random moments while it
 * re-wraps 100,000 DEKs, and restarted on the same data directory each time; the job must resume
 * by itself and finish, and no key may ever be unreadable:
 *
 * - after every kill, the store as the dead server left it is read directly: every key is there,
 *   under the old or the new KEK version, and opens to its original bytes;
 * - while each server lives, a sample of the wrapped forms clients hold is unwrapped (online);
 * - at the end: the job succeeded with progress 100,000/100,000, every stored key is under the new
 *   KEK version and opens to its original bytes, the old version is decommissioned yet every wrapped
 *   form clients hold still unwraps (over HTTP, in batches), and the audit chain verifies.
 *
 * Seeding 100,000 keys over HTTP would take minutes, so the keys are created in-process: some
 * through the real service (generateDataKey), the rest written in bulk with the same crypto as
 * the service (seal under the tenant's KEK, bound to tenant, id and version).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { client, kill9, reapChildren, requireBuilt, sleep, spawnServer } from './crash-harness.js';
import { createWriteStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { PG_URL, dropPgSchema, RUN_DIR, STORES, noteSecret, startWithOkm } from './helpers.js';
import { open, readHeader, seal } from '../src/crypto/aead.js';
import { dekContext, encodeWrapped } from '../src/hierarchy/dek-service.js';
import { createKeyring, loadNodeIdentity } from '../src/hierarchy/keyring.js';
import { newId } from '../src/ids.js';
import { openStore } from '../src/store/db.js';
import { createKekRepo } from '../src/store/kek-repo.js';
import { createKeyManagerRepo } from '../src/store/key-manager-repo.js';
import type { DekRow } from '../src/store/dek-repo.js';
import type { JobRow } from '../src/store/job-repo.js';


/**
 * Keys to re-wrap, and keys per rekey step (one transaction each). SQLite, the embedded default,
 * and PostgreSQL both carry the issue's 100,000 keys in 400 steps (PostgreSQL re-wraps a batch in
 * one statement). KEYSMITH_CRASH_DEKS / KEYSMITH_CRASH_DEKS_PG change the count.
 */
const PROFILE = {
  sqlite: { keys: Number(process.env.KEYSMITH_CRASH_DEKS ?? 100_000), steps: 400 },
  postgres: { keys: Number(process.env.KEYSMITH_CRASH_DEKS_PG ?? 100_000), steps: 400 },
};
/** Keys created through the real generateDataKey path; the rest are written in bulk. */
const THROUGH_SERVICE = 1_000;
const BULK_TX = 5_000;
const BULK_STMT = 500;
/**
 * Kills spread over the whole job: a server is killed 50–700 ms (SQLite: 10–200 ms) after the job's progress passes a
 * random point; TARGETS such points, uniform over the first 75% of the keys (so that even a fast
 * machine cannot finish the job within 700 ms of one), then one in the finish phase. Besides,
 * about one restart in six is killed during start-up. At least MIN_KILLS kills must land while
 * the job is unfinished (extra lives are killed, if need be, before the finish-phase target).
 */
const TARGETS = 13;
const MIN_KILLS = 10;
const MAX_KILLS = 40;
const UNWRAP_BATCH = 5_000;

afterAll(() => reapChildren());

describe.each(STORES)('rekey-internal under kill -9 (%s)', (store) => {
  const N = PROFILE[store].keys;
  const REKEY_BATCH = Math.max(1, Math.round(N / PROFILE[store].steps));
  it(`re-wraps ${N} DEKs across repeated SIGKILLs and restarts, losing none`, { timeout: 300_000 }, async () => {
    requireBuilt();
    const t0 = Date.now();
    const dataDir = mkdtempSync(join(tmpdir(), 'ks-crash-'));
    const pgSchema = store === 'postgres' ? `ks_crash_${randomBytes(5).toString('hex')}` : undefined;
    const storeUrl = store === 'postgres' ? PG_URL : `sqlite:${join(dataDir, 'keysmith.db')}`;
    const token = `crash-admin-${randomBytes(12).toString('hex')}`;
    const log = createWriteStream(join(RUN_DIR, 'logs', `${Date.now()}-rekey-crash-${store}.log`));

    // ---- 1. Seed: the key manager over HTTP, the keys in-process. ----
    const originals = new Map<string, Buffer>(); // dek id → plaintext
    const wrappedForms: string[] = []; // what clients hold: wrapped under KEK version 1
    const s = await startWithOkm({ store, dataDir, storeUrl, pgSchema, token });
    let svmUuid: string;
    let kmUuid: string;
    let seedMs: { service: number; bulk: number };
    try {
      kmUuid = s.kmUuid;
      const admin = (await s.app.services.repos.svms.findAdmin())!;
      svmUuid = admin.uuid;
      expect(admin.name).toBe('cluster1');

      let t = Date.now();
      for (let i = 0; i < Math.min(N, THROUGH_SERVICE); i++) {
        const out = await s.app.services.deks.generateDataKey(admin, {}, { actor: 'test:rekey-crash' });
        expect(out.row.kek_version).toBe(1);
        originals.set(out.row.id, Buffer.from(out.plaintext));
        wrappedForms.push(out.wrapped);
      }
      const serviceMs = Date.now() - t;

      t = Date.now();
      const kek = await s.app.services.keyring.kek(svmUuid, 1);
      expect(kek).not.toBeNull();
      const db = s.app.services.store.db;
      for (let made = originals.size; made < N; ) {
        const rows: DekRow[] = [];
        const now = new Date().toISOString();
        for (let i = 0; i < BULK_TX && made + rows.length < N; i++) {
          const id = newId('dek');
          const material = randomBytes(32);
          const blob = seal(kek!.key, kek!.row.id, 1, dekContext(svmUuid, id, 1), material);
          rows.push({
            id,
            svm_uuid: svmUuid,
            name: null,
            algorithm: 'AES',
            length: 256,
            state: 'active',
            kek_version: 1,
            wrapped: blob,
            created_at: now,
            updated_at: now,
            activated_at: now,
            deactivated_at: null,
            compromised_at: null,
            destroyed_at: null,
          });
          originals.set(id, material);
          wrappedForms.push(encodeWrapped(id, blob));
        }
        await db.transaction().execute(async (tx) => {
          for (let i = 0; i < rows.length; i += BULK_STMT) await tx.insertInto('deks').values(rows.slice(i, i + BULK_STMT)).execute();
        });
        made += rows.length;
      }
      seedMs = { service: serviceMs, bulk: Date.now() - t };
      expect(originals.size).toBe(N);
      expect(await s.app.services.repos.deks.countForSvm(svmUuid)).toBe(N);
    } finally {
      await s.close();
    }
    // A few plaintexts go on the run's secret list: the final check proves they reached no log or audit record.
    for (const p of [...originals.values()].slice(0, 20)) noteSecret(p.toString('base64'));
    for (const p of [...originals.values()].slice(-20)) noteSecret(p.toString('base64'));

    /**
     * Reads the store as the (dead) server left it; every key must be there and open to its original
     * bytes. A stored blob byte-for-byte equal to one an earlier inspection opened is not decrypted
     * again (unless `full`): its KEK version's material is checked to be unchanged instead, so the
     * blobs a kill could have touched are always opened.
     */
    const verified = new Map<string, Buffer>(); // dek id → the stored blob last seen to open to its original bytes
    const kekMaterial = new Map<number, Buffer>(); // KEK version → its material, which must never change
    async function inspect(full: boolean): Promise<{ job: JobRow | undefined; byVersion: Record<number, number>; opened: number; keks: { version: number; state: string }[] }> {
      const st = await openStore({ url: storeUrl, pgSchema });
      const keks = createKekRepo(st.db);
      const keyring = createKeyring({ node: loadNodeIdentity(dataDir), startSealed: false, keyManagers: createKeyManagerRepo(st.db), keks });
      try {
        expect((await keyring.load()).unsynchronized).toEqual([]);
        const byVersion: Record<number, number> = {};
        const bad: string[] = [];
        const seen = new Set<string>();
        const kekKeys = new Map<number, Buffer>();
        let opened = 0;
        for (let after = ''; ; ) {
          const page = await st.db
            .selectFrom('deks')
            .select(['id', 'state', 'kek_version', 'wrapped'])
            .where('svm_uuid', '=', svmUuid)
            .where('id', '>', after)
            .orderBy('id')
            .limit(10_000)
            .execute();
          if (page.length === 0) break;
          for (const r of page) {
            seen.add(r.id);
            byVersion[r.kek_version] = (byVersion[r.kek_version] ?? 0) + 1;
            const original = originals.get(r.id);
            if (!original) {
              bad.push(`${r.id}: not a key this test made`);
              continue;
            }
            if (r.state !== 'active' || !r.wrapped) {
              bad.push(`${r.id}: state ${r.state}, material ${r.wrapped ? 'present' : 'gone'}`);
              continue;
            }
            if (readHeader(r.wrapped)?.wrapVersion !== r.kek_version) {
              bad.push(`${r.id}: blob names KEK version ${readHeader(r.wrapped)?.wrapVersion}, row says ${r.kek_version}`);
              continue;
            }
            if (!kekKeys.has(r.kek_version)) {
              const k = await keyring.kek(svmUuid, r.kek_version);
              if (!k) {
                bad.push(`${r.id}: KEK version ${r.kek_version} is missing`);
                continue;
              }
              const before = kekMaterial.get(r.kek_version);
              if (before && !before.equals(k.key)) bad.push(`KEK version ${r.kek_version} changed its material`);
              kekMaterial.set(r.kek_version, Buffer.from(k.key));
              kekKeys.set(r.kek_version, k.key);
            }
            if (!full && verified.get(r.id)?.equals(r.wrapped)) continue;
            opened += 1;
            const plain = open(kekKeys.get(r.kek_version)!, dekContext(svmUuid, r.id, r.kek_version), r.wrapped);
            if (!plain || !plain.equals(original)) bad.push(`${r.id}: does not open to its original bytes under KEK version ${r.kek_version}`);
            else verified.set(r.id, r.wrapped);
          }
          after = page[page.length - 1].id;
        }
        for (const id of originals.keys()) if (!seen.has(id)) bad.push(`${id}: missing from the store`);
        expect(bad.slice(0, 10), `${bad.length} keys lost or unreadable`).toEqual([]);
        const job = await st.db.selectFrom('jobs').selectAll().where('type', '=', 'rekey-internal').where('svm_uuid', '=', svmUuid).executeTakeFirst();
        return { job, byVersion, opened, keks: (await keks.listForSvm(svmUuid)).map((k) => ({ version: k.version, state: k.state })) };
      } finally {
        keyring.seal();
        await st.close();
      }
    }

    /** While a server lives: a random sample of the wrapped forms clients hold must unwrap to the right bytes. */
    async function probe(base: string): Promise<'ok' | 'interrupted'> {
      const sample = Array.from({ length: 200 }, () => wrappedForms[randomInt(wrappedForms.length)]);
      let r: { status: number; body: any };
      try {
        r = await client(base, token)('POST', '/api/v1/svms/cluster1/unwrap-batch', { wrapped: sample });
      } catch {
        return 'interrupted'; // killed mid-request
      }
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      for (const rec of r.body.records) expect(Buffer.from(rec.plaintext ?? '', 'base64').equals(originals.get(rec.key_id)!), JSON.stringify(rec)).toBe(true);
      return 'ok';
    }

    // ---- 2. The real server as a child: start the rekey, then kill it again and again. ----
    const configFile = join(dataDir, 'serve.json');
    writeFileSync(
      configFile,
      JSON.stringify({ host: '127.0.0.1', port: 0, dataDir, store: storeUrl, ...(pgSchema ? { pgSchema } : {}), kdfCost: 14, rekeyBatch: REKEY_BATCH, logLevel: 'warn', bootstrapToken: token, nodeName: 'crash1' }),
      { mode: 0o600 },
    );
    const tRekey = Date.now();
    let life = spawnServer(configFile, log);
    const first = client(await life.listening, token);
    const started = await first('POST', `/api/security/key-managers/${kmUuid}/rekey-internal?return_timeout=0`);
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    const jobUuid: string = started.body.job.uuid;
    // Online: once keys are being re-wrapped, the wrapped forms clients hold still unwrap (this one must get through).
    for (let t = Date.now(); ; ) {
      const j = await first('GET', `/api/cluster/jobs/${jobUuid}`);
      expect(j.status).toBe(200);
      if (j.body.progress.done > 0) break;
      if (Date.now() - t > 30_000) throw new Error(`the job made no progress: ${JSON.stringify(j.body)}`);
      await sleep(20);
    }
    expect(await probe(await life.listening)).toBe('ok');

    const lives: string[] = [];
    let kills = 0;
    let killsMidJob = 0;
    let probes = 1;
    let lastDone = -1;
    const targets = [...Array.from({ length: TARGETS }, () => randomInt(Math.floor(N * 0.75))).sort((a, b) => a - b), N];
    for (;;) {
      const duringStartup = kills > 0 && Math.random() < 1 / 6;
      let probing: Promise<unknown> = Promise.resolve();
      let wait: number;
      let target: number | undefined;
      if (duringStartup) {
        wait = randomInt(0, 400);
        await sleep(wait);
      } else {
        const base = await life.listening;
        probing = probe(base).then(
          (r) => r === 'ok' && (probes += 1),
          (e: unknown) => e, // a wrong answer: thrown below, once this life is dead
        );
        // Requests are served during the rekey: the progress is read over HTTP.
        // Short of MIN_KILLS when only the finish-phase target is left: extra lives, killed 50–700 ms after they listen.
        target = targets.length > 1 || killsMidJob >= MIN_KILLS ? targets.shift()! : 0;
        for (let t = Date.now(); ; ) {
          const j = await client(base, token)('GET', `/api/cluster/jobs/${jobUuid}`);
          expect(j.status, JSON.stringify(j.body)).toBe(200);
          if (j.body.progress.done >= target || j.body.state !== 'running') break;
          if (Date.now() - t > 60_000) throw new Error(`the job made no progress: ${JSON.stringify(j.body)}`);
          await sleep(10);
        }
        // SQLite re-wraps tens of thousands of keys a second here (its commits' fsyncs run off the
        // event loop): kill sooner there, or a few lives would finish the job.
        wait = store === 'sqlite' ? randomInt(10, 201) : randomInt(50, 701);
        await sleep(wait);
      }
      await kill9(life);
      const wrongAnswer = await probing;
      if (wrongAnswer instanceof Error) throw wrongAnswer;
      kills += 1;
      const tInspect = Date.now();
      const seen = await inspect(kills === 1);
      const inspectMs = Date.now() - tInspect;
      expect(seen.job?.uuid).toBe(jobUuid);
      const state = seen.job!.state;
      lives.push(`${duringStartup ? 'killed during start-up' : `up in ${life.startupMs} ms, progress passed ${target}`} +${wait} ms → ${state} ${seen.job!.progress_done}/${seen.job!.progress_total} ${JSON.stringify(seen.byVersion)} KEKs ${seen.keks.map((k) => `v${k.version}:${k.state}`).join(',')} (${seen.opened} opened, checked in ${inspectMs} ms)`);
      // The cursor never goes back.
      expect(seen.job!.progress_done).toBeGreaterThanOrEqual(Math.max(lastDone, 0));
      lastDone = seen.job!.progress_done;
      if (state === 'success' || state === 'failure') break;
      killsMidJob += 1;
      if (targets.length === 0 || kills >= MAX_KILLS) break;
      life = spawnServer(configFile, log);
    }

    // ---- 3. One last start: the job finishes by itself. ----
    let finalJob: any;
    if (life.proc.exitCode === null && life.proc.signalCode === null) throw new Error('a server is still running');
    life = spawnServer(configFile, log);
    const call = client(await life.listening, token);
    const tLast = Date.now();
    try {
      const deadline = Date.now() + 120_000;
      for (;;) {
        const j = await call('GET', `/api/cluster/jobs/${jobUuid}`);
        expect(j.status).toBe(200);
        finalJob = j.body;
        if (finalJob.state === 'success' || finalJob.state === 'failure') break;
        if (Date.now() > deadline) throw new Error(`the job did not finish after the last restart: ${JSON.stringify(finalJob)}`);
        await sleep(100);
      }
      const rekeyMs = Date.now() - tRekey;
      lives.push(`last life: up in ${life.startupMs} ms, finished the job in ${Date.now() - tLast} ms`);
      console.log(
        `rekey-crash (${store}): ${N} DEKs seeded (${Math.min(N, THROUGH_SERVICE)} via generateDataKey in ${seedMs.service} ms, the rest in bulk in ${seedMs.bulk} ms); ` +
          `rekeyBatch ${REKEY_BATCH}; ${kills} SIGKILLs (${killsMidJob} with the job unfinished), ${probes} online unwrap probes answered; rekey to completion ${rekeyMs} ms; lives:\n  ` +
          lives.join('\n  '),
      );
      expect(finalJob, JSON.stringify(finalJob)).toMatchObject({ state: 'success', code: 0, progress: { done: N, total: N } });
      expect(killsMidJob, `only ${killsMidJob} kills landed before the job finished`).toBeGreaterThanOrEqual(MIN_KILLS);

      // Every wrapped form clients hold (all under the old, now decommissioned, KEK version) still unwraps, over HTTP.
      const wrong: string[] = [];
      for (let i = 0; i < wrappedForms.length; i += UNWRAP_BATCH) {
        const chunk = wrappedForms.slice(i, i + UNWRAP_BATCH);
        const r = await call('POST', '/api/v1/svms/cluster1/unwrap-batch', { wrapped: chunk });
        expect(r.status, JSON.stringify(r.body).slice(0, 500)).toBe(200);
        expect(r.body.num_records).toBe(chunk.length);
        for (const rec of r.body.records) {
          if (!rec.plaintext || !Buffer.from(rec.plaintext, 'base64').equals(originals.get(rec.key_id)!)) wrong.push(JSON.stringify(rec));
        }
      }
      expect(wrong.slice(0, 5), `${wrong.length} wrapped forms did not unwrap to their original bytes`).toEqual([]);

      const audit = await call('GET', '/api/v1/audit/verify');
      expect(audit.status).toBe(200);
      expect(audit.body, JSON.stringify(audit.body)).toMatchObject({ ok: true });
    } finally {
      life.proc.kill('SIGTERM');
      await life.exited;
      log.end();
    }

    // ---- 4. The stored keys themselves: all under the new version, each opening to its original bytes. ----
    const end = await inspect(true);
    expect(end.job).toMatchObject({ state: 'success', progress_done: N, progress_total: N });
    expect(end.byVersion).toEqual({ 2: N });
    expect(end.keks).toEqual([
      { version: 1, state: 'decommissioned' },
      { version: 2, state: 'active' },
    ]);
    expect(JSON.parse(end.job!.result!)).toEqual({ new_version: 2, decommissioned_versions: [1], keys: N });
    console.log(`rekey-crash (${store}): verified ${N} keys in the store and over HTTP; total ${Date.now() - t0} ms`);

    // Passed: the store is not needed for a post-mortem.
    rmSync(dataDir, { recursive: true, force: true });
    await dropPgSchema(pgSchema);
  });
});
