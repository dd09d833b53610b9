/**
 * `npm run bench`: authenticated, audited unwrap over HTTP, beside two ceilings measured in the
 * same run on the same machine — a bare Fastify JSON POST route, and raw AES-256-GCM unwraps on
 * one core.
 *
 * Each server runs in its own child process (one at a time), and autocannon loads it from this
 * process, so on a 2-core machine the server and the load generator each get a core, and the bare
 * route and Keysmith are measured the same way. A miss against a target is reported, never turned
 * into a failing exit code; only a broken harness (a server that does not start, wrong plaintext)
 * exits non-zero.
 *
 * Options:
 *   --duration S     measured seconds per scenario (default 6)
 *   --warmup S       unmeasured seconds before each scenario (default 1)
 *   --keys N         data keys created before the run (default 2000)
 *   --batch N        wrapped keys per unwrap-batch request (default 1000)
 *   --store URL      Keysmith's store: a postgres:// URL (default: SQLite in a temp directory)
 *   --only LIST      some of: crypto,bare,unwrap,batch,create,rekey,kmip (default: all); unwrap includes an auth-only GET for attribution
 *                    kmip: KMIP Create/Get @1/@8 against Keysmith's KMIP server and pykmip-server (bench/kmip.ts)
 *   --rekey-keys L   DEK counts for the rekey group (default 100000,1000000); SQLite, and PostgreSQL with --store (bench/rekey.ts)
 *   --profile        CPU-profile the server during each measured scenario (bare @50 and Keysmith) and summarize
 *   --out DIR        where profiles and results.json go (default: a temp directory)
 *   --keep           keep the temp data directory
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import autocannon, { type Request } from 'autocannon';
import { open, seal } from '../src/crypto/aead.js';
import { dekContext, decodeWrapped, encodeWrapped } from '../src/hierarchy/dek-service.js';
import { newId } from '../src/ids.js';
import { formatSummary, summarize, type CpuProfile } from './profile-summary.js';
import { formatRekey, runRekeyBench, type RekeyRun } from './rekey.js';
import { formatKmipGroup, runKmipGroup, type KmipGroupRow } from './kmip.js';

const here = dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '6' },
    warmup: { type: 'string', default: '1' },
    keys: { type: 'string', default: '2000' },
    batch: { type: 'string', default: '1000' },
    store: { type: 'string' },
    only: { type: 'string', default: 'crypto,bare,unwrap,batch,create,rekey,kmip' },
    'rekey-keys': { type: 'string', default: '100000,1000000' },
    profile: { type: 'boolean', default: false },
    out: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const DURATION = Number(args.duration);
const WARMUP = Number(args.warmup);
const N_KEYS = Number(args.keys);
const BATCH = Math.min(Number(args.batch), N_KEYS);
const ONLY = new Set(args.only!.split(',').map((s) => s.trim()));
if (args.store && !/^postgres(ql)?:\/\//.test(args.store)) throw new Error('--store takes a postgres:// URL (SQLite is the default)');

const TARGET_RATIO = 0.5;
const TARGET_P99_MS = 10;
const TARGET_BATCH_KEYS_S = 100_000;

// ---------------------------------------------------------------- children, always reaped

interface Child {
  proc: ChildProcess;
  ready: Record<string, any>;
  command(cmd: Record<string, unknown>): Promise<Record<string, any>>;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
const killAll = () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
};
/** Temp directories to remove however the run ends. */
const scratch = new Set<string>();
const cleanUp = () => {
  killAll();
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
  scratch.clear();
};
process.on('exit', cleanUp);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    cleanUp();
    process.exit(130);
  });
}

async function startChild(script: string, argv: string[], label: string): Promise<Child> {
  const proc = spawn(process.execPath, [join(here, script), ...argv], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  const lines = createInterface({ input: proc.stdout! });
  const waiting: ((msg: Record<string, any>) => void)[] = [];
  let onReady: ((msg: Record<string, any>) => void) | null = null;
  lines.on('line', (line) => {
    let msg: Record<string, any>;
    try {
      msg = JSON.parse(line) as Record<string, any>;
    } catch {
      process.stderr.write(`[${label}] ${line}\n`);
      return;
    }
    if (msg.ready && onReady) {
      onReady(msg);
      onReady = null;
    } else waiting.shift()?.(msg);
  });
  const ready = await new Promise<Record<string, any>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label} did not start within 180 s`)), 180_000);
    onReady = (m) => {
      clearTimeout(timer);
      resolve(m);
    };
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited before it was ready (code ${code}, signal ${signal})`));
    });
  });
  const command = (cmd: Record<string, unknown>) =>
    new Promise<Record<string, any>>((resolve, reject) => {
      waiting.push((m) => (m.ok ? resolve(m) : reject(new Error(`${label}: ${m.error}`))));
      proc.stdin!.write(JSON.stringify(cmd) + '\n');
    });
  const stop = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.stdin!.end(); // the lifeline: the child shuts down cleanly when its stdin closes
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  };
  return { proc, ready, command, stop };
}

interface Measured {
  scenario: string;
  connections: number;
  rps: number;
  p50: number;
  p99: number;
  keysPerSec?: number;
  ok: number;
  bad: number;
  seconds: number;
  /** Share of the machine's CPU used by processes other than this bench and its server, while measuring. */
  otherCpuPct?: number;
  /** The server's CPU use while measuring, as a share of one core. */
  serverCpuPct?: number;
  /** Server CPU time per 2xx response, in microseconds. */
  serverUsPerReq?: number;
}

// ---------------------------------------------------------------- CPU accounting (Linux /proc): the server's and everyone else's

function procTicks(pid: number | 'self'): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
  return Number(rest[11]) + Number(rest[12]); // utime + stime
}

function machineBusyTicks(): number {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = cpu;
  return user + nice + system + irq + softirq + steal;
}

interface CpuShare {
  /** Share of all cores used by processes other than this bench and the server under test. */
  otherPct: number;
  /** The server's CPU time as a share of one core (100 = one core saturated). */
  serverPct: number;
  serverSeconds: number;
}

/** Starts a CPU account for the machine and the server process; call the result to close it. */
function cpuAccount(serverPid?: number): () => CpuShare | undefined {
  try {
    const t0 = performance.now();
    const busy0 = machineBusyTicks();
    const self0 = procTicks('self');
    const server0 = serverPid ? procTicks(serverPid) : 0;
    return () => {
      try {
        const secs = (performance.now() - t0) / 1000;
        const busy = machineBusyTicks() - busy0;
        const server = (serverPid ? procTicks(serverPid) : 0) - server0;
        const ours = procTicks('self') - self0 + server;
        // /proc counts in USER_HZ ticks, 100 per second on Linux.
        return { otherPct: Math.max(0, busy - ours) / (secs * cpus().length), serverPct: server / secs, serverSeconds: server / 100 };
      } catch {
        return undefined;
      }
    };
  } catch {
    return () => undefined;
  }
}

// ---------------------------------------------------------------- load generation

/** One autocannon run. Latency is recorded here for every 2xx response, unrounded (autocannon's own histogram rounds to whole ms). */
function load(url: string, connections: number, seconds: number, requests: Request[]): Promise<Omit<Measured, 'scenario' | 'connections' | 'keysPerSec'>> {
  return new Promise((resolve, reject) => {
    let lat = new Float64Array(1 << 16);
    let ok = 0;
    let bad = 0;
    let first = 0n;
    let last = 0n;
    const inst = autocannon({ url, connections, duration: seconds, requests, timeout: 10 }, (err, res) => {
      if (err) return reject(err);
      const n = ok;
      const sorted = lat.subarray(0, n).sort();
      const pct = (p: number) => (n === 0 ? NaN : sorted[Math.min(n - 1, Math.floor((p / 100) * n))]);
      const span = Number(last - first) / 1e9;
      resolve({ rps: n > 1 && span > 0 ? (n - 1) / span : 0, p50: pct(50), p99: pct(99), ok: n, bad: bad + res.errors + res.timeouts, seconds: span });
    });
    inst.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      const t = process.hrtime.bigint();
      if (first === 0n) first = t;
      last = t;
      if (status < 200 || status >= 300) {
        bad += 1;
        return;
      }
      if (ok === lat.length) {
        const bigger = new Float64Array(lat.length * 2);
        bigger.set(lat);
        lat = bigger;
      }
      lat[ok++] = ms;
    });
  });
}

/** Seconds per slice of the paired measurement, and how many rounds (bare slice + unwrap slice). */
const PAIR_SLICE_S = 2;
const PAIR_ROUNDS = 7;

interface Paired {
  rounds: number;
  bareRps: number;
  unwrapRps: number;
  perRound: number[];
  median: number;
  bad: number;
}

/**
 * The unwrap ÷ bare ratio at 50 connections, measured in alternating short slices (both servers
 * up, one loaded at a time). On a VM whose speed drifts by tens of percent from one minute to the
 * next, two scenarios measured minutes apart give a ratio that swings with the drift; slices a few
 * seconds apart see nearly the same machine. Each round's ratio is kept; the median is the figure.
 */
async function pairedRatio(bareUrl: string, bareReqs: Request[], ksUrl: string, ksReqs: Request[]): Promise<Paired> {
  process.stderr.write(`  paired @50: ${PAIR_ROUNDS} rounds of ${PAIR_SLICE_S} s each…\n`);
  const perRound: number[] = [];
  let bareOk = 0;
  let bareS = 0;
  let ksOk = 0;
  let ksS = 0;
  let bad = 0;
  for (let i = 0; i < PAIR_ROUNDS; i++) {
    const b = await load(bareUrl, 50, PAIR_SLICE_S, bareReqs);
    const k = await load(ksUrl, 50, PAIR_SLICE_S, ksReqs);
    perRound.push(k.rps / b.rps);
    bareOk += b.ok;
    bareS += b.seconds;
    ksOk += k.ok;
    ksS += k.seconds;
    bad += b.bad + k.bad;
  }
  const sorted = [...perRound].sort((a, b) => a - b);
  return { rounds: PAIR_ROUNDS, bareRps: bareOk / bareS, unwrapRps: ksOk / ksS, perRound, median: sorted[Math.floor(sorted.length / 2)], bad };
}

async function scenario(
  name: string,
  url: string,
  connections: number,
  requests: Request[],
  child: Child,
  opts: { keysPerRequest?: number; profileFile?: string } = {},
): Promise<Measured> {
  if (WARMUP > 0) await load(url, connections, WARMUP, requests);
  if (opts.profileFile) await child.command({ cmd: 'profile-start' });
  const account = cpuAccount(child.proc.pid!);
  const m = await load(url, connections, DURATION, requests);
  const cpu = account();
  const otherCpuPct = cpu?.otherPct;
  if (opts.profileFile) await child.command({ cmd: 'profile-stop', file: opts.profileFile });
  const out: Measured = {
    scenario: name,
    connections,
    ...m,
    ...(opts.keysPerRequest ? { keysPerSec: m.rps * opts.keysPerRequest } : {}),
    otherCpuPct,
    serverCpuPct: cpu?.serverPct,
    serverUsPerReq: cpu && m.ok > 0 ? (cpu.serverSeconds * 1e6) / m.ok : undefined,
  };
  process.stderr.write(`  ${name} @${connections}: ${fmtInt(out.rps)} req/s, p50 ${out.p50.toFixed(2)} ms, p99 ${out.p99.toFixed(2)} ms${out.bad ? `, ${out.bad} errors` : ''}${otherCpuPct !== undefined ? `, other processes ${otherCpuPct.toFixed(0)}% CPU` : ''}\n`);
  return out;
}

// ---------------------------------------------------------------- in-process crypto ceilings

function opsPerSec(seconds: number, op: (i: number) => unknown): number {
  for (let i = 0; i < 20_000; i++) op(i); // warm up the JIT
  const end = performance.now() + seconds * 1000;
  let n = 0;
  const t0 = performance.now();
  while (performance.now() < end) for (let j = 0; j < 1024; j++) op(n++);
  return n / ((performance.now() - t0) / 1000);
}

function cryptoCeilings(seconds: number) {
  const kek = randomBytes(32);
  const svm = '00000000-0000-4000-8000-000000000001';
  const N = 1024;
  const account = cpuAccount();
  // Raw: exactly the node:crypto calls of one unwrap, with precomputed inputs.
  const raw = Array.from({ length: N }, () => {
    const iv = randomBytes(12);
    const aad = randomBytes(96);
    const c = createCipheriv('aes-256-gcm', kek, iv, { authTagLength: 16 });
    c.setAAD(aad);
    const ct = Buffer.concat([c.update(randomBytes(32)), c.final()]);
    return { iv, aad, ct, tag: c.getAuthTag() };
  });
  const rawOps = opsPerSec(seconds, (i) => {
    const b = raw[i & (N - 1)];
    const d = createDecipheriv('aes-256-gcm', kek, b.iv, { authTagLength: 16 });
    d.setAAD(b.aad);
    d.setAuthTag(b.tag);
    d.update(b.ct);
    return d.final();
  });
  // Keysmith's own code paths, for comparison: aead.open(), and decodeWrapped() + open() as dek-service runs them per key.
  const wrapped = Array.from({ length: N }, () => {
    const id = newId('dek');
    return encodeWrapped(id, seal(kek, newId('kek'), 1, dekContext(svm, id, 1), randomBytes(32)));
  });
  const decoded = wrapped.map((w) => decodeWrapped(w)!);
  const openOps = opsPerSec(seconds, (i) => {
    const p = decoded[i & (N - 1)];
    return open(kek, dekContext(svm, p.dekId, p.kekVersion), p.blob);
  });
  const fullOps = opsPerSec(seconds, (i) => {
    const p = decodeWrapped(wrapped[i & (N - 1)])!;
    return open(kek, dekContext(svm, p.dekId, p.kekVersion), p.blob);
  });
  if (!open(kek, dekContext(svm, decoded[0].dekId, 1), decoded[0].blob)) throw new Error('crypto self-check failed');
  return { rawOps, openOps, fullOps, otherCpuPct: account()?.otherPct };
}

// ---------------------------------------------------------------- output

const fmtInt = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '—' : Math.round(n).toLocaleString('en-US'));
const fmtMs = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '—');
const mark = (ok: boolean) => (ok ? 'PASS' : 'MISS');

function table(rows: Measured[]): string {
  const head = ['scenario', 'conns', 'req/s', 'p50 ms', 'p99 ms', 'keys/s', 'errors', 'server CPU', 'µs CPU/req', 'other CPU'];
  const pct = (n: number | undefined) => (n === undefined ? '—' : `${n.toFixed(0)}%`);
  const body = rows.map((r) => [r.scenario, String(r.connections), fmtInt(r.rps), fmtMs(r.p50), fmtMs(r.p99), fmtInt(r.keysPerSec), String(r.bad), pct(r.serverCpuPct), fmtInt(r.serverUsPerReq), pct(r.otherCpuPct)]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...body.map(line)].join('\n');
}

// ---------------------------------------------------------------- the run

async function main(): Promise<void> {
  const outDir = args.out ?? mkdtempSync(join(tmpdir(), 'keysmith-bench-out-'));
  mkdirSync(outDir, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), 'keysmith-bench-'));
  if (!args.keep) scratch.add(dataDir);
  const rows: Measured[] = [];
  const profiles: { name: string; file: string }[] = [];
  let crypto: ReturnType<typeof cryptoCeilings> | undefined;
  let seed: { keys: number; ms: number; dialect: string } | undefined;
  let rekeyRuns: RekeyRun[] = [];
  let kmipRows: KmipGroupRow[] = [];
  let paired: Paired | undefined;
  const cpu = cpus();
  console.log(`Keysmith benchmark — node ${process.version}, ${cpu.length} × ${cpu[0]?.model ?? 'cpu'}; ${DURATION} s per scenario after ${WARMUP} s warm-up`);
  const quiet = cpuAccount();
  await new Promise((r) => setTimeout(r, 1000));
  const before = quiet()?.otherPct;
  if (before !== undefined) console.log(`other processes used ${before.toFixed(0)}% of the machine in the second before the run${before > 10 ? ': figures will be low and noisy' : ''}`);

  try {
    if (ONLY.has('crypto')) {
      process.stderr.write('measuring the in-process crypto ceilings…\n');
      crypto = cryptoCeilings(Math.min(DURATION, 2));
    }

    let bare: Child | undefined;
    const bareBody = JSON.stringify({ wrapped: 'x'.repeat(124) });
    const bareReq: Request[] = [{ method: 'POST', path: '/unwrap', headers: { 'content-type': 'application/json' }, body: bareBody }];
    if (ONLY.has('bare')) {
      process.stderr.write('bare Fastify route…\n');
      bare = await startChild('bare-server.js', [], 'bare server');
      const body = bareBody;
      const req = bareReq;
      const probe = await fetch(bare.ready.url + '/unwrap', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      if (probe.status !== 200) throw new Error(`bare route answered ${probe.status}`);
      const bareProfile = args.profile ? join(outDir, 'bare-c50.cpuprofile') : undefined;
      rows.push(await scenario('bare Fastify POST', bare.ready.url, 1, req, bare));
      rows.push(await scenario('bare Fastify POST', bare.ready.url, 50, req, bare, { profileFile: bareProfile }));
      if (bareProfile) profiles.push({ name: 'bare Fastify POST @50 (the bare server, not Keysmith)', file: bareProfile });
      // Kept (idle) for the paired measurement below; stopped after it.
      if (!ONLY.has('unwrap') || args.profile) {
        await bare.stop();
        bare = undefined;
      }
    }

    if (ONLY.has('unwrap') || ONLY.has('batch') || ONLY.has('create')) {
      process.stderr.write(`Keysmith server: ${args.store ? 'PostgreSQL' : 'SQLite'}, creating ${N_KEYS} data keys…\n`);
      const ks = await startChild('server.js', ['--data-dir', dataDir, '--keys', String(N_KEYS), ...(args.store ? ['--store', args.store] : [])], 'keysmith server');
      const { url, token, svm } = ks.ready as { url: string; token: string; svm: string };
      const wrapped = ks.ready.wrapped as string[];
      seed = { keys: wrapped.length, ms: ks.ready.seedMs as number, dialect: ks.ready.dialect as string };
      process.stderr.write(`  ${seed.keys} keys created in ${(seed.ms / 1000).toFixed(1)} s (${fmtInt(seed.keys / (seed.ms / 1000))} keys/s, 8 at a time, over HTTP)\n`);
      const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` };
      const post = async (path: string, body: unknown) => {
        const r = await fetch(url + path, { method: 'POST', headers, body: JSON.stringify(body) });
        return { status: r.status, body: (await r.json()) as any };
      };
      const prof = (name: string) => (args.profile ? join(outDir, `${name}.cpuprofile`) : undefined);
      const profiled = (name: string, file: string | undefined) => file && profiles.push({ name, file });

      // Correctness first: a fast wrong answer is no answer.
      for (const c of ks.ready.check as { wrapped: string; plaintext: string }[]) {
        const r = await post(`/api/v1/svms/${svm}/unwrap`, { wrapped: c.wrapped });
        if (r.status !== 200 || r.body.plaintext !== c.plaintext) throw new Error(`unwrap self-check failed: ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`);
      }

      if (ONLY.has('unwrap')) {
        // Attribution: the same server's authenticated path with no store and no audit.
        rows.push(await scenario('whoami (auth only, GET)', url, 50, [{ method: 'GET', path: '/api/v1/auth/whoami', headers: { authorization: headers.authorization } }], ks, { profileFile: prof('whoami-c50') }));
        profiled('whoami @50', prof('whoami-c50'));
        const path = `/api/v1/svms/${svm}/unwrap`;
        const reqs: Request[] = wrapped.map((w) => ({ method: 'POST', path, headers, body: JSON.stringify({ wrapped: w }) }));
        rows.push(await scenario('unwrap (auth + audit)', url, 1, reqs, ks, { profileFile: prof('unwrap-c1') }));
        profiled('unwrap @1', prof('unwrap-c1'));
        rows.push(await scenario('unwrap (auth + audit)', url, 50, reqs, ks, { profileFile: prof('unwrap-c50') }));
        profiled('unwrap @50', prof('unwrap-c50'));
        if (bare) {
          paired = await pairedRatio(bare.ready.url, bareReq, url, reqs);
          await bare.stop();
          bare = undefined;
        }
      }

      if (ONLY.has('batch')) {
        const path = `/api/v1/svms/${svm}/unwrap-batch`;
        // Several different batches, each a window over the seeded keys.
        const nBatches = Math.max(1, Math.min(8, Math.floor(wrapped.length / BATCH) * 4));
        const batches = Array.from({ length: nBatches }, (_, j) => {
          const start = Math.floor((j * wrapped.length) / nBatches);
          return Array.from({ length: BATCH }, (_, i) => wrapped[(start + i) % wrapped.length]);
        });
        const check = await post(path, { wrapped: batches[0] });
        const good = check.status === 200 ? (check.body.records as { plaintext?: string }[]).filter((r) => typeof r.plaintext === 'string').length : 0;
        if (good !== BATCH) throw new Error(`unwrap-batch self-check failed: ${check.status}, ${good} of ${BATCH} unwrapped`);
        const reqs: Request[] = batches.map((b) => ({ method: 'POST', path, headers, body: JSON.stringify({ wrapped: b }) }));
        rows.push(await scenario(`unwrap-batch ×${BATCH}`, url, 1, reqs, ks, { keysPerRequest: BATCH, profileFile: prof('batch-c1') }));
        profiled('unwrap-batch @1', prof('batch-c1'));
        rows.push(await scenario(`unwrap-batch ×${BATCH}`, url, 4, reqs, ks, { keysPerRequest: BATCH, profileFile: prof('batch-c4') }));
        profiled('unwrap-batch @4', prof('batch-c4'));
      }

      if (ONLY.has('create')) {
        // Last: it grows the store. Each request creates one DEK and commits it with its audit event.
        const reqs: Request[] = [{ method: 'POST', path: `/api/v1/svms/${svm}/keys`, headers, body: '{}' }];
        const m = await scenario('create DEK', url, 16, reqs, ks, { profileFile: prof('create-c16') });
        rows.push({ ...m, keysPerSec: m.rps });
        profiled('create DEK @16', prof('create-c16'));
      }
      await ks.stop();
    }

    if (ONLY.has('rekey')) {
      // Its own stores and server processes (bench/rekey.ts); SQLite, and PostgreSQL with --store.
      rekeyRuns = await runRekeyBench({ sizes: args['rekey-keys']!.split(',').map(Number), pgUrl: args.store });
    }

    if (ONLY.has('kmip')) {
      // Its own server processes (Keysmith's KMIP server, then pykmip-server), same client, same run.
      const k = await runKmipGroup({ durationMs: DURATION * 1000, warmupMs: WARMUP * 1000, store: args.store, profileDir: args.profile ? outDir : undefined });
      kmipRows = k.rows;
      profiles.push(...k.profiles);
    }
  } finally {
    cleanUp();
    if (args.keep) console.log(`data directory kept: ${dataDir}`);
  }

  // ---- report
  if (rekeyRuns.length) console.log(`\nrekey-internal (bench/rekey.ts):\n${formatRekey(rekeyRuns)}`);
  console.log('');
  if (seed) console.log(`store: ${seed.dialect}; ${seed.keys} data keys seeded in ${(seed.ms / 1000).toFixed(1)} s${args.profile ? '; PROFILER ON: Keysmith figures are lower than unprofiled' : ''}`);
  if (rows.length) console.log(table(rows));
  if (crypto) {
    console.log('');
    console.log(`in-process ceilings, one core (this process)${crypto.otherCpuPct !== undefined ? `; other processes used ${crypto.otherCpuPct.toFixed(0)}% of the machine meanwhile` : ''}:`);
    console.log(`  raw node:crypto AES-256-GCM unwrap (32-byte key, AAD)   ${fmtInt(crypto.rawOps).padStart(10)} ops/s`);
    console.log(`  Keysmith aead.open()                                    ${fmtInt(crypto.openOps).padStart(10)} ops/s`);
    console.log(`  Keysmith decodeWrapped() + aead.open() (per-key work)   ${fmtInt(crypto.fullOps).padStart(10)} ops/s`);
  }

  const find = (prefix: string, c: number) => rows.find((r) => r.scenario.startsWith(prefix) && r.connections === c);
  const bare50 = find('bare', 50);
  const unwrap50 = find('unwrap (', 50);
  const batchBest = rows.filter((r) => r.scenario.startsWith('unwrap-batch')).sort((a, b) => (b.keysPerSec ?? 0) - (a.keysPerSec ?? 0))[0];
  const targets: { what: string; value: string; target: string; pass: boolean }[] = [];
  if (paired) {
    console.log('');
    console.log(`paired @50 (${paired.rounds} rounds of ${PAIR_SLICE_S} s bare, ${PAIR_SLICE_S} s unwrap, alternating): bare ${fmtInt(paired.bareRps)} req/s, unwrap ${fmtInt(paired.unwrapRps)} req/s; ratio per round ${paired.perRound.map((r) => r.toFixed(2)).join(' ')}`);
  }
  if (bare50 && unwrap50) {
    const ratio = unwrap50.rps / bare50.rps;
    // Judged on the paired figure when there is one: the two rates measured side by side in short
    // alternating slices, so a machine whose speed drifts between the scenarios moves both alike.
    if (paired) {
      targets.push({ what: 'unwrap@50 ÷ bare@50, paired (median of rounds)', value: paired.median.toFixed(2), target: `≥ ${TARGET_RATIO}`, pass: paired.median >= TARGET_RATIO && unwrap50.bad === 0 && paired.bad === 0 });
      console.log(`sequential scenarios above give ${ratio.toFixed(2)} (one ${DURATION} s run each, minutes apart)`);
    } else targets.push({ what: 'unwrap@50 req/s ÷ bare@50 req/s', value: ratio.toFixed(2), target: `≥ ${TARGET_RATIO}`, pass: ratio >= TARGET_RATIO && unwrap50.bad === 0 });
  }
  if (unwrap50) targets.push({ what: 'unwrap@50 p99', value: `${fmtMs(unwrap50.p99)} ms`, target: `< ${TARGET_P99_MS} ms`, pass: unwrap50.p99 < TARGET_P99_MS && unwrap50.bad === 0 });
  if (batchBest) targets.push({ what: `unwrap-batch keys/s (best, @${batchBest.connections})`, value: fmtInt(batchBest.keysPerSec), target: `≥ ${fmtInt(TARGET_BATCH_KEYS_S)}`, pass: (batchBest.keysPerSec ?? 0) >= TARGET_BATCH_KEYS_S && batchBest.bad === 0 });
  if (kmipRows.length) {
    const k = formatKmipGroup(kmipRows);
    console.log(`\nKMIP (bench/kmip.ts), Keysmith's KMIP client driving each server:\n${k.table}`);
    targets.push(...k.targets);
  }
  if (targets.length) {
    console.log('');
    console.log('targets:');
    const w = Math.max(...targets.map((t) => t.what.length));
    for (const t of targets) console.log(`  ${mark(t.pass)}  ${t.what.padEnd(w)}  ${t.value.padStart(10)}  (target ${t.target})`);
  }
  const busy = rows.filter((r) => (r.otherCpuPct ?? 0) > 10);
  if (args.store) console.log('\nnote: with --store postgres the PostgreSQL server itself counts under "other CPU".');
  if (busy.length) console.log(`\nnote: other processes used more than 10% of the machine during ${busy.map((r) => `${r.scenario} @${r.connections}`).join(', ')}: those figures understate this machine.`);
  if (rows.some((r) => r.bad > 0)) console.log('\nnote: some requests failed (errors column); their scenarios do not count as a PASS.');

  for (const p of profiles) {
    if (!existsSync(p.file)) continue;
    console.log('');
    console.log(formatSummary(summarize(JSON.parse(readFileSync(p.file, 'utf8')) as CpuProfile, 15), `profile during ${p.name} (${p.file})`));
  }
  writeFileSync(join(outDir, 'results.json'), JSON.stringify({ node: process.version, cpus: cpu.length, duration: DURATION, seed, rows, paired, crypto, targets, rekey: rekeyRuns, kmip: kmipRows }, null, 2));
  console.log(`\nresults: ${join(outDir, 'results.json')}`);
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${e instanceof Error ? e.stack : String(e)}`);
  killAll();
  process.exitCode = 1;
});
