/** HTTPS with a given certificate and key: a client that trusts the certificate gets answers. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:https';
import { createApp, type App } from '../src/app.js';
import { parseConfig } from '../src/config.js';
import { noteSecret } from './helpers.js';

function get(url: string, ca: Buffer | undefined, token?: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, rejectUnauthorized: true, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
      let data = '';
      res.on('data', (c) => (data += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(data) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('HTTPS', () => {
  let app: App;
  let url: string;
  let ca: Buffer;
  const token = 'tls-test-admin-token-0123456789';
  beforeAll(async () => {
    noteSecret(token);
    const dir = mkdtempSync(join(tmpdir(), 'ks-tls-'));
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
    ca = readFileSync(cert);
    app = await createApp(parseConfig({ port: 0, dataDir: dir, tlsCert: cert, tlsKey: key, bootstrapToken: token, kdfCost: 14, logLevel: 'warn' }), { logStream: process.stderr });
    url = await app.listen();
  });
  afterAll(() => app?.close());

  it('listens on https and serves the API to a client trusting the certificate', async () => {
    expect(url.startsWith('https://')).toBe(true);
    expect((await get(`${url}/api/health`, ca)).body.status).toBe('ok');
    const c = await get(`${url}/api/cluster`, ca, token);
    expect(c.status).toBe(200);
    expect(c.body.name).toBe('cluster1');
  });

  it('is refused by a client that does not trust the certificate', async () => {
    await expect(get(`${url}/api/health`, undefined)).rejects.toThrow(/self[- ]signed|certificate/i);
  });
});
