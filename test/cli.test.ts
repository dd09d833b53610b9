/**
 * The `keysmith` CLI as users run it: the built bin/keysmith.js as a child process, against real
 * servers over real HTTP (and HTTPS), asserting on stdout, stderr and exit codes. Every failure
 * must be one readable `keysmith: …` line, never a stack trace.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { RUN_DIR, noteSecret, startServer, type TestServer } from './helpers.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const BIN = join(ROOT, 'bin', 'keysmith.js');
const BUILT = join(ROOT, 'dist', 'src', 'cli', 'main.js');

const P1 = 'the first cli passphrase, long enough: 0123456789';
const P2 = 'the second cli passphrase, also long enough: 9876543210';
const P3 = 'a third passphrase that is never accepted: abcdefghij';

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

const HOME = mkdtempSync(join(tmpdir(), 'ks-cli-home-'));

/** The parent's environment without any KEYSMITH_* setting, and a HOME with no client config. */
function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('KEYSMITH_') && k !== 'XDG_CONFIG_HOME') env[k] = v;
  env.HOME = HOME;
  return env;
}

/** Runs the CLI asynchronously (the servers answering it live in this process). */
function cli(args: string[], opts: { server?: Pick<TestServer, 'url' | 'token'> | null; env?: Record<string, string>; input?: string } = {}): Promise<Ran> {
  const env = baseEnv();
  if (opts.server) Object.assign(env, { KEYSMITH_URL: opts.server.url, KEYSMITH_TOKEN: opts.server.token });
  Object.assign(env, opts.env ?? {});
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}

/** A failure the way users must see it: non-zero exit, one `keysmith:` message, no stack. */
function expectFailure(r: Ran, message: RegExp | string): void {
  expect(r.code, `expected failure, got stdout: ${r.stdout}`).not.toBe(0);
  expect(r.stderr).toMatch(/^keysmith: /m);
  expect(r.stderr).not.toMatch(/^\s+at .+[:(]/m);
  if (typeof message === 'string') expect(r.stderr).toContain(message);
  else expect(r.stderr).toMatch(message);
}

function expectSuccess(r: Ran): void {
  expect(r.code, `exit ${r.code}, stderr: ${r.stderr}`).toBe(0);
}

function json(r: Ran): any {
  expectSuccess(r);
  return JSON.parse(r.stdout);
}

describe('keysmith CLI', () => {
  let a: TestServer;
  let b: TestServer;
  const work = mkdtempSync(join(tmpdir(), 'ks-cli-'));
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    if (!existsSync(BUILT)) throw new Error(`${BUILT} is missing: build first with \`npx tsc -p .\` (\`npm test\` does it)`);
    for (const p of [P1, P2, P3]) noteSecret(p);
    a = await startServer();
    b = await startServer();
  });
  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await a?.close();
    await b?.close();
  });

  it('says what is missing when it has no token, and cannot reach a server that is not there', async () => {
    const [noToken, nobody, badToken] = await Promise.all([
      cli(['svm', 'list'], { env: { KEYSMITH_URL: a.url } }),
      cli(['svm', 'list'], { env: { KEYSMITH_URL: 'http://127.0.0.1:1', KEYSMITH_TOKEN: 'x'.repeat(20) } }),
      cli(['svm', 'list'], { env: { KEYSMITH_URL: a.url, KEYSMITH_TOKEN: 'not-a-token-at-all' } }),
    ]);
    expectFailure(noToken, /no API token.*KEYSMITH_TOKEN/);
    expectFailure(nobody, /cannot reach http:\/\/127\.0\.0\.1:1.*refused/);
    expectFailure(badToken, /error 10: /);
  });

  it('creates, lists, shows and deletes SVMs', async () => {
    const created = await cli(['svm', 'create', 'svm1'], { server: a });
    expectSuccess(created);
    expect(created.stdout).toMatch(/name\s+svm1/);
    const [dup, second] = await Promise.all([cli(['svm', 'create', 'svm1'], { server: a }), cli(['svm', 'create', 'svm2', '--json'], { server: a })]);
    expectFailure(dup, /^keysmith: error \d+: /m);
    expect(json(second).name).toBe('svm2');

    const [table, listed, shown] = await Promise.all([cli(['svm', 'list'], { server: a }), cli(['svm', 'list', '--json'], { server: a }), cli(['svm', 'show', 'svm2'], { server: a })]);
    expectSuccess(table);
    expect(table.stdout.split('\n')[0]).toMatch(/^UUID\s+NAME\s+STATE$/);
    expect(table.stdout).toMatch(/svm1\s+running/);
    expect(json(listed).map((s: { name: string }) => s.name).sort()).toEqual(['svm1', 'svm2']);
    expectSuccess(shown);
    expect(shown.stdout).toMatch(/uuid\s+[0-9a-f-]{36}/);

    expectSuccess(await cli(['svm', 'delete', 'svm2'], { server: a }));
    const [after, gone] = await Promise.all([cli(['svm', 'list', '--json'], { server: a }), cli(['svm', 'show', 'svm2'], { server: a })]);
    expect(json(after).map((s: { name: string }) => s.name)).toEqual(['svm1']);
    expectFailure(gone, 'SVM "svm2" does not exist');
  });

  it('never takes a passphrase as a flag value, and reports the server’s code for a bad one', async () => {
    const [asFlag, none, short, empty] = await Promise.all([
      cli(['key-manager', 'onboard', 'create', '--passphrase', P3], { server: a }),
      cli(['key-manager', 'onboard', 'create'], { server: a }),
      cli(['key-manager', 'onboard', 'create'], { server: a, env: { KEYSMITH_PASSPHRASE: 'too short' } }),
      cli(['key-manager', 'onboard', 'create', '--passphrase-stdin'], { server: a, input: '\n' }),
    ]);
    expectFailure(asFlag, /--passphrase is refused.*command-line/);
    expectFailure(none, /--passphrase-stdin.*KEYSMITH_PASSPHRASE/);
    expectFailure(short, 'error 65536404: ');
    expect(short.stderr).not.toContain('too short');
    expectFailure(empty, /empty/);
  });

  it('creates the cluster key manager with the passphrase on stdin and lists it', async () => {
    const r = await cli(['key-manager', 'onboard', 'create', '--passphrase-stdin'], { server: a, input: P1 + '\n' });
    expectSuccess(r);
    expect(r.stdout).toContain('created the onboard key manager of the cluster');
    const [listed, table] = await Promise.all([cli(['key-manager', 'list', '--json'], { server: a }), cli(['key-manager', 'list'], { server: a })]);
    const list = json(listed);
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ scope: 'cluster', onboard: { enabled: true }, status: { code: 0 } });
    expect(table.stdout).toMatch(/cluster\s+-\s+onboard\s+true\s+ok/);
  });

  let wrapped: string;
  let plaintext: string;

  it('creates, pages through, shows and changes the state of keys', async () => {
    const k1 = json(await cli(['keys', 'create', '--svm', 'svm1', '--name', 'k1', '--pre-active', '--json'], { server: a }));
    expect(k1).toMatchObject({ name: 'k1', state: 'pre-active', length: 256 });
    const [activated, created, badLength, noSvm] = await Promise.all([
      cli(['keys', 'activate', '--svm', 'svm1', k1.id], { server: a }),
      cli(['keys', 'create', '--svm', 'svm1', '--length', '128', '--json'], { server: a }),
      cli(['keys', 'create', '--svm', 'svm1', '--length', '512'], { server: a }),
      cli(['keys', 'list', '--svm', 'nope'], { server: a }),
    ]);
    expectSuccess(activated);
    expect(activated.stdout).toMatch(/state\s+active/);
    const k2 = json(created);
    expect(k2).toMatchObject({ state: 'active', length: 128 });
    expectFailure(badLength, '--length must be 128 or 256');
    expectFailure(noSvm, 'error 4: ');

    const page1 = await cli(['keys', 'list', '--svm', 'svm1', '--limit', '1'], { server: a });
    expectSuccess(page1);
    expect(page1.stdout.split('\n')[0]).toMatch(/^ID\s+NAME\s+STATE\s+BITS\s+KEK\s+CREATED$/);
    const next = /--after (\S+)/.exec(page1.stderr)?.[1];
    expect(next).toBeTruthy();
    const page2 = json(await cli(['keys', 'list', '--svm', 'svm1', '--limit', '1', '--after', next!, '--json'], { server: a }));
    expect(page2.records).toHaveLength(1);
    const ids = [page1.stdout.split('\n')[1].split(/\s+/)[0], page2.records[0].id].sort();
    expect(ids).toEqual([k1.id, k2.id].sort());

    const [shown, deactivated] = await Promise.all([cli(['keys', 'show', '--svm', 'svm1', k2.id], { server: a }), cli(['keys', 'deactivate', '--svm', 'svm1', k2.id], { server: a })]);
    expect(shown.stdout).toMatch(/algorithm\s+AES-128/);
    expectSuccess(deactivated);
    expect(json(await cli(['keys', 'destroy', '--svm', 'svm1', k2.id, '--json'], { server: a })).state).toBe('destroyed');
    expectFailure(await cli(['keys', 'activate', '--svm', 'svm1', k2.id], { server: a }), /error 6560001\d: /);
  });

  it('generates a data key as JSON and unwraps it to the same bytes', async () => {
    const g = await cli(['keys', 'generate', '--svm', 'svm1'], { server: a });
    const body = json(g);
    noteSecret(body.plaintext);
    expect(Object.keys(body)).toEqual(expect.arrayContaining(['key_id', 'plaintext', 'wrapped']));
    ({ wrapped, plaintext } = body);
    const [u, fromStdin, altered] = await Promise.all([
      cli(['keys', 'unwrap', '--svm', 'svm1', wrapped, '--json'], { server: a }),
      cli(['keys', 'unwrap', '--svm', 'svm1', '-'], { server: a, input: wrapped + '\n' }),
      cli(['keys', 'unwrap', '--svm', 'svm1', wrapped.slice(0, -8) + 'AAAAAAAA'], { server: a }),
    ]);
    expect(json(u)).toEqual({ key_id: body.key_id, plaintext });
    expectSuccess(fromStdin);
    expect(fromStdin.stdout).toMatch(new RegExp(`plaintext\\s+${plaintext.replace(/[+/=]/g, '\\$&')}`));
    expectFailure(altered, 'error 65600012: ');
  });

  it('changes the passphrase (stdin: two lines, or the environment) and refuses a wrong existing one', async () => {
    const r = await cli(['key-manager', 'onboard', 'update-passphrase', '--passphrase-stdin'], { server: a, input: `${P1}\n${P2}\n` });
    expectSuccess(r);
    expect(r.stdout).toContain('changed the passphrase');
    const [oneLine, wrong, sync] = await Promise.all([
      cli(['key-manager', 'onboard', 'update-passphrase', '--passphrase-stdin'], { server: a, input: `${P2}\n` }),
      cli(['key-manager', 'onboard', 'update-passphrase'], { server: a, env: { KEYSMITH_PASSPHRASE: P1, KEYSMITH_NEW_PASSPHRASE: P3 } }),
      cli(['key-manager', 'onboard', 'sync'], { server: a, env: { KEYSMITH_PASSPHRASE: P2 } }),
    ]);
    expectFailure(oneLine, /expected 2 lines/);
    expectFailure(wrong, 'error 65536139: ');
    expect(wrong.stderr + wrong.stdout).not.toContain(P3);
    expectSuccess(sync);
  });

  it('writes a backup, verifies it, and restores it into a fresh server whose keys then unwrap', async () => {
    const file = join(work, 'backup.txt');
    const w = await cli(['key-manager', 'onboard', 'show-backup', '--out', file], { server: a });
    expectSuccess(w);
    expect(readFileSync(file, 'utf8')).toMatch(/BEGIN BACKUP[\s\S]+END BACKUP/);
    expect(statSync(file).mode & 0o077).toBe(0);
    const [exists, verified, oldPassphrase, missing] = await Promise.all([
      cli(['key-manager', 'onboard', 'show-backup', '--out', file], { server: a }),
      cli(['key-manager', 'onboard', 'verify-backup', '--file', file, '--json'], { server: a, env: { KEYSMITH_PASSPHRASE: P2 } }),
      cli(['key-manager', 'onboard', 'verify-backup', '--file', file], { server: a, env: { KEYSMITH_PASSPHRASE: P1 } }),
      cli(['key-manager', 'onboard', 'verify-backup', '--file', join(work, 'missing.txt')], { server: a, env: { KEYSMITH_PASSPHRASE: P2 } }),
    ]);
    expectFailure(exists, /exists.*--force/);
    expect(json(verified).deks).toBeGreaterThanOrEqual(2);
    expectFailure(oldPassphrase, 'error 65600002: ');
    expectFailure(missing, /cannot read backup file .*ENOENT/);

    const restored = await cli(['key-manager', 'onboard', 'restore', '--file', file, '--passphrase-stdin'], { server: b, input: P2 + '\n' });
    expectSuccess(restored);
    expect(restored.stdout).toContain('restored');
    const [u, twice] = await Promise.all([
      cli(['keys', 'unwrap', '--svm', 'svm1', wrapped, '--json'], { server: b }),
      cli(['key-manager', 'onboard', 'restore', '--file', file], { server: b, env: { KEYSMITH_PASSPHRASE: P2 } }),
    ]);
    expect(json(u).plaintext).toBe(plaintext);
    expectFailure(twice, 'error 65600003: ');
  });

  it('creates, lists and revokes tokens; a revoked token is refused with a readable message', async () => {
    const t = json(await cli(['token', 'create', '--name', 'ci', '--role', 'application', '--svm', 'svm1', '--expires-in', '3600', '--json'], { server: a }));
    noteSecret(t.token);
    expect(t).toMatchObject({ name: 'ci', role: 'application' });
    const app = { url: a.url, token: t.token as string };
    const [g, notAdmin, list, listed, badRole] = await Promise.all([
      cli(['keys', 'generate', '--svm', 'svm1'], { server: app }),
      cli(['svm', 'create', 'svm9'], { server: app }),
      cli(['token', 'list'], { server: a }),
      cli(['token', 'list', '--json'], { server: a }),
      cli(['token', 'create', '--name', 'x', '--role', 'superuser'], { server: a }),
    ]);
    noteSecret(json(g).plaintext);
    expectFailure(notAdmin, 'error 6: ');
    expectSuccess(list);
    expect(list.stdout).toMatch(new RegExp(`${t.id}\\s+ci\\s+application\\s+svm1\\s+valid`));
    expect(list.stdout).not.toContain(t.token);
    expect(json(listed).map((x: { id: string }) => x.id)).toContain(t.id);
    expectFailure(badRole, /^keysmith: error 2: /m);

    expectSuccess(await cli(['token', 'revoke', t.id], { server: a }));
    const [refused, after] = await Promise.all([cli(['keys', 'generate', '--svm', 'svm1'], { server: app }), cli(['token', 'list'], { server: a })]);
    expectFailure(refused, /error 12: .*revoked/);
    expect(after.stdout).toMatch(new RegExp(`${t.id}.*revoked`));
  });

  it('creates local users with the password on stdin only; lists and deletes them', async () => {
    const password = `cli-user-password-${randomBytes(6).toString('hex')}`;
    noteSecret(password);
    const [asFlag, created] = await Promise.all([
      cli(['user', 'create', '--name', 'alice', '--role', 'readonly', '--password', password], { server: a }),
      cli(['user', 'create', '--name', 'alice', '--role', 'readonly', '--password-stdin', '--json'], { server: a, input: password + '\n' }),
    ]);
    expectFailure(asFlag, /--password is refused/);
    const u = json(created);
    expect(u.name).toBe('alice');
    expect((await cli(['user', 'list'], { server: a })).stdout).toMatch(/alice\s+readonly/);
    expectSuccess(await cli(['user', 'delete', u.id], { server: a }));
    expect(json(await cli(['user', 'list', '--json'], { server: a }))).toEqual([]);
  });

  it('reads the URL and token from a client config file', async () => {
    const file = join(work, 'client.json');
    const typo = join(work, 'client-typo.json');
    writeFileSync(file, JSON.stringify({ url: a.url, token: a.token }), { mode: 0o600 });
    writeFileSync(typo, JSON.stringify({ url: a.url, tokn: a.token }), { mode: 0o600 });
    const [fromEnv, fromFlag, flagWins, unknown, missing] = await Promise.all([
      cli(['svm', 'list', '--json'], { env: { KEYSMITH_CLIENT_CONFIG: file } }),
      cli(['svm', 'list', '--config', file]),
      cli(['svm', 'list', '--config', file, '--token', 'wrong-token-0123456789']),
      cli(['svm', 'list', '--config', typo]),
      cli(['svm', 'list', '--config', join(work, 'nope.json')]),
    ]);
    expect(json(fromEnv)[0].name).toBe('svm1');
    expectSuccess(fromFlag);
    expectFailure(flagWins, 'error 10: ');
    expectFailure(unknown, /unknown setting "tokn"/);
    expectFailure(missing, /does not exist/);
  });

  it('lists audit events and verifies the chain; a broken chain exits 1 naming the first broken event', async () => {
    const [all, creates, table, ok] = await Promise.all([
      cli(['audit', 'list', '--json'], { server: a }),
      cli(['audit', 'list', '--action', 'key_manager.create', '--json'], { server: a }),
      cli(['audit', 'list', '--limit', '3'], { server: a }),
      cli(['audit', 'verify'], { server: a }),
    ]);
    expect(json(all).records.length).toBeGreaterThan(10);
    expect(json(creates).records.map((e: { action: string }) => e.action)).toEqual(['key_manager.create']);
    expectSuccess(table);
    expect(table.stdout.split('\n').filter(Boolean)).toHaveLength(4);
    expect(table.stderr).toContain('more events: --after 3');
    expectSuccess(ok);
    expect(ok.stdout).toMatch(/^audit log verified: \d+ events/);

    const c = await startServer();
    try {
      await c.app.services.audit.drain();
      await c.app.services.store.db.updateTable('audit_events').set({ action: 'svm.delete' }).where('seq', '=', 1).execute();
      const [broken, asJson] = await Promise.all([cli(['audit', 'verify'], { server: c }), cli(['audit', 'verify', '--json'], { server: c })]);
      expect(broken.code).toBe(1);
      expectFailure(broken, /does not verify: first broken event 1: event 1 was altered/);
      expect(asJson.code).toBe(1);
      expect(JSON.parse(asJson.stdout)).toMatchObject({ ok: false, broken_at: 1 });
    } finally {
      await c.close();
    }
  });

  it('init prepares a data directory once; serve starts from it over HTTPS and stops cleanly on SIGTERM', async () => {
    const dir = join(work, 'data');
    const first = json(await cli(['init', '--data-dir', dir, '--json']));
    expect(first).toMatchObject({ initialized: true, cluster: { name: 'cluster1' } });
    expect(first.bootstrap_token).toEqual(expect.any(String));
    noteSecret(first.bootstrap_token);
    const again = await cli(['init', '--data-dir', dir]);
    expectSuccess(again);
    expect(again.stdout).toContain('already initialized');
    expect(again.stdout).not.toContain(first.bootstrap_token);

    const cert = join(work, 'cert.pem');
    const key = join(work, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });

    // The same certificate serves KMIP and stands in as the CA of KMIP clients: only the flags are under test here.
    const child = spawn(process.execPath, [BIN, 'serve', '--data-dir', dir, '--port', '0', '--tls-cert', cert, '--tls-key', key, '--kmip-port', '0', '--kmip-tls-cert', cert, '--kmip-tls-key', key, '--kmip-client-ca', cert], { env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    // The server's log joins the run's logs, for the final secrets check.
    child.stdout.pipe(createWriteStream(join(RUN_DIR, 'logs', `cli-serve-${Date.now()}.log`)));
    let stderr = '';
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
    const url = await new Promise<string>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`serve did not report its address; stderr: ${stderr}`)), 20_000);
      child.stderr.on('data', (c) => {
        stderr += c;
        const m = /listening on (https:\/\/\S+)/.exec(stderr);
        if (m) {
          clearTimeout(timer);
          res(m[1]);
        }
      });
      void exited.then(({ code }) => rej(new Error(`serve exited (${code}) early; stderr: ${stderr}`)));
    });
    expect(stderr).not.toContain('bootstrap admin token'); // init showed it already
    // The KMIP line follows the listening line, possibly in a later chunk of stderr.
    const kmipLine = /KMIP \(TTLV over mutual TLS\) on 127\.0\.0\.1:(\d+)/;
    for (let i = 0; i < 100 && !kmipLine.test(stderr); i++) await new Promise((r) => setTimeout(r, 50));
    const kmipPort = Number(kmipLine.exec(stderr)?.[1]);
    expect(kmipPort, stderr).toBeGreaterThan(0);
    // The KMIP listener speaks TLS with the given certificate (a client without a certificate is then refused by it).
    const kmipPeer = await new Promise<string | undefined>((res, rej) => {
      const sock = tlsConnect({ host: '127.0.0.1', port: kmipPort, ca: readFileSync(cert), servername: 'localhost' }, () => {
        const cn = sock.getPeerCertificate().subject?.CN;
        sock.destroy();
        res(cn);
      });
      sock.on('error', rej);
    });
    expect(kmipPeer).toBe('localhost');

    const ca = readFileSync(cert);
    const health = await new Promise<any>((res, rej) => {
      httpsRequest(`${url}/api/health`, { ca }, (r) => {
        let d = '';
        r.on('data', (c) => (d += c));
        r.on('end', () => res(JSON.parse(d)));
      })
        .on('error', rej)
        .end();
    });
    expect(health.status).toBe('ok');

    const server = { url, token: first.bootstrap_token as string };
    expectSuccess(await cli(['svm', 'create', 'tls1', '--ca', cert], { server }));
    const [untrusted, insecure, caFromEnv, plainHttp] = await Promise.all([
      cli(['svm', 'list'], { server }),
      cli(['svm', 'list', '--insecure'], { server }),
      cli(['svm', 'list'], { server, env: { KEYSMITH_CA: cert } }),
      cli(['svm', 'list'], { server: { url: url.replace('https:', 'http:'), token: server.token } }),
    ]);
    expectFailure(untrusted, /certificate.*--ca <file>.*--insecure/);
    expect(insecure.stdout).toContain('tls1');
    expectSuccess(caFromEnv);
    expectFailure(plainHttp, /^keysmith: /m);

    child.kill('SIGTERM');
    expect(await exited).toEqual({ code: 0, signal: null });
    expect(stderr).toContain('SIGTERM: shutting down');
  });

  it('init keeps a bootstrap token given in KEYSMITH_BOOTSTRAP_TOKEN to itself', async () => {
    const token = `cli-bootstrap-${randomBytes(12).toString('hex')}`;
    noteSecret(token);
    const r = await cli(['init', '--data-dir', join(work, 'data2')], { env: { KEYSMITH_BOOTSTRAP_TOKEN: token } });
    expectSuccess(r);
    expect(r.stdout).toContain('initialized');
    expect(r.stdout).toContain('KEYSMITH_BOOTSTRAP_TOKEN');
    expect(r.stdout + r.stderr).not.toContain(token);
  });
});
