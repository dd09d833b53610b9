/**
 * Test and benchmark support: a throw-away PKI made with the `openssl` CLI and Debian's real
 * `pykmip-server` started on it. Nothing here is used by the product.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { KmipClient } from '../client.js';
import { join } from 'node:path';

export interface TestPki {
  dir: string;
  caPem: Buffer;
  serverCertPath: string;
  serverKeyPath: string;
  caPath: string;
  client: { cert: Buffer; key: Buffer };
  /** A client certificate without EKU clientAuth (PyKMIP refuses it). */
  clientNoEku: { cert: Buffer; key: Buffer };
  /** A second, unrelated CA and a server certificate it signed, for "wrong server CA" cases. */
  otherCa: { caPem: Buffer; serverCert: Buffer; serverKey: Buffer };
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

function makeCa(dir: string, name: string, cn: string): void {
  openssl(dir, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${cn}`]);
}

function makeLeaf(dir: string, ca: string, name: string, cn: string, ext: string): void {
  openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`]);
}

/** CA, server certificate (SAN IP 127.0.0.1), client certificates with and without EKU clientAuth. */
export function makeTestPki(dir: string): TestPki {
  makeCa(dir, 'ca', 'Keysmith test KMIP CA');
  makeLeaf(dir, 'ca', 'server', '127.0.0.1', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  makeLeaf(dir, 'ca', 'client', 'keysmith-kmip-client', 'extendedKeyUsage=clientAuth\n');
  makeLeaf(dir, 'ca', 'client-noeku', 'keysmith-kmip-client-noeku', 'keyUsage=digitalSignature\n');
  makeCa(dir, 'other-ca', 'Unrelated CA');
  makeLeaf(dir, 'other-ca', 'other-server', '127.0.0.1', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  const read = (f: string): Buffer => readFileSync(join(dir, f));
  return {
    dir,
    caPem: read('ca.pem'),
    caPath: join(dir, 'ca.pem'),
    serverCertPath: join(dir, 'server.pem'),
    serverKeyPath: join(dir, 'server.key'),
    client: { cert: read('client.pem'), key: read('client.key') },
    clientNoEku: { cert: read('client-noeku.pem'), key: read('client-noeku.key') },
    otherCa: { caPem: read('other-ca.pem'), serverCert: read('other-server.pem'), serverKey: read('other-server.key') },
  };
}

/** A port that was free a moment ago (bind to 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface PykmipServer {
  port: number;
  logPath: string;
  /** SIGKILL to the whole process group: pykmip-server takes 5–20 s to honour SIGTERM. */
  kill(): void;
}

export const PYKMIP_SERVER = '/usr/bin/pykmip-server';

export function pykmipAvailable(): boolean {
  return existsSync(PYKMIP_SERVER) && existsSync('/usr/bin/python3');
}

/** Starts pykmip-server on 127.0.0.1 and resolves once its log says the socket is bound. */
export async function startPykmipServer(pki: TestPki, opts: { name?: string; timeoutMs?: number } = {}): Promise<PykmipServer> {
  const name = opts.name ?? 'pykmip';
  const port = await freePort();
  const conf = join(pki.dir, `${name}.conf`);
  const logPath = join(pki.dir, `${name}.log`);
  writeFileSync(
    conf,
    [
      '[server]',
      'hostname=127.0.0.1',
      `port=${port}`,
      `certificate_path=${pki.serverCertPath}`,
      `key_path=${pki.serverKeyPath}`,
      `ca_path=${pki.caPath}`,
      'auth_suite=TLS1.2',
      'enable_tls_client_auth=True',
      `database_path=${join(pki.dir, `${name}.db`)}`,
      `policy_path=${pki.dir}`,
      'logging_level=INFO',
      '',
    ].join('\n'),
  );
  // Own process group, so that kill() reaches the helper processes pykmip-server forks too.
  const child: ChildProcess = spawn(PYKMIP_SERVER, ['-f', conf, '-l', logPath], { detached: true, stdio: 'ignore' });
  const kill = (): void => {
    try {
      if (child.pid) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (;;) {
    if (existsSync(logPath) && readFileSync(logPath, 'utf8').includes('Server successfully bound socket handler')) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      kill();
      const log = existsSync(logPath) ? readFileSync(logPath, 'utf8').slice(-2000) : '(no log)';
      throw new Error(`pykmip-server did not start: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { port, logPath, kill };
}

/** Runs `fn` with a Keysmith KMIP client of the test PKI connected to `py`, as an operator would look at the server. */
export async function onPykmip<T>(py: PykmipServer, pki: TestPki, fn: (c: KmipClient) => Promise<T>): Promise<T> {
  const c = new KmipClient({ servers: [{ host: '127.0.0.1', port: py.port }], ca: pki.caPem, cert: pki.client.cert, key: pki.client.key, timeoutMs: 10_000 });
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** A TCP relay to a local port: another address for the same KMIP server, which a test can take away. */
export interface TcpRelay {
  /** host:port of the relay, as key-server settings name it. */
  name: string;
  port: number;
  /** Connections accepted so far. */
  connections: number;
  /** Stops listening and drops its connections: the server went away. */
  close(): Promise<void>;
}

export async function startTcpRelay(targetPort: number): Promise<TcpRelay> {
  const open = new Set<Socket>();
  let closed = false;
  const server: Server = createServer((c) => {
    relay.connections += 1;
    const u = connect(targetPort, '127.0.0.1');
    for (const x of [c, u]) {
      open.add(x);
      x.on('error', () => undefined);
      x.on('close', () => {
        open.delete(x);
        c.destroy();
        u.destroy();
      });
    }
    c.pipe(u);
    u.pipe(c);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const relay: TcpRelay = {
    name: `127.0.0.1:${port}`,
    port,
    connections: 0,
    async close() {
      if (closed) return;
      closed = true;
      for (const x of open) x.destroy();
      await new Promise((r) => server.close(r));
    },
  };
  return relay;
}
