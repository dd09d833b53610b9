/**
 * KMIP Create and Get operations per second, driven by Keysmith's own KMIP client over mutual TLS,
 * on 1 connection and on 8 in parallel (8 clients, one connection each).
 *
 * `measureKmip()` works against any KMIP server (the lead's bench/run.ts points it at Keysmith's
 * server and at pykmip-server in the same run). Run directly, this file measures Debian's
 * pykmip-server alone:
 *
 *   npx tsc -p tsconfig.json && node dist/bench/kmip.js [--duration 5] [--warmup 1] [--only create,get]
 *
 * Each Create is an AES-256 key made by the server; each Get reads a Raw AES-256 key that was
 * created before the measurement (one per client). A miss against a target is printed, never an
 * exit code; a broken harness (no server, wrong key length) exits non-zero.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { KmipClient, type KmipClientOptions } from '../src/kmip/client.js';
import type { ProtocolVersion } from '../src/kmip/message.js';
import { makeTestPki, pykmipAvailable, startPykmipServer } from '../src/kmip/testing/pykmip.js';

export interface KmipTarget {
  host: string;
  port: number;
  ca: Buffer | string;
  cert: Buffer | string;
  key: Buffer | string;
  protocolVersion?: ProtocolVersion;
}

export interface KmipBenchResult {
  op: 'create' | 'get';
  connections: number;
  ops: number;
  errors: number;
  seconds: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Runs `op` in a closed loop on `connections` clients for `durationMs` after `warmupMs`. */
export async function measureKmip(
  target: KmipTarget,
  op: 'create' | 'get',
  opts: { connections: number; durationMs: number; warmupMs?: number; onMeasureStart?: () => void },
): Promise<KmipBenchResult> {
  const clientOpts: KmipClientOptions = {
    servers: [{ host: target.host, port: target.port }],
    ca: target.ca,
    cert: target.cert,
    key: target.key,
    protocolVersion: target.protocolVersion,
    timeoutMs: 30_000,
  };
  const clients = Array.from({ length: opts.connections }, () => new KmipClient(clientOpts));
  try {
    // One key per client for Get, created (and the connection opened) before the clock starts.
    const keyIds = await Promise.all(clients.map((c) => c.createAes256()));
    const gets = await Promise.all(clients.map((c, i) => c.get(keyIds[i])));
    if (gets.some((k) => k.keyMaterial.length !== 32)) throw new Error('Get returned a key that is not 32 bytes');

    const warmupEnd = Date.now() + (opts.warmupMs ?? 1000);
    const end = warmupEnd + opts.durationMs;
    const latencies: number[] = [];
    let errors = 0;
    let measuredStart = 0;
    const loop = async (c: KmipClient, keyId: string): Promise<void> => {
      for (;;) {
        const t0 = performance.now();
        const now = Date.now();
        if (now >= end) return;
        try {
          if (op === 'create') await c.createAes256();
          else await c.get(keyId);
          if (now >= warmupEnd) latencies.push(performance.now() - t0);
        } catch {
          if (now >= warmupEnd) errors++;
        }
      }
    };
    const started = Promise.all(clients.map((c, i) => loop(c, keyIds[i])));
    await new Promise((r) => setTimeout(r, Math.max(0, warmupEnd - Date.now())));
    measuredStart = performance.now();
    opts.onMeasureStart?.();
    await started;
    const seconds = (performance.now() - measuredStart) / 1000;
    latencies.sort((a, b) => a - b);
    return {
      op,
      connections: opts.connections,
      ops: latencies.length,
      errors,
      seconds,
      opsPerSec: latencies.length / seconds,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
    };
  } finally {
    for (const c of clients) c.close();
  }
}

export function formatKmipResults(label: string, results: KmipBenchResult[]): string {
  const rows = results.map(
    (r) =>
      `${label.padEnd(14)} ${r.op.padEnd(7)} @${String(r.connections).padEnd(3)} ${r.opsPerSec.toFixed(0).padStart(8)} ops/s   p50 ${r.p50Ms.toFixed(2).padStart(7)} ms   p99 ${r.p99Ms.toFixed(2).padStart(7)} ms   errors ${r.errors}`,
  );
  return rows.join('\n');
}

// ---------------------------------------------------------------- the `kmip` group of bench/run.ts

export interface KmipGroupRow extends KmipBenchResult {
  server: 'keysmith' | 'pykmip';
  /** The server process's CPU while measuring, as a share of one core (Keysmith only). */
  serverCpuPct?: number;
  /** Server CPU time per successful operation, µs (Keysmith only): the least noisy figure. */
  serverUsPerOp?: number;
  /** Share of the machine used by processes other than this bench and Keysmith's server while measuring (Keysmith only). */
  otherCpuPct?: number;
  /** This process's (the client's) CPU time per operation, µs (Keysmith only): on 2 cores the client needs one of them. */
  clientUsPerOp?: number;
}

/** Busy ticks of the whole machine (all cores), from /proc/stat. */
function machineBusyTicks(): number | undefined {
  try {
    const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return user + nice + system + irq + softirq + steal;
  } catch {
    return undefined;
  }
}

/** utime + stime of a process, in USER_HZ ticks (100 per second on Linux). */
function procTicks(pid: number): number | undefined {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]);
  } catch {
    return undefined;
  }
}

/**
 * Keysmith's KMIP server (bench/kmip-server.ts --serve: createApp as `keysmith serve` builds it,
 * onboard key manager configured, the bench's client certificate installed) in a child process
 * that exits when its stdin closes, driven over the child.ts line protocol.
 */
async function startKeysmithKmip(dir: string, store?: string) {
  const script = join(dirname(fileURLToPath(import.meta.url)), 'kmip-server.js');
  const proc = spawn(process.execPath, [script, '--serve', '--dir', dir, ...(store ? ['--store', store] : [])], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: proc.stdout! });
  const waiting: ((m: Record<string, unknown>) => void)[] = [];
  let ready: ((m: Record<string, unknown>) => void) | null = null;
  lines.on('line', (l) => {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(l) as Record<string, unknown>;
    } catch {
      process.stderr.write(`[keysmith kmip] ${l}\n`);
      return;
    }
    if (m.ready && ready) {
      ready(m);
      ready = null;
    } else waiting.shift()?.(m);
  });
  const killOnExit = () => proc.kill('SIGKILL');
  process.once('exit', killOnExit);
  const m = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('Keysmith KMIP server did not start within 180 s')), 180_000);
    ready = (r) => {
      clearTimeout(timer);
      resolve(r);
    };
    proc.once('exit', (c, sig) => {
      clearTimeout(timer);
      reject(new Error(`Keysmith KMIP server exited before it was ready (code ${c}, signal ${sig})`));
    });
  });
  return {
    port: m.port as number,
    pid: proc.pid!,
    command: (cmd: Record<string, unknown>) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        waiting.push((r) => (r.ok ? resolve(r) : reject(new Error(`Keysmith KMIP server: ${String(r.error)}`))));
        proc.stdin!.write(JSON.stringify(cmd) + '\n');
      }),
    async stop() {
      process.off('exit', killOnExit);
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise<void>((r) => proc.once('exit', () => r()));
      proc.stdin!.end();
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * KMIP Create and Get on `connections` (default 1 and 8) against Keysmith's KMIP server and then
 * Debian's pykmip-server, with the same client in the same run. With `profileDir`, Keysmith is
 * CPU-profiled during each measured scenario (its figures then read low).
 */
export async function runKmipGroup(opts: {
  durationMs: number;
  warmupMs: number;
  connections?: number[];
  store?: string;
  profileDir?: string;
  ops?: Array<'create' | 'get'>;
  /** False: Keysmith only (no ratio). */
  pykmip?: boolean;
  log?: (line: string) => void;
}): Promise<{ rows: KmipGroupRow[]; profiles: { name: string; file: string }[]; pykmipMissing: boolean }> {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const conns = opts.connections ?? [1, 8];
  const ops = opts.ops ?? ['create', 'get'];
  const dir = mkdtempSync(join(tmpdir(), 'keysmith-kmip-bench-'));
  const rows: KmipGroupRow[] = [];
  const profiles: { name: string; file: string }[] = [];
  try {
    const pki = makeTestPki(dir);
    const client = { ca: pki.caPem, cert: pki.client.cert, key: pki.client.key };
    log(`KMIP: Keysmith's KMIP server (${opts.store ? 'PostgreSQL' : 'SQLite'})…`);
    const ks = await startKeysmithKmip(dir, opts.store);
    try {
      for (const op of ops)
        for (const n of conns) {
          const file = opts.profileDir ? join(opts.profileDir, `kmip-${op}-c${n}.cpuprofile`) : undefined;
          // The profile also covers the warm-up (measureKmip warms up, then measures, in one call).
          if (file) await ks.command({ cmd: 'profile-start' });
          let t1: number | undefined;
          let m1: { busy?: number; self?: number } = {};
          const r = await measureKmip({ host: '127.0.0.1', port: ks.port, ...client }, op, {
            connections: n,
            durationMs: opts.durationMs,
            warmupMs: opts.warmupMs,
            onMeasureStart: () => {
              t1 = procTicks(ks.pid);
              m1 = { busy: machineBusyTicks(), self: procTicks(process.pid) };
            },
          });
          const t2 = procTicks(ks.pid);
          const busy2 = machineBusyTicks();
          const self2 = procTicks(process.pid);
          const other =
            t1 !== undefined && t2 !== undefined && m1.busy !== undefined && busy2 !== undefined && m1.self !== undefined && self2 !== undefined
              ? Math.max(0, busy2 - m1.busy - (self2 - m1.self) - (t2 - t1)) / (r.seconds * cpus().length)
              : undefined;
          if (file) {
            await ks.command({ cmd: 'profile-stop', file });
            profiles.push({ name: `KMIP ${op} @${n} (Keysmith)`, file });
          }
          const cpuSecs = t1 !== undefined && t2 !== undefined ? (t2 - t1) / 100 : undefined;
          const row: KmipGroupRow = {
            ...r,
            server: 'keysmith',
            serverCpuPct: cpuSecs !== undefined ? (100 * cpuSecs) / r.seconds : undefined,
            serverUsPerOp: cpuSecs !== undefined && r.ops > 0 ? (cpuSecs * 1e6) / r.ops : undefined,
            otherCpuPct: other,
            clientUsPerOp: m1.self !== undefined && self2 !== undefined && r.ops > 0 ? ((self2 - m1.self) * 1e4) / r.ops : undefined,
          };
          rows.push(row);
          log(formatKmipResults('keysmith', [r]));
        }
    } finally {
      await ks.stop();
    }
    if (opts.pykmip === false) return { rows, profiles, pykmipMissing: false };
    if (!pykmipAvailable()) {
      log('KMIP: pykmip-server is not installed (apt-get install -y python3-pykmip): no ratio');
      return { rows, profiles, pykmipMissing: true };
    }
    log('KMIP: pykmip-server…');
    const py = await startPykmipServer(pki);
    try {
      for (const op of ops)
        for (const n of conns) {
          const r = await measureKmip({ host: '127.0.0.1', port: py.port, ...client }, op, { connections: n, durationMs: opts.durationMs, warmupMs: opts.warmupMs });
          rows.push({ ...r, server: 'pykmip' });
          log(formatKmipResults('pykmip-server', [r]));
        }
    } finally {
      py.kill();
    }
    return { rows, profiles, pykmipMissing: false };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Targets of issue 4, on a 2-core machine. */
export const KMIP_TARGETS = { get1: 5_000, get8: 10_000, create: 3_000, ratio: 20 };

/** The group's table (Keysmith beside pykmip, ratio) and its targets, as printed by bench/run.ts. */
export function formatKmipGroup(rows: KmipGroupRow[]): { table: string; targets: { what: string; value: string; target: string; pass: boolean }[] } {
  const f0 = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '—' : Math.round(n).toLocaleString('en-US'));
  const f2 = (n: number | undefined) => (n === undefined || !Number.isFinite(n) ? '—' : n.toFixed(2));
  const head = ['KMIP op', 'conns', 'Keysmith ops/s', 'p50 ms', 'p99 ms', 'µs CPU/op', 'server CPU', 'client µs/op', 'other CPU', 'pykmip ops/s', 'p50 ms', 'p99 ms', 'ratio', 'errors'];
  const body: string[][] = [];
  const targets: { what: string; value: string; target: string; pass: boolean }[] = [];
  for (const ks of rows.filter((r) => r.server === 'keysmith')) {
    const py = rows.find((r) => r.server === 'pykmip' && r.op === ks.op && r.connections === ks.connections);
    const ratio = py && py.opsPerSec > 0 ? ks.opsPerSec / py.opsPerSec : undefined;
    body.push([
      ks.op === 'create' ? 'Create AES-256' : 'Get',
      String(ks.connections),
      f0(ks.opsPerSec),
      f2(ks.p50Ms),
      f2(ks.p99Ms),
      f0(ks.serverUsPerOp),
      ks.serverCpuPct === undefined ? '—' : `${ks.serverCpuPct.toFixed(0)}%`,
      f0(ks.clientUsPerOp),
      ks.otherCpuPct === undefined ? '—' : `${ks.otherCpuPct.toFixed(0)}%`,
      f0(py?.opsPerSec),
      f2(py?.p50Ms),
      f2(py?.p99Ms),
      ratio === undefined ? '—' : `${ratio.toFixed(1)}×`,
      String(ks.errors + (py?.errors ?? 0)),
    ]);
    const clean = ks.errors === 0;
    const want = ks.op === 'create' ? KMIP_TARGETS.create : ks.connections === 1 ? KMIP_TARGETS.get1 : KMIP_TARGETS.get8;
    if (ks.op === 'get' ? ks.connections === 1 || ks.connections === 8 : true)
      targets.push({ what: `KMIP ${ks.op} @${ks.connections} ops/s`, value: f0(ks.opsPerSec), target: `≥ ${f0(want)}`, pass: clean && ks.opsPerSec >= want });
    if (ratio !== undefined) targets.push({ what: `KMIP ${ks.op} @${ks.connections} Keysmith ÷ pykmip`, value: `${ratio.toFixed(1)}×`, target: `≥ ${KMIP_TARGETS.ratio}×`, pass: clean && ratio >= KMIP_TARGETS.ratio });
  }
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return { table: [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...body.map(line)].join('\n'), targets };
}

async function main(): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      duration: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '1' },
      only: { type: 'string', default: 'create,get' },
      connections: { type: 'string', default: '1,8' },
    },
  });
  if (!pykmipAvailable()) {
    console.error('pykmip-server is not installed (apt-get install -y python3-pykmip)');
    process.exit(2);
  }
  const dir = mkdtempSync(join(tmpdir(), 'keysmith-kmip-bench-'));
  const pki = makeTestPki(dir);
  const py = await startPykmipServer(pki);
  const kill = (): void => py.kill();
  process.once('SIGINT', () => {
    kill();
    process.exit(130);
  });
  try {
    const target: KmipTarget = { host: '127.0.0.1', port: py.port, ca: pki.caPem, cert: pki.client.cert, key: pki.client.key };
    const results: KmipBenchResult[] = [];
    for (const op of args.only!.split(',') as Array<'create' | 'get'>) {
      for (const n of args.connections!.split(',').map(Number)) {
        const r = await measureKmip(target, op, { connections: n, durationMs: Number(args.duration) * 1000, warmupMs: Number(args.warmup) * 1000 });
        results.push(r);
        console.log(formatKmipResults('pykmip-server', [r]));
      }
    }
  } finally {
    kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
