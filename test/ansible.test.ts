/**
 * The real ONTAP automation peer: Debian's `ansible` with the netapp.ontap collection drives
 * Keysmith over HTTPS with HTTP Basic, exactly as it drives an ONTAP cluster. The playbooks are in
 * test/ansible/; this file starts the server, writes the connection and secrets to a vars file in
 * a private temp dir, runs `ansible-playbook` and checks both what the modules reported and what
 * Keysmith's own API says happened.
 *
 * Not skipped when ansible is missing: CI installs the `ansible` Debian package.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { appendFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { request } from 'node:https';
import { fileURLToPath } from 'node:url';
import { createApp, type App } from '../src/app.js';
import { parseConfig } from '../src/config.js';
import { ERRORS } from '../src/errors.js';
import { RUN_DIR, noteSecret } from './helpers.js';

/** Each test runs ansible-playbook once; a loaded CI machine can take a while over a dozen module runs. */
const TIMEOUT = 240_000;
const PLAYBOOKS = fileURLToPath(new URL('./ansible', import.meta.url));
const ANSIBLE_PLAYBOOK = '/usr/bin/ansible-playbook';

interface TaskResult {
  changed?: boolean;
  failed?: boolean;
  msg?: string;
  warnings?: string[];
  ontap_info?: Record<string, any>;
  [k: string]: unknown;
}

/** Calls Keysmith over HTTPS (self-signed: this client pins nothing, like validate_certs: false). */
function call(base: string, method: string, path: string, body?: unknown, auth?: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = {};
    if (auth) headers.authorization = auth;
    if (data) headers['content-type'] = 'application/json';
    const req = request(base + path, { method, headers, rejectUnauthorized: false }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

describe('netapp.ontap (Debian ansible) against Keysmith', () => {
  let app: App;
  let base: string;
  let dir: string;
  let logStream: WriteStream;
  const token = `ansible-admin-${randomBytes(12).toString('hex')}`;
  const user = 'ansible-admin';
  const password = `pw-${randomBytes(16).toString('hex')}`;
  const passphrase1 = `ansible first passphrase ${randomBytes(8).toString('hex')}!`;
  const passphrase2 = `ansible second passphrase ${randomBytes(8).toString('hex')}!`;
  const passphrase3 = `ansible third passphrase ${randomBytes(8).toString('hex')}!!`;
  const svm1 = 'ansible_svm1';
  const svm2 = 'ansible_svm2';
  const bearer = `Bearer ${token}`;
  const api = (method: string, path: string, body?: unknown) => call(base, method, path, body, bearer);

  /** Runs one playbook from test/ansible/ and returns each task's result by task name. */
  function play(name: string): Promise<Record<string, TaskResult>> {
    const env = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: dir,
      LANG: 'C.UTF-8',
      ANSIBLE_PYTHON_INTERPRETER: '/usr/bin/python3',
      ANSIBLE_STDOUT_CALLBACK: 'ansible.posix.json',
      ANSIBLE_LOCAL_TEMP: join(dir, 'tmp'),
      ANSIBLE_REMOTE_TEMP: join(dir, 'tmp'),
      ANSIBLE_NOCOLOR: '1',
      ANSIBLE_PIPELINING: 'true',
      ANSIBLE_DEPRECATION_WARNINGS: 'false',
      ANSIBLE_RETRY_FILES_ENABLED: 'false',
    };
    return new Promise((resolve, reject) => {
      // Asynchronous on purpose: the server runs in this process and must answer while ansible waits.
      execFile(
        ANSIBLE_PLAYBOOK,
        ['-i', 'localhost,', '-c', 'local', '-e', `@${join(dir, 'vars.json')}`, join(PLAYBOOKS, name)],
        { env, cwd: dir, timeout: 120_000, maxBuffer: 32 * 1024 * 1024 },
        (error, stdout, stderr) => {
          let out: any;
          try {
            out = JSON.parse(stdout);
          } catch {
            reject(new Error(`ansible-playbook ${name} printed no JSON (${error?.message ?? 'exit 0'}):\n${stdout}\n${stderr}`));
            return;
          }
          const results: Record<string, TaskResult> = {};
          for (const t of out.plays?.[0]?.tasks ?? []) results[t.task.name] = t.hosts.localhost;
          // A failed task (other than one the playbook expects to fail) ends the play: say which.
          const failed = Object.entries(results).filter(([n, r]) => r.failed && n !== 'onboard for an svm');
          if (failed.length > 0) reject(new Error(`ansible-playbook ${name}: ${failed.map(([n, r]) => `${n}: ${r.msg}${r.module_stdout || r.module_stderr ? `\n${r.module_stderr ?? ''}${r.module_stdout ?? ''}` : ''}`).join('; ')}`));
          else resolve(results);
        },
      );
    });
  }

  beforeAll(async () => {
    if (!existsSync(ANSIBLE_PLAYBOOK)) {
      throw new Error(`${ANSIBLE_PLAYBOOK} not found: install the Debian package (apt-get install -y ansible), which brings the netapp.ontap collection this test runs.`);
    }
    for (const s of [token, password, passphrase1, passphrase2, passphrase3]) noteSecret(s);
    dir = mkdtempSync(join(tmpdir(), 'ks-ansible-'));
    mkdirSync(join(dir, 'tmp'));
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
    logStream = createWriteStream(join(RUN_DIR, 'logs', `${Date.now()}-ansible-${randomBytes(4).toString('hex')}.log`));
    app = await createApp(
      parseConfig({ host: '127.0.0.1', port: 0, dataDir: dir, store: `sqlite:${join(dir, 'keysmith.db')}`, tlsCert: cert, tlsKey: key, bootstrapToken: token, kdfCost: 14, logLevel: 'info' }),
      { logStream },
    );
    base = await app.listen();
    expect(base.startsWith('https://')).toBe(true);
    const u = await api('POST', '/api/v1/auth/users', { name: user, password, role: 'cluster-admin' });
    expect(u.status, JSON.stringify(u.body)).toBe(201);
    const vars = { ks_host: '127.0.0.1', ks_port: Number(new URL(base).port), ks_user: user, ks_password: password, passphrase1, passphrase2, svm1, svm2 };
    writeFileSync(join(dir, 'vars.json'), JSON.stringify(vars), { mode: 0o600 });
  });

  afterAll(async () => {
    if (app) {
      // The final secrets check reads every server's audit trail from the run directory.
      await app.services.audit.drain();
      const rows = await app.services.store.db.selectFrom('audit_events').selectAll().execute();
      mkdirSync(join(RUN_DIR, 'audit'), { recursive: true });
      appendFileSync(join(RUN_DIR, 'audit', `${Date.now()}-ansible-${randomBytes(4).toString('hex')}.jsonl`), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
      await app.close();
    }
    if (logStream) await new Promise((r) => logStream.end(r));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const clusterKm = async () => (await api('GET', '/api/security/key-managers?scope=cluster')).body.records as any[];

  it('creates the onboard key manager and SVMs, and a second run changes nothing', async () => {
    const r = await play('setup.yml');
    expect(r['create onboard key manager'].changed).toBe(true);
    expect(r['create onboard key manager again'].changed).toBe(false);
    expect(r['create svm1'].changed).toBe(true);
    expect(r['create svm1 again'].changed).toBe(false);
    expect(r['create svm2'].changed).toBe(true);

    const kms = await clusterKm();
    expect(kms).toHaveLength(1);
    expect(kms[0].onboard.enabled).toBe(true);
    const svms = (await api('GET', '/api/svm/svms')).body.records.map((x: any) => x.name);
    expect(svms.sort()).toEqual([svm1, svm2]);
  }, TIMEOUT);

  it('changes the passphrase idempotently and synchronizes; the old passphrase is then refused', async () => {
    const r = await play('passphrase.yml');
    expect(r['change passphrase'].changed).toBe(true);
    expect(r['change passphrase again'].changed).toBe(false);
    expect(r['synchronize'].failed).toBeFalsy();
    // The module itself refuses onboard together with vserver (its options are mutually exclusive).
    expect(r['onboard for an svm'].failed).toBe(true);
    expect(r['onboard for an svm'].msg).toMatch(/mutually exclusive: onboard\|vserver/);

    const [km] = await clusterKm();
    const old = await api('PATCH', `/api/security/key-managers/${km.uuid}`, { onboard: { existing_passphrase: passphrase1, passphrase: passphrase3 } });
    expect(old.status).toBe(400);
    expect(old.body.error.code).toBe(ERRORS.passphrase_mismatch.code);
    const sync = await api('PATCH', `/api/security/key-managers/${km.uuid}`, { onboard: { synchronize: true, existing_passphrase: passphrase2 } });
    expect(sync.status, JSON.stringify(sync.body)).toBe(200);
  }, TIMEOUT);

  it('rest_info returns the key managers and SVMs; SVM and key manager deletes are idempotent', async () => {
    // An SVM's onboard key manager, through Keysmith's API: na_ontap_security_key_manager has no way to ask for one.
    const svmKm = await api('POST', '/api/security/key-managers', { svm: { name: svm1 }, onboard: { passphrase: passphrase1 } });
    expect(svmKm.status, JSON.stringify(svmKm.body)).toBe(201);
    const [km] = await clusterKm();

    const r = await play('info-and-cleanup.yml');
    const info = r['gather key managers and svms'].ontap_info!;
    const records = info['security/key-managers'].records as any[];
    expect(info['security/key-managers'].num_records).toBe(2);
    expect(records.find((x) => x.uuid === km.uuid)).toMatchObject({ scope: 'cluster', onboard: { enabled: true } });
    expect(records.find((x) => x.scope === 'svm')).toMatchObject({ svm: { name: svm1 }, onboard: { enabled: true } });
    expect(info['svm/svms'].records.map((x: any) => x.name).sort()).toEqual([svm1, svm2]);
    const all = r['gather key managers with all fields'].ontap_info!['security/key-managers'].records as any[];
    expect(all.find((x) => x.uuid === km.uuid)).toMatchObject({ scope: 'cluster', volume_encryption: { supported: true } });
    expect(JSON.stringify(info)).not.toContain(passphrase2);

    expect(r['delete svm2'].changed).toBe(true);
    expect(r['delete svm2 again'].changed).toBe(false);
    expect(r['delete cluster key manager'].changed).toBe(true);
    expect(r['delete cluster key manager again'].changed).toBe(false);
    expect((await api('GET', '/api/svm/svms')).body.records.map((x: any) => x.name)).toEqual([svm1]);
    expect(await clusterKm()).toHaveLength(0);
  }, TIMEOUT);
});
