/**
 * The server under test: Keysmith built by createApp, exactly as `keysmith serve` builds it, in
 * its own process. It configures the cluster's onboard key manager, creates an application token
 * bound to the admin SVM and N data keys, then prints one JSON line:
 *   {"ready":true,"url","token","svm","wrapped":[…],"check":[{"wrapped","plaintext"}…]}
 * Usage: node dist/bench/server.js --data-dir DIR [--store sqlite:…|postgres://…] [--keys N]
 */
import { parseArgs } from 'node:util';
import { createWriteStream, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createApp } from '../src/app.js';
import { parseConfig } from '../src/config.js';
import { say, serveParent } from './child.js';

const { values } = parseArgs({
  options: {
    'data-dir': { type: 'string' },
    store: { type: 'string' },
    keys: { type: 'string', default: '2000' },
    'log-level': { type: 'string', default: 'warn' },
  },
});
const dataDir = values['data-dir'];
if (!dataDir) throw new Error('--data-dir is required');
mkdirSync(dataDir, { recursive: true });
const nKeys = Number(values.keys);
const storeUrl = values.store ?? `sqlite:${join(dataDir, 'keysmith.db')}`;
const isPg = /^postgres(ql)?:\/\//.test(storeUrl);
const pgSchema = isPg ? `ks_bench_${randomBytes(5).toString('hex')}` : undefined;
const adminToken = `bench-admin-${randomBytes(16).toString('hex')}`;

const config = parseConfig({
  host: '127.0.0.1',
  port: 0,
  dataDir,
  store: storeUrl,
  pgSchema,
  bootstrapToken: adminToken,
  kdfCost: 14,
  logLevel: values['log-level'],
});
const logStream = createWriteStream(join(dataDir, 'server.log'));
const app = await createApp(config, { logStream });
const url = await app.listen();

serveParent(async () => {
  await app.close();
  await new Promise((r) => logStream.end(r));
  if (pgSchema) {
    const c = new pg.Client({ connectionString: storeUrl });
    await c.connect();
    try {
      await c.query(`DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`);
    } finally {
      await c.end();
    }
  }
});

async function call(method: string, path: string, body: unknown, token = adminToken): Promise<any> {
  const res = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return text ? JSON.parse(text) : undefined;
}

const svm = app.services.cluster.name;
await call('POST', '/api/security/key-managers', { onboard: { passphrase: `bench passphrase ${randomBytes(12).toString('hex')}` } });
const { token } = (await call('POST', '/api/v1/auth/tokens', { name: 'bench-app', role: 'application', svms: [svm] })) as { token: string };

// Seed through the real API, a few requests at a time (each one commits on its own).
const wrapped: string[] = new Array(nKeys);
const check: { wrapped: string; plaintext: string }[] = [];
let next = 0;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: 8 }, async () => {
    while (next < nKeys) {
      const i = next++;
      const r = (await call('POST', `/api/v1/svms/${svm}/data-keys`, {}, token)) as { wrapped: string; plaintext: string };
      wrapped[i] = r.wrapped;
      if (i % Math.max(1, Math.floor(nKeys / 5)) === 0) check.push({ wrapped: r.wrapped, plaintext: r.plaintext });
    }
  }),
);
const seedMs = performance.now() - t0;

say({ ready: true, url, pid: process.pid, svm, token, dialect: app.services.store.dialect, seedMs, wrapped, check });
