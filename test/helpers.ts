/**
 * Test harness: real servers on port 0 over real HTTP, on SQLite and on the PostgreSQL server of
 * this machine. Every server logs to a file under the run's log directory, which the secrets test
 * reads at the end of the run.
 */
import { expect } from 'vitest';
import { mkdtempSync, mkdirSync, createWriteStream, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createApp, type App } from '../src/app.js';
import { parseConfig } from '../src/config.js';

export const PG_URL = process.env.KEYSMITH_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';

/** Drops a test's own PostgreSQL schema (and everything in it); nothing when there is none. */
export async function dropPgSchema(schema: string | undefined): Promise<void> {
  if (!schema) return;
  const { default: pg } = await import('pg');
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  } finally {
    await c.end();
  }
}
export const STORES = (process.env.KEYSMITH_TEST_STORES ?? 'sqlite,postgres').split(',') as ('sqlite' | 'postgres')[];

/** Where every test server of this run writes its log, and tests note the secrets they used. */
export const RUN_DIR = process.env.KEYSMITH_TEST_RUN_DIR ?? join(tmpdir(), 'keysmith-test-run');
mkdirSync(join(RUN_DIR, 'logs'), { recursive: true });

/** Records a secret (passphrase, plaintext key, password, token) that must never appear in logs or audit. */
export function noteSecret(secret: string): void {
  appendFileSync(join(RUN_DIR, 'secrets.txt'), secret + '\n');
}

export const PASSPHRASE = 'correct horse battery staple, again and again!';

export interface TestServer {
  app: App;
  url: string;
  token: string;
  dataDir: string;
  store: 'sqlite' | 'postgres';
  storeUrl: string;
  pgSchema?: string;
  /** fetch against the server with the admin token (or the given one) and JSON in/out. */
  call(method: string, path: string, body?: unknown, token?: string | null, headers?: Record<string, string>): Promise<{ status: number; body: any; headers: Headers }>;
  close(): Promise<void>;
}

export async function startServer(opts: { store?: 'sqlite' | 'postgres'; dataDir?: string; storeUrl?: string; pgSchema?: string; sealed?: boolean; token?: string; rekeyBatch?: number; jobLeaseMs?: number; kmip?: { cert: string; key: string; ca: string } } = {}): Promise<TestServer> {
  const store = opts.store ?? 'sqlite';
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'keysmith-'));
  const pgSchema = store === 'postgres' ? (opts.pgSchema ?? `ks_${randomBytes(6).toString('hex')}`) : undefined;
  const storeUrl = opts.storeUrl ?? (store === 'postgres' ? PG_URL : `sqlite:${join(dataDir, 'keysmith.db')}`);
  const token = opts.token ?? `test-admin-${randomBytes(12).toString('hex')}`;
  noteSecret(token);
  const config = parseConfig({ host: '127.0.0.1', port: 0, dataDir, store: storeUrl, pgSchema, sealed: opts.sealed ?? false, bootstrapToken: token, kdfCost: 14, logLevel: 'info', rekeyBatch: opts.rekeyBatch, jobLeaseMs: opts.jobLeaseMs, ...(opts.kmip ? { kmipPort: 0, kmipTlsCert: opts.kmip.cert, kmipTlsKey: opts.kmip.key, kmipClientCa: opts.kmip.ca } : {}) });
  const logStream = createWriteStream(join(RUN_DIR, 'logs', `${Date.now()}-${randomBytes(4).toString('hex')}.log`));
  const app = await createApp(config, { logStream });
  const url = await app.listen();
  const call: TestServer['call'] = async (method, path, body, tok, headers = {}) => {
    const h: Record<string, string> = { ...headers };
    const t = tok === undefined ? token : tok;
    if (t !== null && !h.authorization) h.authorization = `Bearer ${t}`;
    if (body !== undefined) h['content-type'] = 'application/json';
    const res = await fetch(url + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      /* not JSON */
    }
    return { status: res.status, body: parsed, headers: res.headers };
  };
  return {
    app,
    url,
    token,
    dataDir,
    store,
    storeUrl,
    pgSchema,
    call,
    async close() {
      await dumpAudit(app);
      await app.close();
      await new Promise((r) => logStream.end(r));
    },
  };
}

/** A server with the cluster's onboard key manager already configured. */
export async function startWithOkm(opts: Parameters<typeof startServer>[0] = {}): Promise<TestServer & { kmUuid: string }> {
  const s = await startServer(opts);
  noteSecret(PASSPHRASE);
  const r = await s.call('POST', '/api/security/key-managers', { onboard: { passphrase: PASSPHRASE } });
  if (r.status !== 201) throw new Error(`creating the key manager failed: ${JSON.stringify(r.body)}`);
  const list = await s.call('GET', '/api/security/key-managers');
  return Object.assign(s, { kmUuid: list.body.records[0].uuid as string });
}

/** Copies a server's audit log into the run directory, for the final secrets check. */
async function dumpAudit(app: App): Promise<void> {
  await app.services.audit.drain();
  const rows = await app.services.store.db.selectFrom('audit_events').selectAll().execute();
  const file = join(RUN_DIR, 'audit', `${Date.now()}-${randomBytes(4).toString('hex')}.jsonl`);
  mkdirSync(join(RUN_DIR, 'audit'), { recursive: true });
  appendFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
}

/** A data key as the data plane hands it out: its id, its plaintext (noted as a secret) and its wrapped form. */
export interface DataKey {
  id: string;
  plaintext: string;
  wrapped: string;
}

export function expectError(r: { status: number; body: any }, status: number, code: string) {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(Object.keys(r.body ?? {}), JSON.stringify(r.body)).toEqual(['error']);
  expect(r.body.error.code, JSON.stringify(r.body)).toBe(code);
  expect(typeof r.body.error.message).toBe('string');
}

export async function dataKeys(s: TestServer, svm: string, n: number): Promise<DataKey[]> {
  const out: DataKey[] = [];
  for (let i = 0; i < n; i += 16) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(16, n - i) }, async () => {
        const r = await s.call('POST', `/api/v1/svms/${svm}/data-keys`, {});
        expect(r.status, JSON.stringify(r.body)).toBe(201);
        noteSecret(r.body.plaintext);
        return { id: r.body.key_id, plaintext: r.body.plaintext, wrapped: r.body.wrapped };
      }),
    );
    out.push(...batch);
  }
  return out;
}

export async function expectAllUnwrap(s: TestServer, svm: string, keys: DataKey[]) {
  const r = await s.call('POST', `/api/v1/svms/${svm}/unwrap-batch`, { wrapped: keys.map((k) => k.wrapped) });
  expect(r.status, JSON.stringify(r.body).slice(0, 500)).toBe(200);
  const bad = keys.filter((k, j) => r.body.records[j].key_id !== k.id || r.body.records[j].plaintext !== k.plaintext).map((k) => k.id);
  expect(bad, 'keys that no longer unwrap to their original bytes').toEqual([]);
}

/** How many jobs the store holds (a refused call must not add one). */
export const jobCount = async (s: TestServer) => (await s.app.services.store.db.selectFrom('jobs').select('uuid').execute()).length;

/** Polls an ONTAP job link until the job succeeds or fails. */
export async function jobEnd(s: TestServer, href: string, ms = 30_000) {
  const end = Date.now() + ms;
  for (;;) {
    const r = await s.call('GET', href);
    expect(r.status).toBe(200);
    if (r.body.state === 'success' || r.body.state === 'failure') return r.body;
    if (Date.now() > end) throw new Error(`job ${href} did not end: ${JSON.stringify(r.body)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

/** A 202 answer carrying only ONTAP's job link; returns the link. */
export function expectJobLink(r: { status: number; body: any }): string {
  expect(r.status, JSON.stringify(r.body)).toBe(202);
  expect(Object.keys(r.body)).toEqual(['job']);
  expect(r.body.job._links.self.href).toBe(`/api/cluster/jobs/${r.body.job.uuid}`);
  return r.body.job._links.self.href;
}

/** An Element JSON-RPC answer. */
export type RpcAnswer = { status: number; body: any; headers: Headers };

/** Calls an Element JSON-RPC method on `/json-rpc/<version>` (12.5 unless told), with id 1 unless told. */
export async function rpc(s: TestServer, method: string, params?: unknown, opts: { id?: unknown; token?: string | null; headers?: Record<string, string>; version?: string } = {}): Promise<RpcAnswer> {
  const body: Record<string, unknown> = { method, id: opts.id ?? 1 };
  if (params !== undefined) body.params = params;
  return s.call('POST', `/json-rpc/${opts.version ?? '12.5'}`, body, opts.token, opts.headers);
}

/** An Element answer with a result: HTTP 200, no error, the id echoed. Returns the result. */
export function expectRpcResult(r: RpcAnswer, id: unknown = 1) {
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  expect(r.body.error, JSON.stringify(r.body)).toBeUndefined();
  expect(r.body.id).toEqual(id);
  return r.body.result;
}

/** A refusal in Element's envelope `{"error":{"code","name","message"},"id"}` (HTTP 200 and code 500 unless told). */
export function expectElementError(r: RpcAnswer, name: string, opts: { status?: number; code?: number; id?: unknown } = {}) {
  expect(r.status, JSON.stringify(r.body)).toBe(opts.status ?? 200);
  expect(Object.keys(r.body).sort(), JSON.stringify(r.body)).toEqual(['error', 'id']);
  expect(r.body.id).toEqual(opts.id === undefined ? 1 : opts.id);
  expect(Object.keys(r.body.error).sort()).toEqual(['code', 'message', 'name']);
  expect(r.body.error.name, JSON.stringify(r.body)).toBe(name);
  expect(r.body.error.code).toBe(opts.code ?? 500);
  expect(typeof r.body.error.message).toBe('string');
  expect(r.body.error.message.length).toBeGreaterThan(0);
}

/** Polls GetAsyncResult (keepResult) until the async result is complete; returns it. */
export async function waitAsync(s: TestServer, handle: number, ms = 30_000) {
  for (const end = Date.now() + ms; ; ) {
    const r = expectRpcResult(await rpc(s, 'GetAsyncResult', { asyncHandle: handle, keepResult: true }));
    if (r.status === 'complete') return r;
    if (Date.now() > end) throw new Error(`async result ${handle} did not complete: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
}
