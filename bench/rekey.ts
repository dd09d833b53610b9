/**
 * Rekey-internal benchmark: DEKs/s end to end and the server's peak RSS, beside a bare loop
 * measured in the same run on the same store.
 *
 * For each store (SQLite; PostgreSQL when a URL is given) and each size (default 100,000 and
 * 1,000,000 DEKs):
 *   1. seed: Keysmith is built in this process (createApp, as `keysmith serve` builds it), the
 *      onboard key manager is configured over HTTP, and the DEKs are sealed under the tenant's KEK
 *      with Keysmith's own aead/dekContext and inserted in large transactions (1M HTTP calls would
 *      take far longer than the rekey itself); the app is then closed;
 *   2. bare loop: one thread, the raw driver, read a batch in id order, open and seal each key
 *      with node:crypto (aead.ts) and write the batch back (SQLite: one prepared UPDATE per key;
 *      PostgreSQL: one UPDATE … FROM (VALUES …) confined to the batch's id range), one transaction
 *      per batch. It re-wraps under the same KEK version (a fresh IV), so the data stay valid;
 *   3. Keysmith: the real server (`node bin/keysmith.js serve --config …`) in its own process; its
 *      peak RSS is reset (/proc/PID/clear_refs) once it listens, the rekey is started through the
 *      real API (POST …/rekey-internal?return_timeout=0) and the job polled until it succeeds. Time
 *      is end to end, from the POST to the poll that sees success. Meanwhile unwrap requests are
 *      sent at a fixed rate and every answer is checked against the plaintext it must give.
 *   Afterwards every seeded key is counted under the new version and a sample unwraps (HTTP).
 *
 * Usage: node dist/bench/rekey.js [--keys 100000,1000000] [--pg postgres://…] [--no-sqlite]
 *        [--batch N (rekeyBatch; default: Keysmith's)] [--bare-batch N] [--unwrap-rate N/s]
 *        [--profile DIR (CPU profile of each server, summarize with dist/bench/profile-summary.js)]
 *        or `npm run bench -- --only rekey [--store postgres://…]`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import SQLite from 'better-sqlite3';
import pg from 'pg';
import { sql } from 'kysely';
import { open, seal } from '../src/crypto/aead.js';
import { createApp } from '../src/app.js';
import { parseConfig } from '../src/config.js';
import { dekContext, encodeWrapped } from '../src/hierarchy/dek-service.js';
import { newId } from '../src/ids.js';

const here = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(here, '..', '..');
const BIN = join(ROOT, 'bin', 'keysmith.js');

export interface RekeyBenchOptions {
  sizes?: number[];
  /** PostgreSQL URL: the PostgreSQL runs are made only with one. */
  pgUrl?: string;
  sqlite?: boolean;
  /** rekeyBatch given to the server; undefined: Keysmith's default. */
  batch?: number;
  bareBatch?: number;
  /** Unwrap requests per second sent during the rekey. */
  unwrapRate?: number;
  /** Write a CPU profile of each Keysmith server into this directory (node --cpu-prof). */
  profileDir?: string;
}

export interface RekeyRun {
  store: 'sqlite' | 'postgres';
  keys: number;
  seedSeconds: number;
  bare: { seconds: number; perSec: number };
  keysmith: { seconds: number; perSec: number; jobSeconds: number; batch: string };
  ratio: number;
  peakRssMb: number;
  startRssMb: number;
  unwraps: { ok: number; errors: number; p50: number; p99: number; max: number; kinds: string[] };
  /** The server's RSS (MB) when the job had done 25, 50, 75 and 100% of the keys. */
  rssCurve: number[];
  /** The slowest job poll (GET /api/cluster/jobs/{uuid}), ms: how long the server's event loop stalled at worst. */
  slowestPollMs: number;
  /** The same unwrap load for 2 s before the rekey started. */
  idleUnwraps: { p50: number; p99: number; errors: number };
  /** Share of the machine used by other processes (PostgreSQL included) during the Keysmith rekey. */
  otherCpuPct?: number;
  serverCpuPct?: number;
}

const TARGET_SECONDS = { sqlite: 10, postgres: 15 };
const TARGET_RATIO = 1.3;
const SAMPLE = 2000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fmt = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '—');

// ---------------------------------------------------------------- /proc

function procTicks(pid: number | 'self'): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}
function machineBusyTicks(): number {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = cpu;
  return user + nice + system + irq + softirq + steal;
}
function statusKb(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

// ---------------------------------------------------------------- 1. seed

interface Seeded {
  dataDir: string;
  storeUrl: string;
  pgSchema?: string;
  token: string;
  kmUuid: string;
  svmUuid: string;
  kek: { id: string; key: Buffer };
  sample: { wrapped: string; plaintext: string }[];
  seconds: number;
}

async function seed(store: 'sqlite' | 'postgres', n: number, pgUrl: string | undefined): Promise<Seeded> {
  const dataDir = mkdtempSync(join(tmpdir(), 'keysmith-rekey-bench-'));
  const pgSchema = store === 'postgres' ? `ks_rekey_bench_${randomBytes(5).toString('hex')}` : undefined;
  const storeUrl = store === 'postgres' ? pgUrl! : `sqlite:${join(dataDir, 'keysmith.db')}`;
  const token = `bench-admin-${randomBytes(16).toString('hex')}`;
  const config = parseConfig({ host: '127.0.0.1', port: 0, dataDir, store: storeUrl, pgSchema, bootstrapToken: token, kdfCost: 14, logLevel: 'warn' });
  const app = await createApp(config, {});
  const t0 = performance.now();
  try {
    const url = await app.listen();
    const km = await fetch(`${url}/api/security/key-managers`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ onboard: { passphrase: `bench passphrase ${randomBytes(12).toString('hex')}` } }),
    });
    if (km.status !== 201) throw new Error(`key manager setup answered ${km.status}: ${await km.text()}`);
    const kmUuid = km.headers.get('location')!.split('/').pop()!;
    const svmUuid = (await app.services.repos.svms.findAdmin())!.uuid;
    const kek = await app.services.keyring.kek(svmUuid, 1);
    if (!kek) throw new Error('no KEK version 1');
    const db = app.services.store.db;
    const sample: Seeded['sample'] = [];
    const every = Math.max(1, Math.floor(n / SAMPLE));
    const TX = 20_000;
    const STMT = store === 'postgres' ? TX : 1000;
    const now = new Date().toISOString();
    for (let made = 0; made < n; ) {
      const ids: string[] = [];
      const blobs: Buffer[] = [];
      for (let i = 0; i < TX && made + i < n; i++) {
        const id = newId('dek');
        const material = randomBytes(32);
        const blob = seal(kek.key, kek.row.id, 1, dekContext(svmUuid, id, 1), material);
        ids.push(id);
        blobs.push(blob);
        if ((made + i) % every === 0 && sample.length < SAMPLE) sample.push({ wrapped: encodeWrapped(id, blob), plaintext: material.toString('base64') });
      }
      await db.transaction().execute(async (tx) => {
        for (let i = 0; i < ids.length; i += STMT) {
          const part = ids.slice(i, i + STMT);
          if (store === 'postgres') {
            await sql`INSERT INTO deks (id, svm_uuid, name, algorithm, length, state, kek_version, wrapped, created_at, updated_at, activated_at)
              SELECT v.id, ${svmUuid}, NULL, 'AES', 256, 'active', 1, v.wrapped, ${now}, ${now}, ${now}
              FROM unnest(${part}::text[], ${blobs.slice(i, i + STMT)}::bytea[]) AS v(id, wrapped)`.execute(tx);
          } else {
            await tx
              .insertInto('deks')
              .values(part.map((id, j) => ({ id, svm_uuid: svmUuid, name: null, algorithm: 'AES', length: 256, state: 'active', kek_version: 1, wrapped: blobs[i + j], created_at: now, updated_at: now, activated_at: now, deactivated_at: null, compromised_at: null, destroyed_at: null })))
              .execute();
          }
        }
      });
      made += ids.length;
    }
    if (store === 'postgres') await sql`ANALYZE deks`.execute(db);
    return { dataDir, storeUrl, pgSchema, token, kmUuid, svmUuid, kek: { id: kek.row.id, key: Buffer.from(kek.key) }, sample, seconds: (performance.now() - t0) / 1000 };
  } catch (e) {
    await app.close();
    await cleanUp({ dataDir, storeUrl, pgSchema } as Seeded);
    throw e;
  } finally {
    await app.close();
  }
}

// ---------------------------------------------------------------- 2. the bare loop

async function bareLoop(s: Seeded, batch: number): Promise<{ seconds: number; perSec: number; n: number }> {
  const reseal = (id: string, blob: Buffer) => {
    const plain = open(s.kek.key, dekContext(s.svmUuid, id, 1), blob);
    if (!plain) throw new Error(`bare loop: ${id} does not open`);
    const out = seal(s.kek.key, s.kek.id, 1, dekContext(s.svmUuid, id, 1), plain);
    plain.fill(0);
    return out;
  };
  let n = 0;
  const t0 = performance.now();
  if (!s.pgSchema) {
    const db = new SQLite(s.storeUrl.replace(/^sqlite:/, ''));
    // As Keysmith's store opens it.
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    const read = db.prepare('SELECT id, wrapped, kek_version FROM deks WHERE svm_uuid = ? AND id > ? AND kek_version = 1 AND wrapped IS NOT NULL ORDER BY id LIMIT ?');
    const write = db.prepare('UPDATE deks SET wrapped = ? WHERE id = ? AND kek_version = 1 AND wrapped IS NOT NULL');
    const step = db.transaction((after: string) => {
      const rows = read.all(s.svmUuid, after, batch) as { id: string; wrapped: Buffer }[];
      for (const r of rows) write.run(reseal(r.id, r.wrapped), r.id);
      return rows;
    });
    try {
      for (let after = ''; ; ) {
        const rows = step(after);
        if (rows.length === 0) break;
        n += rows.length;
        after = rows[rows.length - 1].id;
      }
    } finally {
      db.close();
    }
  } else {
    const c = new pg.Client({ connectionString: s.storeUrl, options: `-c search_path=${s.pgSchema}` });
    await c.connect();
    try {
      for (let after = ''; ; ) {
        await c.query('BEGIN');
        const rows = (await c.query('SELECT id, wrapped FROM deks WHERE svm_uuid = $1 AND id > $2 AND kek_version = 1 AND wrapped IS NOT NULL ORDER BY id LIMIT $3', [s.svmUuid, after, batch])).rows as { id: string; wrapped: Buffer }[];
        if (rows.length === 0) {
          await c.query('COMMIT');
          break;
        }
        const params: unknown[] = [rows[0].id, rows[rows.length - 1].id];
        const values = rows.map((r, i) => {
          params.push(r.id, reseal(r.id, r.wrapped));
          return `($${3 + 2 * i}::text, $${4 + 2 * i}::bytea)`;
        });
        await c.query(`UPDATE deks AS d SET wrapped = v.wrapped FROM (VALUES ${values.join(', ')}) AS v(id, wrapped) WHERE d.id = v.id AND d.kek_version = 1 AND d.wrapped IS NOT NULL AND d.id BETWEEN $1 AND $2`, params);
        await c.query('COMMIT');
        n += rows.length;
        after = rows[rows.length - 1].id;
      }
    } finally {
      await c.end();
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, perSec: n / seconds, n };
}

// ---------------------------------------------------------------- 3. the real server

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function childEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('KEYSMITH_')) env[k] = v;
  return env;
}

async function startServer(s: Seeded, batch: number | undefined, profileDir?: string): Promise<{ proc: ChildProcess; url: string; stop(): Promise<void> }> {
  const configFile = join(s.dataDir, 'serve.json');
  writeFileSync(
    configFile,
    JSON.stringify({ host: '127.0.0.1', port: 0, dataDir: s.dataDir, store: s.storeUrl, ...(s.pgSchema ? { pgSchema: s.pgSchema } : {}), kdfCost: 14, logLevel: 'warn', bootstrapToken: s.token, ...(batch ? { rekeyBatch: batch } : {}) }),
    { mode: 0o600 },
  );
  const proc = spawn(process.execPath, [...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []), BIN, 'serve', '--config', configFile], { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(proc);
  const exited = new Promise<void>((r) => proc.once('exit', () => (children.delete(proc), r())));
  let err = '';
  const url = await new Promise<string>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`the server did not listen within 60 s: ${err}`)), 60_000);
    proc.stderr!.on('data', (c: Buffer) => {
      err += c.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
    void exited.then(() => rej(new Error(`the server exited before listening: ${err}`)));
  });
  return {
    proc,
    url,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Open-loop unwrap load: one request every 1000/rate ms whatever the answers do, each answer checked. */
function unwrapLoad(url: string, token: string, svm: string, sample: Seeded['sample'], rate: number) {
  const lat: number[] = [];
  let errors = 0;
  const kinds = new Map<string, number>(); // what the errors were, for the report
  let stopped = false;
  const inflight = new Set<Promise<void>>();
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  let i = 0;
  const one = async () => {
    const k = sample[i++ % sample.length];
    const t = performance.now();
    try {
      const r = await fetch(`${url}/api/v1/svms/${svm}/unwrap`, { method: 'POST', headers, body: JSON.stringify({ wrapped: k.wrapped }) });
      const body = (await r.json()) as { plaintext?: string };
      if (r.status === 200 && body.plaintext === k.plaintext) lat.push(performance.now() - t);
      else {
        errors += 1;
        const kind = r.status === 200 ? 'wrong plaintext' : `HTTP ${r.status} ${JSON.stringify(body).slice(0, 120)}`;
        kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      }
    } catch (e) {
      errors += 1;
      const c = (e as { cause?: { code?: string; message?: string } }).cause;
      const kind = `${(e as Error).message}${c ? ` (${c.code ?? c.message})` : ''}`;
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    }
  };
  const loop = (async () => {
    const every = 1000 / rate;
    let next = performance.now();
    while (!stopped) {
      const p = one();
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
      next += every;
      const wait = next - performance.now();
      if (wait > 0) await sleep(wait);
      else await new Promise((r) => setImmediate(r));
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    await Promise.all([...inflight]);
    const sorted = lat.sort((a, b) => a - b);
    const pct = (p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN);
    return { ok: sorted.length, errors, p50: pct(0.5), p99: pct(0.99), max: sorted.length ? sorted[sorted.length - 1] : NaN, kinds: [...kinds].map(([k, n]) => `${n}× ${k}`) };
  };
}

async function keysmithRekey(s: Seeded, opts: RekeyBenchOptions, n: number) {
  const server = await startServer(s, opts.batch, opts.profileDir);
  const pid = server.proc.pid!;
  const headers = { authorization: `Bearer ${s.token}` };
  const get = async (path: string) => (await (await fetch(server.url + path, { headers })).json()) as any;
  try {
    // Warm: one unwrap, so the request path (and the KEK cache) is not first used during the measurement.
    const warm = await fetch(`${server.url}/api/v1/svms/cluster1/unwrap`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ wrapped: s.sample[0].wrapped }) });
    if (warm.status !== 200) throw new Error(`warm-up unwrap answered ${warm.status}`);
    // The same unwrap load for 2 s before the rekey: what the latency is on this machine right now without it.
    const idle = unwrapLoad(server.url, s.token, 'cluster1', s.sample, opts.unwrapRate ?? 200);
    await sleep(2000);
    const idleUnwraps = await idle();
    const startRss = statusKb(pid, 'VmRSS');
    writeFileSync(`/proc/${pid}/clear_refs`, '5'); // resets VmHWM: the peak from here on
    const stopLoad = unwrapLoad(server.url, s.token, 'cluster1', s.sample, opts.unwrapRate ?? 200);
    const busy0 = machineBusyTicks();
    const self0 = procTicks('self');
    const server0 = procTicks(pid);
    const t0 = performance.now();
    const r = await fetch(`${server.url}/api/security/key-managers/${s.kmUuid}/rekey-internal?return_timeout=0`, { method: 'POST', headers });
    const started = (await r.json()) as any;
    if (r.status !== 202) throw new Error(`rekey answered ${r.status}: ${JSON.stringify(started)}`);
    let job: any;
    const rssCurve: number[] = [];
    let slowestPollMs = 0;
    for (;;) {
      const tp = performance.now();
      job = await get(`/api/cluster/jobs/${started.job.uuid}`);
      slowestPollMs = Math.max(slowestPollMs, performance.now() - tp);
      const total = job.progress?.total || n;
      while (rssCurve.length < 4 && (job.progress?.done ?? 0) >= (total * (rssCurve.length + 1)) / 4) rssCurve.push(statusKb(pid, 'VmRSS') / 1024);
      if (job.state === 'success' || job.state === 'failure') break;
      if (performance.now() - t0 > 600_000) throw new Error(`the rekey did not end in 10 minutes: ${JSON.stringify(job)}`);
      await sleep(50);
    }
    const seconds = (performance.now() - t0) / 1000;
    const busy = machineBusyTicks() - busy0;
    const serverTicks = procTicks(pid) - server0;
    const selfTicks = procTicks('self') - self0;
    const unwraps = await stopLoad();
    const peakRssMb = statusKb(pid, 'VmHWM') / 1024;
    if (job.state !== 'success' || job.progress.done !== n) throw new Error(`the rekey ended ${job.state} with progress ${JSON.stringify(job.progress)}: ${job.message}`);
    const jobSeconds = (Date.parse(job.end_time) - Date.parse(job.start_time)) / 1000;
    // Every seeded key is under the new version, and the wrapped forms clients hold still unwrap.
    const check = await fetch(`${server.url}/api/v1/svms/cluster1/unwrap-batch`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ wrapped: s.sample.map((x) => x.wrapped) }) });
    const records = ((await check.json()) as any).records as { plaintext?: string }[];
    const wrong = records.filter((rec, i) => rec.plaintext !== s.sample[i].plaintext).length;
    if (check.status !== 200 || wrong > 0) throw new Error(`after the rekey, ${wrong} of ${s.sample.length} sampled keys did not unwrap`);
    return {
      seconds,
      jobSeconds,
      perSec: n / seconds,
      peakRssMb,
      startRssMb: startRss / 1024,
      unwraps,
      rssCurve,
      slowestPollMs,
      idleUnwraps,
      otherCpuPct: (Math.max(0, busy - serverTicks - selfTicks) / ((seconds * 100) * cpus().length)) * 100,
      serverCpuPct: (serverTicks / (seconds * 100)) * 100,
    };
  } finally {
    await server.stop();
  }
}

async function countUnder(s: Seeded): Promise<Record<number, number>> {
  const out: Record<number, number> = {};
  if (!s.pgSchema) {
    const db = new SQLite(s.storeUrl.replace(/^sqlite:/, ''), { readonly: true });
    try {
      for (const r of db.prepare('SELECT kek_version AS v, count(*) AS n FROM deks WHERE svm_uuid = ? GROUP BY kek_version').all(s.svmUuid) as { v: number; n: number }[]) out[r.v] = r.n;
    } finally {
      db.close();
    }
  } else {
    const c = new pg.Client({ connectionString: s.storeUrl, options: `-c search_path=${s.pgSchema}` });
    await c.connect();
    try {
      for (const r of (await c.query('SELECT kek_version AS v, count(*)::int AS n FROM deks WHERE svm_uuid = $1 GROUP BY kek_version', [s.svmUuid])).rows) out[r.v] = r.n;
    } finally {
      await c.end();
    }
  }
  return out;
}

async function cleanUp(s: Seeded) {
  rmSync(s.dataDir, { recursive: true, force: true });
  if (s.pgSchema) {
    const c = new pg.Client({ connectionString: s.storeUrl });
    await c.connect();
    try {
      await c.query(`DROP SCHEMA IF EXISTS ${s.pgSchema} CASCADE`);
    } finally {
      await c.end();
    }
  }
}

// ---------------------------------------------------------------- the run

export async function runRekeyBench(opts: RekeyBenchOptions = {}): Promise<RekeyRun[]> {
  if (!existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) throw new Error('build first: npx tsc -p tsconfig.json');
  const sizes = opts.sizes ?? [100_000, 1_000_000];
  const stores: ('sqlite' | 'postgres')[] = [...(opts.sqlite === false ? [] : (['sqlite'] as const)), ...(opts.pgUrl ? (['postgres'] as const) : [])];
  const runs: RekeyRun[] = [];
  for (const store of stores) {
    for (const n of sizes) {
      process.stderr.write(`rekey ${store} ${fmt(n)} DEKs: seeding…\n`);
      const s = await seed(store, n, opts.pgUrl);
      try {
        process.stderr.write(`  seeded in ${s.seconds.toFixed(1)} s; bare loop…\n`);
        const bare = await bareLoop(s, opts.bareBatch ?? opts.batch ?? 1000);
        if (bare.n !== n) throw new Error(`the bare loop re-wrapped ${bare.n} of ${n} keys`);
        process.stderr.write(`  bare loop ${fmt(bare.perSec)} DEKs/s (${bare.seconds.toFixed(1)} s); Keysmith rekey…\n`);
        const k = await keysmithRekey(s, opts, n);
        const counts = await countUnder(s);
        if (counts[2] !== n || Object.keys(counts).length !== 1) throw new Error(`after the rekey the store holds ${JSON.stringify(counts)}, not ${n} keys under version 2`);
        process.stderr.write(`  Keysmith ${fmt(k.perSec)} DEKs/s (${k.seconds.toFixed(1)} s), peak RSS ${k.peakRssMb.toFixed(0)} MB (RSS at 25/50/75/100%: ${k.rssCurve.map((x) => x.toFixed(0)).join('/')} MB), slowest job poll ${k.slowestPollMs.toFixed(0)} ms, ${k.unwraps.ok} unwraps served (${k.unwraps.errors} errors, p99 ${k.unwraps.p99.toFixed(1)} ms)${k.unwraps.kinds.length ? `; errors: ${k.unwraps.kinds.slice(0, 3).join('; ')}` : ''}\n`);
        runs.push({
          store,
          keys: n,
          seedSeconds: s.seconds,
          bare: { seconds: bare.seconds, perSec: bare.perSec },
          keysmith: { seconds: k.seconds, perSec: k.perSec, jobSeconds: k.jobSeconds, batch: opts.batch ? String(opts.batch) : 'default' },
          ratio: k.perSec / bare.perSec,
          peakRssMb: k.peakRssMb,
          startRssMb: k.startRssMb,
          unwraps: k.unwraps,
          rssCurve: k.rssCurve,
          idleUnwraps: { p50: k.idleUnwraps.p50, p99: k.idleUnwraps.p99, errors: k.idleUnwraps.errors },
          slowestPollMs: k.slowestPollMs,
          otherCpuPct: k.otherCpuPct,
          serverCpuPct: k.serverCpuPct,
        });
      } finally {
        await cleanUp(s);
      }
    }
  }
  return runs;
}

export function formatRekey(runs: RekeyRun[]): string {
  const head = ['store', 'DEKs', 'bare DEKs/s', 'Keysmith DEKs/s', 'ratio', 'seconds', 'job s', 'peak RSS MB', 'unwraps ok', 'errors', 'p50 ms', 'p99 ms', 'idle p50/p99', 'max poll ms', 'server CPU', 'other CPU'];
  const body = runs.map((r) => [
    r.store,
    fmt(r.keys),
    fmt(r.bare.perSec),
    fmt(r.keysmith.perSec),
    `${r.ratio.toFixed(2)}×`,
    r.keysmith.seconds.toFixed(2),
    r.keysmith.jobSeconds.toFixed(2),
    r.peakRssMb.toFixed(0),
    fmt(r.unwraps.ok),
    String(r.unwraps.errors),
    r.unwraps.p50.toFixed(1),
    r.unwraps.p99.toFixed(1),
    `${r.idleUnwraps.p50.toFixed(1)}/${r.idleUnwraps.p99.toFixed(1)}`,
    r.slowestPollMs.toFixed(0),
    r.serverCpuPct === undefined ? '—' : `${r.serverCpuPct.toFixed(0)}%`,
    r.otherCpuPct === undefined ? '—' : `${r.otherCpuPct.toFixed(0)}%`,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  const out = [line(head), w.map((x) => '-'.repeat(x)).join('  '), ...body.map(line)];

  const targets: string[] = [];
  for (const store of ['sqlite', 'postgres'] as const) {
    const mine = runs.filter((r) => r.store === store);
    if (mine.length === 0) continue;
    const big = mine.reduce((a, b) => (b.keys > a.keys ? b : a));
    const small = mine.reduce((a, b) => (b.keys < a.keys ? b : a));
    const mark = (ok: boolean) => (ok ? 'PASS' : 'MISS');
    if (big.keys >= 1_000_000) targets.push(`  ${mark(big.keysmith.seconds <= TARGET_SECONDS[store])}  ${store}: ${fmt(big.keys)} DEKs in ${big.keysmith.seconds.toFixed(1)} s (target ≤ ${TARGET_SECONDS[store]} s)`);
    targets.push(`  ${mark(big.ratio >= TARGET_RATIO)}  ${store}: Keysmith ÷ bare loop at ${fmt(big.keys)} DEKs ${big.ratio.toFixed(2)}× (target ≥ ${TARGET_RATIO}×)`);
    const served = mine.every((r) => r.unwraps.errors === 0 && r.unwraps.ok > 0);
    targets.push(`  ${mark(served)}  ${store}: unwraps served throughout (${mine.map((r) => `${fmt(r.unwraps.ok)} ok / ${r.unwraps.errors} errors`).join(', ')})`);
    // Flat: within 10% (or 16 MB) of the small run's peak; the heap's own noise is of that order.
    if (big !== small) {
      const flat = big.peakRssMb <= Math.max(small.peakRssMb * 1.1, small.peakRssMb + 16);
      targets.push(`  ${mark(flat)}  ${store}: peak RSS ${small.peakRssMb.toFixed(0)} MB at ${fmt(small.keys)} → ${big.peakRssMb.toFixed(0)} MB at ${fmt(big.keys)} (target: no growth)`);
    }
  }
  const notes = runs.filter((r) => r.unwraps.kinds.length).map((r) => `  ${r.store} ${fmt(r.keys)}: unwrap errors ${r.unwraps.kinds.slice(0, 3).join('; ')}`);
  const curves = runs.map((r) => `  ${r.store} ${fmt(r.keys)}: RSS at 25/50/75/100% of the keys ${r.rssCurve.map((x) => x.toFixed(0)).join(' / ')} MB (${r.startRssMb.toFixed(0)} MB before)`);
  return [...out, '', ...curves, ...notes, '', 'targets:', ...targets].join('\n');
}

// Standalone: node dist/bench/rekey.js …
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      keys: { type: 'string', default: '100000,1000000' },
      pg: { type: 'string' },
      'no-sqlite': { type: 'boolean', default: false },
      batch: { type: 'string' },
      'bare-batch': { type: 'string' },
      'unwrap-rate': { type: 'string', default: '200' },
      profile: { type: 'string' },
    },
  });
  runRekeyBench({
    sizes: values.keys!.split(',').map(Number),
    pgUrl: values.pg,
    sqlite: !values['no-sqlite'],
    batch: values.batch ? Number(values.batch) : undefined,
    bareBatch: values['bare-batch'] ? Number(values['bare-batch']) : undefined,
    unwrapRate: Number(values['unwrap-rate']),
    profileDir: values.profile,
  })
    .then((runs) => {
      const cpu = cpus();
      console.log(`\nKeysmith rekey-internal benchmark — node ${process.version}, ${cpu.length} × ${cpu[0]?.model ?? 'cpu'}`);
      console.log(formatRekey(runs));
    })
    .catch((e: unknown) => {
      console.error(`rekey bench failed: ${e instanceof Error ? e.stack : String(e)}`);
      process.exitCode = 1;
    });
}
