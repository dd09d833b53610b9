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
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
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
  opts: { connections: number; durationMs: number; warmupMs?: number },
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
