/**
 * Keysmith's KMIP client against Debian's real pykmip-server over mutual TLS, plus the failure
 * paths that need a misbehaving peer: a closed port, a server with an untrusted certificate, a
 * TCP server that accepts and never answers, a TLS server that never answers, and one that
 * answers with the wrong batch item.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createTcpServer, connect as tcpConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmipClient, KmipClientError, KmipConnectError, KmipOperationError, KmipTimeoutError, type KmipClientOptions } from '../src/kmip/client.js';
import { KeyFormatType, ObjectType, Operation, ResultReason, ResultStatus, State } from '../src/kmip/enums.js';
import { TtlvFramer } from '../src/kmip/framer.js';
import { buildResponse, parseRequest, type RequestMessage } from '../src/kmip/message.js';
import { Tag } from '../src/kmip/tags.js';
import { makeTestPki, freePort, pykmipAvailable, startPykmipServer, type PykmipServer, type TestPki } from '../src/kmip/testing/pykmip.js';
import { decodeTtlv, encodeTtlv, ttlv } from '../src/kmip/ttlv.js';

// A real peer is part of the proof: without Debian's python3-pykmip this file fails (CI installs it).
const describeIf = describe;

let dir: string;
let pki: TestPki;
let py: PykmipServer;
const cleanups: Array<() => void | Promise<void>> = [];

function options(servers: Array<{ host: string; port: number }>, extra: Partial<KmipClientOptions> = {}): KmipClientOptions {
  return { servers, ca: pki.caPem, cert: pki.client.cert, key: pki.client.key, timeoutMs: 5_000, ...extra };
}

function client(servers: Array<{ host: string; port: number }>, extra: Partial<KmipClientOptions> = {}): KmipClient {
  const c = new KmipClient(options(servers, extra));
  cleanups.push(() => c.close());
  return c;
}

function listen(server: Server | tls.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}

/** A TCP proxy in front of pykmip that counts connections and can cut them all. */
async function countingProxy(targetPort: number): Promise<{ port: number; connections: () => number; cutAll: () => void }> {
  let count = 0;
  const sockets = new Set<Socket>();
  const server = createTcpServer((inbound) => {
    count++;
    const outbound = tcpConnect(targetPort, '127.0.0.1');
    sockets.add(inbound).add(outbound);
    inbound.pipe(outbound).pipe(inbound);
    const done = (): void => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', done).on('close', done);
    outbound.on('error', done).on('close', done);
  });
  const port = await listen(server);
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return {
    port,
    connections: () => count,
    cutAll: () => {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
  };
}

/** A mutual-TLS server speaking our own codec, answering with whatever `answer` decides. */
async function fakeKmip(
  answer: (req: RequestMessage) => Buffer | undefined,
  opts: { cert?: Buffer; key?: Buffer; clientCa?: Buffer } = {},
): Promise<{ port: number; requests: RequestMessage[] }> {
  const requests: RequestMessage[] = [];
  const sockets = new Set<tls.TLSSocket>();
  const server = tls.createServer(
    {
      cert: opts.cert ?? readPem(pki.serverCertPath),
      key: opts.key ?? readPem(pki.serverKeyPath),
      ca: opts.clientCa ?? pki.caPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    },
    (socket) => {
      sockets.add(socket);
      const framer = new TtlvFramer({ maxMessageBytes: 1 << 20 });
      socket.on('data', (chunk) => {
        for (const m of framer.push(chunk)) {
          const req = parseRequest(decodeTtlv(m));
          requests.push(req);
          const out = answer(req);
          if (out) socket.write(out);
        }
      });
      socket.on('error', () => socket.destroy());
    },
  );
  const port = await listen(server);
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port, requests };
}

function readPem(p: string): Buffer {
  return readFileSync(p);
}

function success(req: RequestMessage, payload = ttlv.struct(Tag.ResponsePayload, []), id?: Buffer): Buffer {
  return encodeTtlv(
    buildResponse({
      protocolVersion: req.header.protocolVersion,
      timeStamp: BigInt(Math.floor(Date.now() / 1000)),
      items: req.items.map((it) => ({ operation: it.operation, uniqueBatchItemId: id ?? it.uniqueBatchItemId, resultStatus: ResultStatus.Success, payload })),
    }),
  );
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keysmith-kmip-client-'));
  pki = makeTestPki(dir);
  if (!pykmipAvailable()) throw new Error('Debian python3-pykmip is not installed (apt-get install -y python3-pykmip)');
  py = await startPykmipServer(pki);
}, 60_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  py?.kill();
  rmSync(dir, { recursive: true, force: true });
});

describeIf('KMIP client against pykmip-server', () => {
  const local = (): { host: string; port: number } => ({ host: '127.0.0.1', port: py.port });

  it('discovers versions and queries the server', async () => {
    const c = client([local()]);
    const versions = await c.discoverVersions();
    expect(versions[0]).toEqual({ major: 2, minor: 0 });
    expect(versions).toContainEqual({ major: 1, minor: 2 });
    const q = await c.query();
    expect(q.vendorIdentification).toMatch(/PyKMIP/);
    expect(q.operations).toContain(Operation.Create);
    expect(q.operations).toContain(Operation.Encrypt);
  });

  for (const version of [
    { major: 1, minor: 2 },
    { major: 1, minor: 4 },
    { major: 2, minor: 0 },
  ]) {
    it(`KMIP ${version.major}.${version.minor}: create, get back, activate, locate, encrypt/decrypt, revoke, destroy`, async () => {
      const c = client([local()], { protocolVersion: version });
      const name = `keysmith-test-${version.major}${version.minor}-${Date.now()}`;
      const id = await c.createAes256(name);
      const key = await c.get(id);
      expect(key).toMatchObject({ uniqueIdentifier: id, objectType: ObjectType.SymmetricKey, keyFormatType: KeyFormatType.Raw, cryptographicLength: 256 });
      expect(key.keyMaterial.length).toBe(32);
      expect(await c.getState(id)).toBe(State.PreActive);
      await c.activate(id);
      expect(await c.getState(id)).toBe(State.Active);
      expect(await c.locateByName(name)).toEqual([id]);
      const plaintext = Buffer.from('sixteen byte key material, or any length at all');
      const enc = await c.encrypt(id, plaintext);
      expect(enc.ivCounterNonce?.length).toBe(16); // server-generated IV
      expect(enc.data.equals(plaintext)).toBe(false);
      expect((await c.decrypt(id, enc.data, { ivCounterNonce: enc.ivCounterNonce })).equals(plaintext)).toBe(true);
      // Destroying an active key is refused; revoke first.
      await expect(c.destroy(id)).rejects.toMatchObject({ resultReason: ResultReason.PermissionDenied });
      await c.revoke(id);
      await c.destroy(id);
      await expect(c.get(id)).rejects.toBeInstanceOf(KmipOperationError);
    });
  }

  it('KMIP 1.1 (what vSphere sends): create, get, activate, locate', async () => {
    const c = client([local()], { protocolVersion: { major: 1, minor: 1 } });
    const name = `keysmith-test-11-${Date.now()}`;
    const id = await c.createAes256(name);
    expect((await c.get(id)).keyMaterial.length).toBe(32);
    await c.activate(id);
    expect(await c.getState(id)).toBe(State.Active);
    expect(await c.locateByName(name)).toEqual([id]);
  });

  it('sends a Username/Password credential that pykmip accepts (it checks it only with SLUGS)', async () => {
    const c = client([local()], { credential: { username: 'ontap-admin', password: 'kmip-pw-0123' } });
    const id = await c.createAes256();
    expect((await c.get(id)).uniqueIdentifier).toBe(id);
  });

  it('registers client key bytes and reads the same bytes back', async () => {
    const c = client([local()]);
    const material = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');
    const id = await c.registerSymmetricKey(material, { name: `registered-${Date.now()}` });
    expect((await c.get(id)).keyMaterial.equals(material)).toBe(true);
    const attrs = await c.getAttributes(id, ['Cryptographic Length', 'State']);
    expect(attrs.map((a) => [a.name, a.value.value])).toEqual([
      ['Cryptographic Length', 256],
      ['State', State.PreActive],
    ]);
  });

  it('reports Item Not Found as a typed operation error', async () => {
    const c = client([local()]);
    const err = await c.get('no-such-object-4711').catch((e) => e);
    expect(err).toBeInstanceOf(KmipOperationError);
    expect(err).toMatchObject({ operation: Operation.Get, resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.ItemNotFound });
    // The connection is still good for the next request.
    expect((await c.discoverVersions()).length).toBeGreaterThan(0);
  });

  it('keeps one connection open between requests and reconnects when it drops', async () => {
    const proxy = await countingProxy(py.port);
    const c = client([{ host: '127.0.0.1', port: proxy.port }]);
    await c.discoverVersions();
    await c.query();
    const id = await c.createAes256();
    await c.get(id);
    expect(proxy.connections()).toBe(1);
    proxy.cutAll();
    await new Promise((r) => setTimeout(r, 50));
    expect((await c.get(id)).keyMaterial.length).toBe(32);
    expect(proxy.connections()).toBe(2);
  });

  it('serialises concurrent calls on one connection and matches each response', async () => {
    const proxy = await countingProxy(py.port);
    const c = client([{ host: '127.0.0.1', port: proxy.port }]);
    const ids = await Promise.all([c.createAes256(), c.createAes256(), c.createAes256()]);
    expect(new Set(ids).size).toBe(3);
    const keys = await Promise.all(ids.map((id) => c.get(id)));
    expect(keys.map((k) => k.uniqueIdentifier)).toEqual(ids);
    expect(proxy.connections()).toBe(1);
  });

  it('fails over in order: a closed primary port, then the secondary', async () => {
    const closed = await freePort();
    const c = client([{ host: '127.0.0.1', port: closed }, local()]);
    expect((await c.discoverVersions()).length).toBeGreaterThan(0);
    expect(c.connectedServer).toBe(`127.0.0.1:${py.port}`);
  });

  it('fails over past a primary whose certificate the CA does not sign, and says why', async () => {
    const impostor = await fakeKmip((req) => success(req), { cert: pki.otherCa.serverCert, key: pki.otherCa.serverKey });
    const alone = client([{ host: '127.0.0.1', port: impostor.port }]);
    const err = await alone.discoverVersions().catch((e) => e);
    expect(err).toBeInstanceOf(KmipConnectError);
    expect((err as KmipConnectError).failures[0]).toMatchObject({ server: `127.0.0.1:${impostor.port}`, tls: 'server_certificate' });
    expect(impostor.requests).toHaveLength(0);

    const c = client([{ host: '127.0.0.1', port: impostor.port }, local()]);
    expect((await c.discoverVersions()).length).toBeGreaterThan(0);
    expect(c.connectedServer).toBe(`127.0.0.1:${py.port}`);
  });

  it('fails over past a TLS 1.3 primary that refuses the client certificate after the handshake', async () => {
    const picky = await fakeKmip((req) => success(req), { clientCa: pki.otherCa.caPem });
    const alone = client([{ host: '127.0.0.1', port: picky.port }]);
    const err = await alone.discoverVersions().catch((e) => e);
    expect(err).toBeInstanceOf(KmipConnectError);
    expect((err as KmipConnectError).failures[0]).toMatchObject({ server: `127.0.0.1:${picky.port}`, tls: 'client_certificate' });
    expect(picky.requests).toHaveLength(0);

    const c = client([{ host: '127.0.0.1', port: picky.port }, local()]);
    expect((await c.discoverVersions()).length).toBeGreaterThan(0);
    expect(c.connectedServer).toBe(`127.0.0.1:${py.port}`);
  });

  it('lists every server when none can be reached', async () => {
    const [a, b] = [await freePort(), await freePort()];
    const c = client([{ host: '127.0.0.1', port: a }, { host: '127.0.0.1', port: b }]);
    const err = (await c.discoverVersions().catch((e) => e)) as KmipConnectError;
    expect(err).toBeInstanceOf(KmipConnectError);
    expect(err.failures.map((f) => [f.server, f.code])).toEqual([
      [`127.0.0.1:${a}`, 'ECONNREFUSED'],
      [`127.0.0.1:${b}`, 'ECONNREFUSED'],
    ]);
  });

  it('is refused by pykmip with a client certificate lacking EKU clientAuth', async () => {
    const c = client([local()], { cert: pki.clientNoEku.cert, key: pki.clientNoEku.key });
    const err = await c.discoverVersions().catch((e) => e);
    expect(err).toBeInstanceOf(KmipOperationError);
    expect(err).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.AuthenticationNotSuccessful });
  });
});

describe('KMIP client against misbehaving peers', () => {
  it('times out connecting to a TCP server that accepts and never answers', async () => {
    const held: Socket[] = [];
    const silent = createTcpServer((s) => held.push(s));
    const port = await listen(silent);
    cleanups.push(() => {
      held.forEach((s) => s.destroy());
      silent.close();
    });
    const c = client([{ host: '127.0.0.1', port }], { timeoutMs: 300 });
    const t0 = Date.now();
    const err = (await c.discoverVersions().catch((e) => e)) as KmipConnectError;
    expect(err).toBeInstanceOf(KmipConnectError);
    expect(err.failures[0].code).toBe('ETIMEDOUT');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(Date.now() - t0).toBeLessThan(3_000);
  });

  it('times out a request that a TLS server never answers, and drops that connection', async () => {
    const mute = await fakeKmip(() => undefined);
    const c = client([{ host: '127.0.0.1', port: mute.port }], { timeoutMs: 300 });
    const t0 = Date.now();
    await expect(c.discoverVersions()).rejects.toBeInstanceOf(KmipTimeoutError);
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(c.connectedServer).toBeUndefined();
    expect(mute.requests).toHaveLength(1);
  });

  it('refuses a response that does not echo the Unique Batch Item ID', async () => {
    const liar = await fakeKmip((req) => success(req, undefined, Buffer.from('someone-else')));
    const c = client([{ host: '127.0.0.1', port: liar.port }]);
    const err = await c.discoverVersions().catch((e) => e);
    expect(err).toBeInstanceOf(KmipClientError);
    expect((err as KmipClientError).kind).toBe('protocol');
    expect(c.connectedServer).toBeUndefined();
  });

  it('sends the Username/Password credential, the protocol version and a unique batch item ID', async () => {
    const echo = await fakeKmip((req) => success(req, ttlv.struct(Tag.ResponsePayload, [ttlv.text(Tag.UniqueIdentifier, 'k-1')])));
    const c = client([{ host: '127.0.0.1', port: echo.port }], { credential: { username: 'ontap-svm1', password: 'kmip-secret-pw' }, protocolVersion: { major: 1, minor: 4 } });
    await c.activate('k-1');
    await c.activate('k-1');
    const [r1, r2] = echo.requests;
    expect(r1.header).toMatchObject({ protocolVersion: { major: 1, minor: 4 }, authentication: { username: 'ontap-svm1', password: 'kmip-secret-pw' }, batchCount: 1 });
    expect(r1.items[0].operation).toBe(Operation.Activate);
    expect(r1.items[0].uniqueBatchItemId?.length).toBe(8);
    expect(r1.items[0].uniqueBatchItemId?.equals(r2.items[0].uniqueBatchItemId!)).toBe(false);
  });

  it('never puts the password in an error', async () => {
    const refuse = await fakeKmip((req) =>
      encodeTtlv(
        buildResponse({
          protocolVersion: req.header.protocolVersion,
          timeStamp: 1n,
          items: [{ operation: req.items[0].operation, uniqueBatchItemId: req.items[0].uniqueBatchItemId, resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.AuthenticationNotSuccessful, resultMessage: 'bad credential' }],
        }),
      ),
    );
    const c = client([{ host: '127.0.0.1', port: refuse.port }], { credential: { username: 'u', password: 'do-not-leak-this' } });
    const err = (await c.get('x').catch((e) => e)) as Error;
    expect(err).toBeInstanceOf(KmipOperationError);
    expect(`${err.message} ${err.stack}`).not.toContain('do-not-leak-this');
  });
});
