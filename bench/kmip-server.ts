/**
 * KMIP Create and Get operations per second against Keysmith's KMIP server, on 1 and 8 connections.
 * The server runs in a child process (this file with --serve), built by createApp as `keysmith
 * serve` builds it, with a throw-away PKI; the parent drives raw TTLV over TLS with the codec.
 * `npm run bench -- --only kmip` (bench/kmip.ts, runKmipGroup) starts the same --serve child and
 * drives it with Keysmith's KMIP client beside pykmip-server; this file's own parent mode is a
 * quick check of the server alone.
 *
 * Usage: node dist/bench/kmip-server.js [--seconds 5] [--store sqlite:…|postgres://…]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import tls from 'node:tls';
import { TtlvFramer } from '../src/kmip/framer.js';
import { buildRequest, parseResponse, type RequestBatchItem } from '../src/kmip/message.js';
import { Tag } from '../src/kmip/tags.js';
import { child, decodeTtlv, encodeTtlv, ttlv } from '../src/kmip/ttlv.js';
import { CryptographicAlgorithm, ObjectType, Operation } from '../src/kmip/enums.js';
import { makeTestPki } from '../src/kmip/testing/pykmip.js';

const { values } = parseArgs({ options: { serve: { type: 'boolean' }, dir: { type: 'string' }, seconds: { type: 'string', default: '5' }, store: { type: 'string' } } });

if (values.serve) {
  const { createApp } = await import('../src/app.js');
  const { parseConfig } = await import('../src/config.js');
  const { say, serveParent } = await import('./child.js');
  const dir = values.dir!;
  const token = `bench-admin-${randomBytes(16).toString('hex')}`;
  const pgSchema = values.store ? `ks_bench_${randomBytes(5).toString('hex')}` : undefined;
  const config = parseConfig({
    host: '127.0.0.1',
    port: 0,
    dataDir: dir,
    store: values.store ?? `sqlite:${join(dir, 'keysmith.db')}`,
    pgSchema,
    bootstrapToken: token,
    kdfCost: 14,
    logLevel: 'warn',
    kmipPort: 0,
    kmipTlsCert: join(dir, 'server.pem'),
    kmipTlsKey: join(dir, 'server.key'),
    kmipClientCa: join(dir, 'ca.pem'),
  });
  const logStream = createWriteStream(join(dir, 'server.log'));
  const app = await createApp(config, { logStream });
  const url = await app.listen();
  serveParent(async () => {
    await app.close();
    await new Promise((r) => logStream.end(r));
    if (pgSchema) {
      const pg = (await import('pg')).default;
      const c = new pg.Client({ connectionString: values.store });
      await c.connect();
      try {
        await c.query(`DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`);
      } finally {
        await c.end();
      }
    }
  });
  const call = async (path: string, body: unknown) => {
    const r = await fetch(url + path, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    if (r.status >= 300) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  };
  await call('/api/security/key-managers', { onboard: { passphrase: `bench passphrase ${randomBytes(12).toString('hex')}` } });
  await call('/api/security/certificates', { type: 'client', public_certificate: readFileSync(join(dir, 'client.pem'), 'utf8') });
  say({ ready: true, port: app.kmip!.port });
} else {
  const dir = mkdtempSync(join(tmpdir(), 'ks-kmip-bench-'));
  const pki = makeTestPki(dir);
  const childProc = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve', '--dir', dir, ...(values.store ? ['--store', values.store] : [])], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: childProc.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    lines.once('line', (l) => {
      const m = JSON.parse(l) as { ready?: boolean; port?: number };
      if (m.ready && m.port) resolve(m.port);
      else reject(new Error(`server: ${l}`));
    });
    childProc.once('exit', (c) => reject(new Error(`server exited ${c}`)));
  });

  const connect = () =>
    new Promise<{ send(items: RequestBatchItem[]): Promise<ReturnType<typeof parseResponse>>; close(): void }>((resolve, reject) => {
      const framer = new TtlvFramer({ maxMessageBytes: 1 << 20 });
      const waiting: ((b: Buffer) => void)[] = [];
      const s = tls.connect({ host: '127.0.0.1', port, ca: pki.caPem, cert: pki.client.cert, key: pki.client.key }, () =>
        resolve({
          send(items) {
            s.write(encodeTtlv(buildRequest({ header: { protocolVersion: { major: 1, minor: 2 }, batchCount: items.length }, items })));
            return new Promise((r) => waiting.push((b) => r(parseResponse(decodeTtlv(b)))));
          },
          close: () => s.destroy(),
        }),
      );
      s.on('data', (d: Buffer) => {
        for (const m of framer.push(d)) waiting.shift()!(m);
      });
      s.once('error', reject);
    });

  const create: RequestBatchItem = {
    operation: Operation.Create,
    payload: ttlv.struct(Tag.RequestPayload, [
      ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey),
      ttlv.struct(Tag.TemplateAttribute, [
        ttlv.struct(Tag.Attribute, [ttlv.text(Tag.AttributeName, 'Cryptographic Algorithm'), ttlv.enumeration(Tag.AttributeValue, CryptographicAlgorithm.AES)]),
        ttlv.struct(Tag.Attribute, [ttlv.text(Tag.AttributeName, 'Cryptographic Length'), ttlv.int(Tag.AttributeValue, 256)]),
        ttlv.struct(Tag.Attribute, [ttlv.text(Tag.AttributeName, 'Cryptographic Usage Mask'), ttlv.int(Tag.AttributeValue, 12)]),
      ]),
    ]),
  };
  const seconds = Number(values.seconds);
  const first = await connect();
  const made = await first.send([create]);
  const id = child(made.items[0].payload!, Tag.UniqueIdentifier)!.value as string;
  first.close();
  const get: RequestBatchItem = { operation: Operation.Get, payload: ttlv.struct(Tag.RequestPayload, [ttlv.text(Tag.UniqueIdentifier, id)]) };

  async function measure(item: RequestBatchItem, conns: number): Promise<number> {
    const clients = await Promise.all(Array.from({ length: conns }, connect));
    const until = Date.now() + seconds * 1000;
    let n = 0;
    let failed = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      clients.map(async (c) => {
        while (Date.now() < until) {
          const r = await c.send([item]);
          if (r.items[0].resultStatus !== 0) failed += 1;
          n += 1;
        }
      }),
    );
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    for (const c of clients) c.close();
    if (failed > 0) throw new Error(`${failed} operations failed`);
    return n / secs;
  }

  const results: Record<string, number> = {};
  for (const [name, item] of [['create', create], ['get', get]] as const)
    for (const conns of [1, 8]) results[`${name}_${conns}conn_ops_per_s`] = Math.round(await measure(item, conns));
  console.log(JSON.stringify({ store: values.store ?? 'sqlite', seconds, ...results }));
  childProc.stdin!.end(JSON.stringify({ cmd: 'exit' }) + '\n');
  await new Promise((r) => childProc.once('exit', r));
}
