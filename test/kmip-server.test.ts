/**
 * The KMIP server against real peers: Debian's PyKMIP client library (a scripted session at KMIP
 * 1.1, 1.2, 1.4 and 2.0) and raw TTLV over TLS for what PyKMIP cannot send (vSphere's Add Attribute
 * batch, Maximum Response Size, ID placeholders), plus REST visibility and rekey-internal, on both
 * stores; and a fuzz run of malformed messages against the running server.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { PASSPHRASE, RUN_DIR, STORES, noteSecret, startWithOkm, type TestServer } from './helpers.js';
import { makePki, type Pki } from './kmip/pki.js';
import { TtlvFramer } from '../src/kmip/framer.js';
import { buildRequest, parseResponse, type RequestBatchItem, type ResponseMessage } from '../src/kmip/message.js';
import { Tag } from '../src/kmip/tags.js';
import { ItemType, child, children, decodeTtlv, encodeTtlv, ttlv, type Ttlv } from '../src/kmip/ttlv.js';
import { BlockCipherMode, CryptographicAlgorithm, NameType, ObjectType, Operation, PaddingMethod, ResultReason, ResultStatus, State } from '../src/kmip/enums.js';

const run = promisify(execFile);
const SCRIPT = join(import.meta.dirname, 'kmip', 'pykmip_session.py');

/** A raw KMIP connection: sends whole messages, reads whole answers. */
class RawKmip {
  private framer = new TtlvFramer({ maxMessageBytes: 16 * 1024 * 1024 });
  private waiting: ((b: Buffer) => void)[] = [];
  private ready: Buffer[] = [];
  private constructor(readonly socket: tls.TLSSocket) {
    socket.on('data', (d: Buffer) => {
      for (const m of this.framer.push(d)) {
        const w = this.waiting.shift();
        if (w) w(m);
        else this.ready.push(m);
      }
    });
  }
  static connect(port: number, pki: Pki, client: { cert: string; key: string }): Promise<RawKmip> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca: readFileSync(pki.caCert), cert: readFileSync(client.cert), key: readFileSync(client.key), servername: 'localhost' }, () => resolve(new RawKmip(s)));
      s.once('error', reject);
    });
  }
  next(): Promise<Buffer> {
    const r = this.ready.shift();
    if (r) return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no answer within 10 s')), 10_000);
      this.waiting.push((b) => {
        clearTimeout(t);
        resolve(b);
      });
    });
  }
  async sendRaw(bytes: Buffer): Promise<Buffer> {
    this.socket.write(bytes);
    return this.next();
  }
  async send(items: RequestBatchItem[], header: { major?: number; minor?: number; maximumResponseSize?: number; batchErrorContinuationOption?: number; authentication?: { username: string; password: string } } = {}): Promise<ResponseMessage> {
    const msg = buildRequest({ header: { protocolVersion: { major: header.major ?? 1, minor: header.minor ?? 1 }, batchCount: items.length, maximumResponseSize: header.maximumResponseSize, batchErrorContinuationOption: header.batchErrorContinuationOption, authentication: header.authentication }, items });
    return parseResponse(decodeTtlv(await this.sendRaw(encodeTtlv(msg))));
  }
  close() {
    this.socket.destroy();
  }
}

const payload = (items: Ttlv[]) => ttlv.struct(Tag.RequestPayload, items);
const attr = (name: string, value: Ttlv, index?: number) =>
  ttlv.struct(Tag.Attribute, [ttlv.text(Tag.AttributeName, name), ...(index !== undefined ? [ttlv.int(Tag.AttributeIndex, index)] : []), { ...value, tag: Tag.AttributeValue } as Ttlv]);
const uidOf = (p: Ttlv | undefined) => (child(p!, Tag.UniqueIdentifier)?.value as string) ?? '';

/** vSphere's Create: AES-256, attributes in the order algorithm, mask, length. */
function vsphereCreate(): RequestBatchItem {
  return {
    operation: Operation.Create,
    uniqueBatchItemId: Buffer.from('QLKC0001'),
    payload: payload([
      ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey),
      ttlv.struct(Tag.TemplateAttribute, [
        attr('Cryptographic Algorithm', ttlv.enumeration(0, CryptographicAlgorithm.AES)),
        attr('Cryptographic Usage Mask', ttlv.int(0, 12)),
        attr('Cryptographic Length', ttlv.int(0, 256)),
      ]),
    ]),
  };
}

/**
 * A server with its KMIP port up, an SVM with an onboard key manager, a client certificate installed
 * for that SVM (`client`) and one that is not (`stranger`).
 */
async function kmipFixture(store: (typeof STORES)[number], prefix: string, svmName: string, clientCn: string, strangerCn: string) {
  const pki = makePki(prefix);
  const s = await startWithOkm({ store, kmip: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert } });
  const r = await s.call('POST', '/api/svm/svms', { name: svmName });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  const svm = { uuid: r.headers.get('location')!.split('/').pop()!, name: svmName };
  expect((await s.call('POST', '/api/security/key-managers', { svm: { name: svm.name }, onboard: { passphrase: PASSPHRASE } })).status).toBe(201);
  const client = pki.client(clientCn);
  const stranger = pki.client(strangerCn);
  expect((await s.call('POST', '/api/security/certificates', { svm: { name: svm.name }, type: 'client', public_certificate: client.pem })).status).toBe(201);
  return { s, pki, client, stranger, svm, port: s.app.kmip!.port };
}

for (const store of STORES) {
  describe(`KMIP server on ${store}`, () => {
    let s: TestServer;
    let pki: Pki;
    let client: ReturnType<Pki['client']>;
    let stranger: ReturnType<Pki['client']>;
    let svm: { uuid: string; name: string };
    let port: number;

    beforeAll(async () => {
      ({ s, pki, client, stranger, svm, port } = await kmipFixture(store, 'ks-kmip-', 'kmipsvm', 'vcenter.example', 'not-installed'));
    });
    afterAll(() => s?.close());

    const versions = store === 'sqlite' ? ['1.1', '1.2', '1.4', '2.0'] : ['1.2', '2.0'];
    for (const version of versions) {
      it(`PyKMIP ${version}: a whole session, with its error paths`, async () => {
        const { stdout } = await run('/usr/bin/python3', [SCRIPT, '127.0.0.1', String(port), client.cert, client.key, pki.caCert, version], { timeout: 60_000 });
        writeFileSync(join(RUN_DIR, `pykmip-${store}-${version}.json`), stdout);
        const o = JSON.parse(stdout);
        const v2 = version === '2.0';
        noteSecret('s3cret-pa55word!');
        expect(o.discover_versions).toEqual({ ok: true, value: [[2, 1], [2, 0], [1, 4], [1, 3], [1, 2], [1, 1], [1, 0]] });
        expect(o.query.ok).toBe(true);
        expect(o.query.value.status).toBe('SUCCESS');
        expect(o.query.value.operations).toEqual(expect.arrayContaining(['CREATE', 'REGISTER', 'GET', 'LOCATE', 'ACTIVATE', 'REVOKE', 'DESTROY', 'ENCRYPT', 'DECRYPT', 'ADD_ATTRIBUTE', 'REKEY', 'CHECK']));
        expect(o.query.value.objects).toEqual(['SECRET_DATA', 'SYMMETRIC_KEY']);
        expect(o.query.value.vendor).toBe('Keysmith');
        expect(o.create.ok).toBe(true);
        expect(o.create.value).toMatch(/^dek_/);
        expect(o.get_attributes_created.ok).toBe(true);
        expect(o.get_attributes_created.value).toMatchObject({ State: 'PRE_ACTIVE', 'Cryptographic Algorithm': 'AES', 'Cryptographic Length': 256, 'Object Type': 'SYMMETRIC_KEY' });
        expect(o.get_attributes_created.value.Name).toMatch(/^pykmip-/);
        expect(o.get_attribute_list.ok).toBe(true);
        expect(o.get_attribute_list.value).toEqual(expect.arrayContaining(['Unique Identifier', 'State', 'Cryptographic Algorithm', 'Cryptographic Usage Mask', ...(v2 ? [] : ['Name'])]));
        expect(o.locate_by_name).toEqual({ ok: true, value: [o.create.value] });
        expect(o.get_preactive).toEqual({ ok: true, value: 32 });
        expect(o.activate.ok).toBe(true);
        expect(o.get_attributes_active.value).toEqual({ State: 'ACTIVE' });
        expect(o.locate_active_keys).toEqual({ ok: true, value: true });
        expect(o.locate_paged).toEqual({ ok: true, value: 1 });
        expect(o.encrypt_decrypt).toEqual({ ok: true, value: { iv_len: 16, ct_len: 32, same: true, changed: true } });
        expect(o.destroy_active).toMatchObject({ ok: false, status: 'OPERATION_FAILED', reason: 'PERMISSION_DENIED' });
        expect(o.revoke.ok).toBe(true);
        expect(o.get_attributes_revoked.value).toEqual({ State: 'DEACTIVATED' });
        expect(o.destroy.ok).toBe(true);
        expect(o.get_destroyed).toMatchObject({ ok: false, status: 'OPERATION_FAILED' });
        expect(o.get_unknown).toMatchObject({ ok: false, status: 'OPERATION_FAILED', reason: 'ITEM_NOT_FOUND' });
        expect(o.register_key.ok).toBe(true);
        expect(o.get_registered).toEqual({ ok: true, value: Buffer.from(Array.from({ length: 32 }, (_, i) => i)).toString('hex') });
        expect(o.register_secret.ok).toBe(true);
        expect(o.get_secret).toEqual({ ok: true, value: { value: 's3cret-pa55word!', type: 'SecretData' } });
        expect(o.locate_secret.value).toContain(o.ids.secret);

        // The same keys, seen through the REST data plane of the SVM the certificate belongs to.
        const created = await s.call('GET', `/api/v1/svms/${svm.uuid}/keys/${o.ids.created}`);
        expect(created.body).toMatchObject({ id: o.ids.created, state: 'destroyed', length: 256, algorithm: 'AES' });
        expect(created.body.name).toMatch(/^pykmip-/);
        const registered = await s.call('GET', `/api/v1/svms/${svm.uuid}/keys/${o.ids.registered}`);
        expect(registered.body).toMatchObject({ state: 'pre-active', length: 256 });
        // Every state change and every read of material left an audit event naming the certificate.
        const events = await s.app.services.audit.query({ objectId: o.ids.created, limit: 100 });
        const actions = events.map((e: any) => e.action);
        expect(actions).toEqual(expect.arrayContaining(['kmip.create', 'kmip.get', 'key.activate', 'kmip.encrypt', 'kmip.decrypt', 'key.deactivate', 'key.destroy']));
        for (const e of events.filter((x: any) => x.action !== 'key.read')) expect(e.actor).toMatch(/^certificate:vcenter\.example:/);
      });
    }

    it('a client certificate that is not installed is refused (Authentication Not Successful); Query still answers', async () => {
      const { stdout } = await run('/usr/bin/python3', [SCRIPT, '127.0.0.1', String(port), stranger.cert, stranger.key, pki.caCert, '1.2', 'refused'], { timeout: 60_000 });
      const o = JSON.parse(stdout);
      expect(o.create).toMatchObject({ ok: false, status: 'OPERATION_FAILED', reason: 'AUTHENTICATION_NOT_SUCCESSFUL' });
      expect(o.query).toEqual({ ok: true, value: 'SUCCESS' });
    });

    it('a client certificate deleted over REST stops working on a connection already open', async () => {
      const later = pki.client('deleted-later');
      const inst = await s.call('POST', '/api/security/certificates', { svm: { name: svm.name }, type: 'client', public_certificate: later.pem });
      expect(inst.status).toBe(201);
      const certUuid = inst.body.records?.[0]?.uuid ?? inst.headers.get('location')!.split('/').pop();
      const k = await RawKmip.connect(port, pki, later);
      try {
        const before = await k.send([vsphereCreate()]);
        expect(before.items[0].resultStatus).toBe(ResultStatus.Success);
        const del = await s.call('DELETE', `/api/security/certificates/${certUuid}`);
        expect(del.status).toBe(200);
        const after = await k.send([vsphereCreate()]);
        expect(after.items[0]).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.AuthenticationNotSuccessful });
      } finally {
        k.close();
      }
    });

    it('a client certificate from another CA does not get past the TLS handshake', async () => {
      const other = makePki('ks-other-');
      const c = other.client('outsider');
      const sock = tls.connect({ host: '127.0.0.1', port, ca: readFileSync(pki.caCert), cert: readFileSync(c.cert), key: readFileSync(c.key), servername: 'localhost' });
      const outcome = await new Promise<string>((resolve) => {
        sock.on('secureConnect', () => sock.write(encodeTtlv(buildRequest({ header: { protocolVersion: { major: 1, minor: 2 }, batchCount: 1 }, items: [{ operation: Operation.DiscoverVersions, payload: payload([]) }] }))));
        sock.on('data', () => resolve('answered'));
        sock.on('error', () => resolve('refused'));
        sock.on('close', () => resolve('refused'));
        setTimeout(() => resolve('timeout'), 5000);
      });
      sock.destroy();
      expect(outcome).toBe('refused');
    });

    it("vSphere's session: Create in its attribute order, Get Attributes of x- names, a batch of three Add Attribute with Unique Batch Item IDs, Get Raw, Activate", async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const dv = await k.send([{ operation: Operation.DiscoverVersions, payload: payload([]) }]);
        expect(dv.items[0].resultStatus).toBe(ResultStatus.Success);
        const cr = await k.send([vsphereCreate()]);
        expect(cr.protocolVersion).toEqual({ major: 1, minor: 1 });
        expect(cr.items[0].uniqueBatchItemId).toEqual(Buffer.from('QLKC0001'));
        const id = uidOf(cr.items[0].payload);
        const ga = await k.send([{ operation: Operation.GetAttributes, uniqueBatchItemId: Buffer.from('QLKC0002'), payload: payload([ttlv.text(Tag.UniqueIdentifier, id), ...['x-Product_Version', 'x-Product', 'x-Vendor', 'State'].map((n) => ttlv.text(Tag.AttributeName, n))]) }]);
        const got = children(ga.items[0].payload!, Tag.Attribute);
        expect(got.map((a) => child(a, Tag.AttributeName)!.value)).toEqual(['State']);
        expect(child(got[0], Tag.AttributeValue)!.value).toBe(State.PreActive);
        const adds = [
          ['x-Product_Version', '8.0.2'],
          ['x-Vendor', 'VMware, Inc.'],
          ['x-Product', 'VMware vSphere'],
        ].map(([n, v], i) => ({ operation: Operation.AddAttribute, uniqueBatchItemId: Buffer.from(`QLKC000${3 + i}`), payload: payload([ttlv.text(Tag.UniqueIdentifier, id), attr(n, ttlv.text(0, v))]) }));
        const add = await k.send(adds);
        expect(add.items.map((i) => i.resultStatus)).toEqual([0, 0, 0]);
        expect(add.items.map((i) => i.uniqueBatchItemId!.toString())).toEqual(['QLKC0003', 'QLKC0004', 'QLKC0005']);
        const ga2 = await k.send([{ operation: Operation.GetAttributes, payload: payload([ttlv.text(Tag.UniqueIdentifier, id), ttlv.text(Tag.AttributeName, 'x-Vendor'), ttlv.text(Tag.AttributeName, 'x-Product')]) }]);
        expect(children(ga2.items[0].payload!, Tag.Attribute).map((a) => child(a, Tag.AttributeValue)!.value).sort()).toEqual(['VMware vSphere', 'VMware, Inc.']);
        const get = await k.send([{ operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, id)]) }]);
        const block = child(child(get.items[0].payload!, Tag.SymmetricKey)!, Tag.KeyBlock)!;
        expect(child(block, Tag.KeyFormatType)!.value).toBe(1);
        expect((child(child(block, Tag.KeyValue)!, Tag.KeyMaterial)!.value as Buffer).length).toBe(32);
        const act = await k.send([{ operation: Operation.Activate, payload: payload([ttlv.text(Tag.UniqueIdentifier, id)]) }]);
        expect(act.items[0].resultStatus).toBe(ResultStatus.Success);
        // Locate by a custom attribute (ONTAP and SAN arrays do this).
        const loc = await k.send([{ operation: Operation.Locate, payload: payload([attr('x-Product', ttlv.text(0, 'VMware vSphere'))]) }]);
        expect(children(loc.items[0].payload!, Tag.UniqueIdentifier).map((u) => u.value)).toContain(id);
      } finally {
        k.close();
      }
    });

    it("MySQL's Create: Attribute Index 0 everywhere, a Storage Status Mask, Maximum Response Size; a too-small maximum is Response Too Large", async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const item: RequestBatchItem = {
          operation: Operation.Create,
          payload: payload([
            ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey),
            ttlv.struct(Tag.TemplateAttribute, [
              attr('Cryptographic Algorithm', ttlv.enumeration(0, CryptographicAlgorithm.AES), 0),
              attr('Cryptographic Length', ttlv.int(0, 256), 0),
              attr('Cryptographic Usage Mask', ttlv.int(0, 12), 0),
              attr('Storage Status Mask', ttlv.int(0, 1), 0),
              attr('Name', ttlv.struct(0, [ttlv.text(Tag.NameValue, `mysql-${randomBytes(3).toString('hex')}`), ttlv.enumeration(Tag.NameType, NameType.UninterpretedTextString)]), 0),
            ]),
          ]),
        };
        const ok = await k.send([item], { maximumResponseSize: 280000 });
        expect(ok.items[0].resultStatus).toBe(ResultStatus.Success);
        const id = uidOf(ok.items[0].payload);
        const big = await k.send([{ operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, id)]) }], { maximumResponseSize: 64 });
        expect(big.items[0]).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.ResponseTooLarge });
        expect(big.items[0].payload).toBeUndefined();
      } finally {
        k.close();
      }
    });

    it("ONTAP's Register with x-NETAPP-* attributes, then a KMIP 1.0 batch of Query + Locate by two custom attributes + Get in Opaque (MongoDB's Secret Data)", async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const cluster = `cluster-${randomBytes(3).toString('hex')}`;
        const netapp = [
          ['x-NETAPP-ClusterName', cluster],
          ['x-NETAPP-ClusterId', 'c0ffee'],
          ['x-NETAPP-KeyUsage', 'NSE-AK'],
          ['x-NETAPP-Product', 'Data ONTAP'],
        ];
        const material = randomBytes(32);
        noteSecret(material.toString('hex'));
        const reg = await k.send([
          {
            operation: Operation.Register,
            payload: payload([
              ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey),
              ttlv.struct(Tag.TemplateAttribute, [attr('Cryptographic Usage Mask', ttlv.int(0, 12)), ...netapp.map(([n, v]) => attr(n, ttlv.text(0, v)))]),
              ttlv.struct(Tag.SymmetricKey, [
                ttlv.struct(Tag.KeyBlock, [
                  ttlv.enumeration(Tag.KeyFormatType, 7), // Transparent Symmetric Key
                  ttlv.struct(Tag.KeyValue, [ttlv.struct(Tag.KeyMaterial, [ttlv.bytes(Tag.Key, material)])]),
                  ttlv.enumeration(Tag.CryptographicAlgorithm, CryptographicAlgorithm.AES),
                  ttlv.int(Tag.CryptographicLength, 256),
                ]),
              ]),
            ]),
          },
        ]);
        expect(reg.items[0].resultStatus).toBe(0);
        const id = uidOf(reg.items[0].payload);
        const secret = randomBytes(96);
        noteSecret(secret.toString('hex'));
        const sd = await k.send(
          [
            {
              operation: Operation.Register,
              payload: payload([
                ttlv.enumeration(Tag.ObjectType, ObjectType.SecretData),
                ttlv.struct(Tag.TemplateAttribute, [attr('Cryptographic Usage Mask', ttlv.int(0, 0)), attr('x-ResourceID', ttlv.text(0, cluster))]),
                ttlv.struct(Tag.SecretData, [ttlv.enumeration(Tag.SecretDataType, 2), ttlv.struct(Tag.KeyBlock, [ttlv.enumeration(Tag.KeyFormatType, 2), ttlv.struct(Tag.KeyValue, [ttlv.bytes(Tag.KeyMaterial, secret)])])]),
              ]),
            },
          ],
          { minor: 0 },
        );
        expect(sd.protocolVersion).toEqual({ major: 1, minor: 0 });
        const sdId = uidOf(sd.items[0].payload);
        const batch = await k.send(
          [
            { operation: Operation.Query, payload: payload([ttlv.enumeration(Tag.QueryFunction, 1)]) },
            { operation: Operation.Locate, payload: payload([attr('x-NETAPP-ClusterName', ttlv.text(0, cluster)), attr('x-NETAPP-KeyUsage', ttlv.text(0, 'NSE-AK'))]) },
            { operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, sdId)]) },
            { operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, id), ttlv.enumeration(Tag.KeyFormatType, 7)]) },
          ],
          { minor: 0 },
        );
        expect(batch.items.map((i) => i.resultStatus)).toEqual([0, 0, 0, 0]);
        expect(children(batch.items[1].payload!, Tag.UniqueIdentifier).map((u) => u.value)).toEqual([id]);
        expect(child(batch.items[1].payload!, Tag.LocatedItems)).toBeUndefined(); // 1.3+ only
        const sdBlock = child(child(batch.items[2].payload!, Tag.SecretData)!, Tag.KeyBlock)!;
        expect(child(sdBlock, Tag.KeyFormatType)!.value).toBe(2);
        expect((child(child(sdBlock, Tag.KeyValue)!, Tag.KeyMaterial)!.value as Buffer).equals(secret)).toBe(true);
        const tsk = child(child(child(child(batch.items[3].payload!, Tag.SymmetricKey)!, Tag.KeyBlock)!, Tag.KeyValue)!, Tag.KeyMaterial)!;
        expect((child(tsk, Tag.Key)!.value as Buffer).equals(material)).toBe(true);
        // A wrong length for the material is refused and stores nothing.
        const before = await s.app.services.store.db.selectFrom('deks').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
        const bad = await k.send([
          {
            operation: Operation.Register,
            payload: payload([
              ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey),
              ttlv.struct(Tag.SymmetricKey, [ttlv.struct(Tag.KeyBlock, [ttlv.enumeration(Tag.KeyFormatType, 1), ttlv.struct(Tag.KeyValue, [ttlv.bytes(Tag.KeyMaterial, randomBytes(31))]), ttlv.enumeration(Tag.CryptographicAlgorithm, CryptographicAlgorithm.AES), ttlv.int(Tag.CryptographicLength, 256)])]),
            ]),
          },
        ]);
        expect(bad.items[0]).toMatchObject({ resultStatus: 1, resultReason: ResultReason.InvalidField });
        const after = await s.app.services.store.db.selectFrom('deks').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
        expect(Number(after.n)).toBe(Number(before.n));
      } finally {
        k.close();
      }
    });

    it('batches: ID placeholder (Create then Activate), errors stop the batch unless Continue is asked', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const r = await k.send([vsphereCreate(), { operation: Operation.Activate, payload: payload([]) }, { operation: Operation.GetAttributes, payload: payload([ttlv.text(Tag.AttributeName, 'State')]) }], { minor: 4 });
        expect(r.items.map((i) => i.resultStatus)).toEqual([0, 0, 0]);
        expect(child(child(r.items[2].payload!, Tag.Attribute)!, Tag.AttributeValue)!.value).toBe(State.Active);
        const missing = { operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, 'nope')]) };
        const q = { operation: Operation.DiscoverVersions, payload: payload([]) };
        const stop = await k.send([missing, q]);
        expect(stop.items).toHaveLength(1);
        expect(stop.items[0].resultReason).toBe(ResultReason.ItemNotFound);
        expect(stop.items[0].resultMessage).toMatch(/Unique Identifier/);
        const cont = await k.send([missing, q], { batchErrorContinuationOption: 1 });
        expect(cont.items.map((i) => i.resultStatus)).toEqual([1, 0]);
        const unsupported = await k.send([{ operation: Operation.Certify, payload: payload([]) }]);
        expect(unsupported.items[0]).toMatchObject({ resultStatus: 1, resultReason: ResultReason.OperationNotSupported });
      } finally {
        k.close();
      }
    });

    it('a batch of reads shares its audit commit: Create, Get ×3 and Destroy by ID placeholder answer in order, each Get audited before the answer and before the Destroy', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const get = { operation: Operation.Get, payload: payload([]) };
        const r = await k.send([vsphereCreate(), get, get, get, { operation: Operation.Destroy, payload: payload([]) }, get], { minor: 2, batchErrorContinuationOption: 1 });
        expect(r.items.map((i) => i.resultStatus)).toEqual([0, 0, 0, 0, 0, 1]);
        const id = uidOf(r.items[0].payload);
        const keys = r.items.slice(1, 4).map((i) => child(child(child(child(i.payload!, Tag.SymmetricKey)!, Tag.KeyBlock)!, Tag.KeyValue)!, Tag.KeyMaterial)!.value as Buffer);
        expect(keys[0]).toHaveLength(32);
        expect(keys[1].equals(keys[0]) && keys[2].equals(keys[0])).toBe(true);
        expect(r.items[5].resultReason).toBe(ResultReason.KeyValueNotPresent);
        // The answer came after the reads were recorded, in the batch's order.
        const events = await s.app.services.audit.query({ objectId: id, limit: 20 });
        const actions = [...events].sort((a, b) => Number(a.seq) - Number(b.seq)).map((e) => `${e.action}:${e.outcome}`);
        expect(actions.slice(0, 5)).toEqual(['kmip.create:success', 'kmip.get:success', 'kmip.get:success', 'kmip.get:success', 'key.destroy:success']);
      } finally {
        k.close();
      }
    });

    it('ReKey makes a new active key linked both ways; Check; Modify and Delete Attribute', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const cr = await k.send([vsphereCreate(), { operation: Operation.Activate, payload: payload([]) }, { operation: Operation.AddAttribute, payload: payload([attr('x-Owner', ttlv.text(0, 'team-a'))]) }]);
        const oldId = uidOf(cr.items[0].payload);
        const rk = await k.send([{ operation: Operation.Rekey, payload: payload([ttlv.text(Tag.UniqueIdentifier, oldId)]) }], { minor: 2 });
        expect(rk.items[0].resultStatus).toBe(0);
        const newId = uidOf(rk.items[0].payload);
        expect(newId).not.toBe(oldId);
        const ga = await k.send([
          { operation: Operation.GetAttributes, payload: payload([ttlv.text(Tag.UniqueIdentifier, newId), ttlv.text(Tag.AttributeName, 'Link'), ttlv.text(Tag.AttributeName, 'State'), ttlv.text(Tag.AttributeName, 'x-Owner')]) },
          { operation: Operation.GetAttributes, payload: payload([ttlv.text(Tag.UniqueIdentifier, oldId), ttlv.text(Tag.AttributeName, 'Link')]) },
        ]);
        const byName = (p: Ttlv) => Object.fromEntries(children(p, Tag.Attribute).map((a) => [child(a, Tag.AttributeName)!.value, child(a, Tag.AttributeValue)!]));
        const n = byName(ga.items[0].payload!);
        expect(n.State.value).toBe(State.Active);
        expect(n['x-Owner'].value).toBe('team-a');
        expect(child(n.Link, Tag.LinkedObjectIdentifier)!.value).toBe(oldId);
        expect(child(byName(ga.items[1].payload!).Link, Tag.LinkedObjectIdentifier)!.value).toBe(newId);
        const chk = await k.send([{ operation: Operation.Check, payload: payload([ttlv.text(Tag.UniqueIdentifier, newId), ttlv.int(Tag.CryptographicUsageMask, 4)]) }]);
        expect(chk.items[0].resultStatus).toBe(0);
        const chkBad = await k.send([{ operation: Operation.Check, payload: payload([ttlv.text(Tag.UniqueIdentifier, newId), ttlv.int(Tag.CryptographicUsageMask, 1)]) }]);
        expect(chkBad.items[0].resultStatus).toBe(1);
        const mod = await k.send([{ operation: Operation.ModifyAttribute, payload: payload([ttlv.text(Tag.UniqueIdentifier, newId), attr('x-Owner', ttlv.text(0, 'team-b'), 0)]) }]);
        expect(mod.items[0].resultStatus).toBe(0);
        const del = await k.send([{ operation: Operation.DeleteAttribute, payload: payload([ttlv.text(Tag.UniqueIdentifier, newId), ttlv.text(Tag.AttributeName, 'x-Owner')]) }]);
        expect(child(child(del.items[0].payload!, Tag.Attribute)!, Tag.AttributeValue)!.value).toBe('team-b');
        const ro = await k.send([{ operation: Operation.AddAttribute, payload: payload([ttlv.text(Tag.UniqueIdentifier, newId), attr('State', ttlv.enumeration(0, 1))]) }]);
        expect(ro.items[0].resultReason).toBe(ResultReason.PermissionDenied);
      } finally {
        k.close();
      }
    });

    it('a key created over KMIP unwraps to the same bytes after rekey-internal of its SVM', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const cr = await k.send([vsphereCreate(), { operation: Operation.Get, payload: payload([]) }]);
        const id = uidOf(cr.items[0].payload);
        const material = child(child(child(child(cr.items[1].payload!, Tag.SymmetricKey)!, Tag.KeyBlock)!, Tag.KeyValue)!, Tag.KeyMaterial)!.value as Buffer;
        const before = await s.app.services.store.db.selectFrom('deks').select(['kek_version', 'wrapped']).where('id', '=', id).executeTakeFirstOrThrow();
        const kms = await s.call('GET', `/api/security/key-managers?svm.uuid=${svm.uuid}`);
        const rk = await s.call('POST', `/api/security/key-managers/${kms.body.records[0].uuid}/rekey-internal?return_timeout=120`);
        expect([200, 201, 202]).toContain(rk.status);
        const after = await s.app.services.store.db.selectFrom('deks').select(['kek_version', 'wrapped']).where('id', '=', id).executeTakeFirstOrThrow();
        expect(after.kek_version).toBeGreaterThan(before.kek_version);
        expect(Buffer.from(after.wrapped!).equals(Buffer.from(before.wrapped!))).toBe(false);
        const again = await k.send([{ operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, id)]) }]);
        const m2 = child(child(child(child(again.items[0].payload!, Tag.SymmetricKey)!, Tag.KeyBlock)!, Tag.KeyValue)!, Tag.KeyMaterial)!.value as Buffer;
        expect(m2.equals(material)).toBe(true);
      } finally {
        k.close();
      }
    });

    it("ONTAP's Username/Password credential: a local user's names the principal; a wrong one is Authentication Not Successful", async () => {
      const password = `kmip-pw-${randomBytes(8).toString('hex')}`;
      noteSecret(password);
      const u = await s.call('POST', '/api/v1/auth/users', { name: `ontap-${randomBytes(3).toString('hex')}`, password, role: 'application', svms: [svm.name] });
      expect(u.status).toBe(201);
      // The stranger's certificate is not installed: the credential alone makes it a principal of the user's SVM.
      const k = await RawKmip.connect(port, pki, stranger);
      try {
        const ok = await k.send([vsphereCreate()], { authentication: { username: u.body.name, password } });
        expect(ok.items[0].resultStatus).toBe(ResultStatus.Success);
        const id = uidOf(ok.items[0].payload);
        expect((await s.call('GET', `/api/v1/svms/${svm.uuid}/keys/${id}`)).status).toBe(200);
        const events = await s.app.services.audit.query({ objectId: id, limit: 10 });
        expect(events.find((e: any) => e.action === 'kmip.create')!.actor).toBe(`user:${u.body.name}:${u.body.id}`);
        const bad = await k.send([vsphereCreate()], { authentication: { username: u.body.name, password: 'not the password at all' } });
        expect(bad.items[0]).toMatchObject({ resultStatus: 1, resultReason: ResultReason.AuthenticationNotSuccessful });
        expect(JSON.stringify(bad.items[0].resultMessage)).not.toContain('not the password');
      } finally {
        k.close();
      }
    });

    it('a sealed node answers key operations with General Failure and the catalog message, and serves again once unsealed', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const cr = await k.send([vsphereCreate()]);
        const id = uidOf(cr.items[0].payload);
        expect((await s.call('POST', '/api/v1/sys/seal')).status).toBe(200);
        const sealed = await k.send([{ operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, id)]) }, { operation: Operation.DiscoverVersions, payload: payload([]) }], { batchErrorContinuationOption: 1 });
        expect(sealed.items[0]).toMatchObject({ resultStatus: 1, resultReason: ResultReason.GeneralFailure });
        expect(sealed.items[0].resultMessage).toMatch(/sealed/);
        expect(sealed.items[1].resultStatus).toBe(0);
        expect((await s.call('POST', '/api/v1/sys/unseal', { passphrase: PASSPHRASE })).status).toBe(200);
        const again = await k.send([{ operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, id)]) }]);
        expect(again.items[0].resultStatus).toBe(0);
      } finally {
        k.close();
      }
    });

    it('answers unreadable messages with Invalid Message (1.0 when no version was read) and keeps serving', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        // A structure holding an item with an unknown type byte.
        const junk = Buffer.from('42007801000000104200690f0000000800000000000000000000', 'hex').subarray(0, 24);
        const a = parseResponse(decodeTtlv(await k.sendRaw(junk)));
        expect(a.protocolVersion).toEqual({ major: 1, minor: 0 });
        expect(a.items[0]).toMatchObject({ resultStatus: 1, resultReason: ResultReason.InvalidMessage });
        expect(a.items[0].operation).toBeUndefined();
        // A 1.4 header with a Batch Count that does not match: answered in 1.4.
        const bad = buildRequest({ header: { protocolVersion: { major: 1, minor: 4 }, batchCount: 2 }, items: [{ operation: Operation.DiscoverVersions, payload: payload([]) }] });
        const b = parseResponse(decodeTtlv(await k.sendRaw(encodeTtlv(bad))));
        expect(b.protocolVersion).toEqual({ major: 1, minor: 4 });
        expect(b.items[0].resultReason).toBe(ResultReason.InvalidMessage);
        const ok = await k.send([{ operation: Operation.DiscoverVersions, payload: payload([]) }]);
        expect(ok.items[0].resultStatus).toBe(0);
      } finally {
        k.close();
      }
    });
  });
}

describe('KMIP server under fuzzing', () => {
  let s: TestServer;
  let pki: Pki;
  let client: ReturnType<Pki['client']>;
  beforeAll(async () => {
    pki = makePki('ks-fuzz-');
    s = await startWithOkm({ store: 'sqlite', kmip: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert } });
    client = pki.client('fuzzer');
    await s.call('POST', '/api/security/certificates', { type: 'client', public_certificate: client.pem });
  });
  afterAll(() => s?.close());

  it('thousands of malformed and random messages: no crash, no hang, bounded memory, and a valid request is still answered', async () => {
    const { fuzzMessages, validRequest } = await import('../src/kmip/testing/fuzz.js');
    const port = s.app.kmip!.port;
    const rssBefore = process.memoryUsage().rss;
    let k = await RawKmip.connect(port, pki, client);
    let answered = 0;
    let closed = 0;
    let unframed = 0;
    const started = Date.now();
    for (const c of fuzzMessages(20261125, 6000)) {
      if (!c.framed) {
        // Truncated or oversized or not a structure: the server may wait or close; either way it must not
        // take the process down. A fresh connection each, closed by us if the server keeps waiting.
        if (unframed++ >= 150) continue;
        const u = await RawKmip.connect(port, pki, client);
        u.socket.write(c.bytes);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 20);
          u.socket.once('close', () => {
            clearTimeout(t);
            resolve();
          });
        });
        u.close();
        continue;
      }
      const outcome = await Promise.race([
        k.sendRaw(c.bytes).then((b) => {
          // Whatever comes back is a well-formed KMIP response.
          parseResponse(decodeTtlv(b));
          return 'answer' as const;
        }),
        new Promise<'closed'>((resolve) => k.socket.once('close', () => resolve('closed'))),
      ]);
      if (outcome === 'answer') answered += 1;
      else {
        closed += 1;
        k = await RawKmip.connect(port, pki, client);
      }
    }
    k.close();
    expect(answered).toBeGreaterThan(3000);
    expect(Date.now() - started).toBeLessThan(120_000);
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(300 * 1024 * 1024);
    // Still serving: a valid Discover Versions on a new connection.
    const after = await RawKmip.connect(port, pki, client);
    const r = parseResponse(decodeTtlv(await after.sendRaw(validRequest(Operation.DiscoverVersions))));
    expect(r.items[0].resultStatus).toBe(ResultStatus.Success);
    after.close();
    void closed;
  }, 180_000);
});

describe('KMIP server on a store that could not commit', () => {
  it('answers every batch item with Operation Failed and General Failure, never a success it could not keep', async () => {
    const pki = makePki('ks-poison-');
    const s = await startWithOkm({ store: 'sqlite', kmip: { cert: pki.serverCert, key: pki.serverKey, ca: pki.caCert } });
    const client = pki.client('poisoned');
    await s.call('POST', '/api/security/certificates', { type: 'client', public_certificate: client.pem });
    const k = await RawKmip.connect(s.app.kmip!.port, pki, client);
    try {
      const before = await k.send([{ operation: Operation.DiscoverVersions, payload: payload([]) }]);
      expect(before.items[0].resultStatus).toBe(0);
      // What the store's driver does when a group COMMIT fails after its transactions returned.
      s.app.services.store.durability.poison(new Error('disk I/O error'));
      const after = await k.send([
        { operation: Operation.DiscoverVersions, payload: payload([]) },
        { operation: Operation.Query, payload: payload([]) },
      ]);
      expect(after.items.map((i) => [i.resultStatus, i.resultReason])).toEqual([
        [ResultStatus.OperationFailed, ResultReason.GeneralFailure],
        [ResultStatus.OperationFailed, ResultReason.GeneralFailure],
      ]);
    } finally {
      k.close();
      await s.close().catch(() => undefined);
    }
  });
});

/** An AES-256 Create with this Cryptographic Usage Mask and, when given, an x-Batch attribute to locate it by. */
function createWith(mask: number, batch?: string): RequestBatchItem {
  return {
    operation: Operation.Create,
    payload: payload([
      ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey),
      ttlv.struct(Tag.TemplateAttribute, [
        attr('Cryptographic Algorithm', ttlv.enumeration(0, CryptographicAlgorithm.AES)),
        attr('Cryptographic Length', ttlv.int(0, 256)),
        attr('Cryptographic Usage Mask', ttlv.int(0, mask)),
        ...(batch ? [attr('x-Batch', ttlv.text(0, batch))] : []),
      ]),
    ]),
  };
}

const cryptoParams = (mode: number, padding?: number) =>
  ttlv.struct(Tag.CryptographicParameters, [ttlv.enumeration(Tag.BlockCipherMode, mode), ...(padding !== undefined ? [ttlv.enumeration(Tag.PaddingMethod, padding)] : [])]);

for (const store of STORES) {
  describe(`KMIP server on ${store}: committed results, cipher audits, credentials, Locate pages`, () => {
    let s: TestServer;
    let pki: Pki;
    let client: ReturnType<Pki['client']>;
    let stranger: ReturnType<Pki['client']>;
    let svm: { uuid: string; name: string };
    let port: number;

    beforeAll(async () => {
      ({ s, pki, client, stranger, svm, port } = await kmipFixture(store, 'ks-kmip-review-', 'kmipreview', 'review.example', 'review-stranger'));
    });
    afterAll(() => s?.close());

    it('over the Maximum Response Size, committed items keep their results and only reads answer Response Too Large', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const r = await k.send([createWith(12), { operation: Operation.Activate, payload: payload([]) }, { operation: Operation.Get, payload: payload([]) }], { minor: 2, maximumResponseSize: 64 });
        expect(r.items.map((i) => [i.operation, i.resultStatus, i.resultReason])).toEqual([
          [Operation.Create, ResultStatus.Success, undefined],
          [Operation.Activate, ResultStatus.Success, undefined],
          [Operation.Get, ResultStatus.OperationFailed, ResultReason.ResponseTooLarge],
        ]);
        expect(r.items[2].payload).toBeUndefined();
        const id = uidOf(r.items[0].payload);
        expect(id).toMatch(/^dek_/);
        expect(uidOf(r.items[1].payload)).toBe(id);
        // The key exists and is Active: the Create and the Activate did happen, as the answer said.
        const after = await k.send([
          { operation: Operation.Get, payload: payload([ttlv.text(Tag.UniqueIdentifier, id)]) },
          { operation: Operation.GetAttributes, payload: payload([ttlv.text(Tag.UniqueIdentifier, id), ttlv.text(Tag.AttributeName, 'State')]) },
        ]);
        expect(after.items.map((i) => i.resultStatus)).toEqual([ResultStatus.Success, ResultStatus.Success]);
        const material = child(child(child(child(after.items[0].payload!, Tag.SymmetricKey)!, Tag.KeyBlock)!, Tag.KeyValue)!, Tag.KeyMaterial)!.value as Buffer;
        expect(material).toHaveLength(32);
        expect(child(child(after.items[1].payload!, Tag.Attribute)!, Tag.AttributeValue)!.value).toBe(State.Active);
        // A Destroy that committed is reported done even when the response stays over the maximum.
        const gone = await k.send([{ operation: Operation.Revoke, payload: payload([ttlv.text(Tag.UniqueIdentifier, id), ttlv.struct(Tag.RevocationReason, [ttlv.enumeration(Tag.RevocationReasonCode, 5)])]) }, { operation: Operation.Destroy, payload: payload([]) }], { maximumResponseSize: 16 });
        expect(gone.items.map((i) => i.resultStatus)).toEqual([ResultStatus.Success, ResultStatus.Success]);
        expect((await s.call('GET', `/api/v1/svms/${svm.uuid}/keys/${id}`)).body).toMatchObject({ id, state: 'destroyed' });
      } finally {
        k.close();
      }
    });

    it('Encrypt/Decrypt audit the real outcome: a wrong GCM tag or bad CBC padding is Cryptographic Failure and audited as a failure, never as a success', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const cr = await k.send([createWith(12), { operation: Operation.Activate, payload: payload([]) }]);
        const id = uidOf(cr.items[0].payload);
        const plain = randomBytes(40);
        const enc = await k.send([{ operation: Operation.Encrypt, payload: payload([ttlv.text(Tag.UniqueIdentifier, id), cryptoParams(BlockCipherMode.GCM), ttlv.bytes(Tag.Data, plain)]) }]);
        expect(enc.items[0].resultStatus).toBe(ResultStatus.Success);
        const ct = child(enc.items[0].payload!, Tag.Data)!.value as Buffer;
        const iv = child(enc.items[0].payload!, Tag.IVCounterNonce)!.value as Buffer;
        const tag = child(enc.items[0].payload!, Tag.AuthenticatedEncryptionTag)!.value as Buffer;
        const decrypt = (t: Buffer) => ({ operation: Operation.Decrypt, payload: payload([ttlv.text(Tag.UniqueIdentifier, id), cryptoParams(BlockCipherMode.GCM), ttlv.bytes(Tag.Data, ct), ttlv.bytes(Tag.IVCounterNonce, iv), ttlv.bytes(Tag.AuthenticatedEncryptionTag, t)]) });
        const wrong = Buffer.from(tag);
        wrong[0] ^= 1;
        const bad = await k.send([decrypt(wrong)]);
        expect(bad.items[0]).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.CryptographicFailure });
        expect(bad.items[0].payload).toBeUndefined();
        // CBC: a block ending in 0x00, encrypted without padding, does not decrypt with PKCS5 padding.
        const block = Buffer.concat([randomBytes(15), Buffer.from([0])]);
        const cbc = await k.send([{ operation: Operation.Encrypt, payload: payload([ttlv.text(Tag.UniqueIdentifier, id), cryptoParams(BlockCipherMode.CBC, PaddingMethod.None), ttlv.bytes(Tag.Data, block)]) }]);
        expect(cbc.items[0].resultStatus).toBe(ResultStatus.Success);
        const cbcBad = await k.send([
          {
            operation: Operation.Decrypt,
            payload: payload([ttlv.text(Tag.UniqueIdentifier, id), cryptoParams(BlockCipherMode.CBC, PaddingMethod.PKCS5), ttlv.bytes(Tag.Data, child(cbc.items[0].payload!, Tag.Data)!.value as Buffer), ttlv.bytes(Tag.IVCounterNonce, child(cbc.items[0].payload!, Tag.IVCounterNonce)!.value as Buffer)]),
          },
        ]);
        expect(cbcBad.items[0]).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.CryptographicFailure });
        const outcomes = async () => [...(await s.app.services.audit.query({ objectId: id, limit: 50 }))].sort((a, b) => Number(a.seq) - Number(b.seq));
        const events = await outcomes();
        expect(events.filter((e) => e.action === 'kmip.decrypt')).toEqual([]);
        const failures = events.filter((e) => e.action === 'kmip.Decrypt');
        expect(failures.map((e) => [e.outcome, JSON.parse(String(e.detail)).reason])).toEqual([
          ['failure', 'CryptographicFailure'],
          ['failure', 'CryptographicFailure'],
        ]);
        expect(events.filter((e) => e.action === 'kmip.encrypt').map((e) => e.outcome)).toEqual(['success', 'success']);
        // The right tag decrypts, and only then is a decrypt audited as a success.
        const good = await k.send([decrypt(tag)]);
        expect((child(good.items[0].payload!, Tag.Data)!.value as Buffer).equals(plain)).toBe(true);
        expect((await outcomes()).filter((e) => e.action === 'kmip.decrypt').map((e) => e.outcome)).toEqual(['success']);
        // The usage mask alone still decides: a decrypt-only key does not encrypt.
        const dOnly = uidOf((await k.send([createWith(8), { operation: Operation.Activate, payload: payload([]) }])).items[0].payload);
        const refused = await k.send([{ operation: Operation.Encrypt, payload: payload([ttlv.text(Tag.UniqueIdentifier, dOnly), cryptoParams(BlockCipherMode.GCM), ttlv.bytes(Tag.Data, plain)]) }]);
        expect(refused.items[0]).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.PermissionDenied });
      } finally {
        k.close();
      }
    });

    it('a Username/Password credential is verified once per connection (again after a minute or another credential); a wrong one is still refused', async () => {
      const password = `kmip-pw-${randomBytes(8).toString('hex')}`;
      noteSecret(password);
      const u = await s.call('POST', '/api/v1/auth/users', { name: `ontap-${randomBytes(3).toString('hex')}`, password, role: 'application', svms: [svm.name] });
      expect(u.status).toBe(201);
      const auth = s.app.services.auth;
      const real = auth.authenticate;
      let verified = 0;
      // Counts the KMIP credential's checks only: API calls authenticate with the bearer token, and
      // do so again whenever its cache entry has aged out (a slow machine).
      auth.authenticate = (header) => {
        if (header?.startsWith('Basic ')) verified += 1;
        return real(header);
      };
      const k = await RawKmip.connect(port, pki, stranger);
      const as = (pw: string) => k.send([createWith(12)], { authentication: { username: u.body.name, password: pw } });
      try {
        const first = await as(password);
        const second = await as(password);
        expect([first.items[0].resultStatus, second.items[0].resultStatus]).toEqual([ResultStatus.Success, ResultStatus.Success]);
        expect(verified).toBe(1);
        const events = await s.app.services.audit.query({ objectId: uidOf(second.items[0].payload), limit: 10 });
        expect(events.find((e) => e.action === 'kmip.create')!.actor).toBe(`user:${u.body.name}:${u.body.id}`);
        const wrong = await as('not the password at all');
        expect(wrong.items[0]).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.AuthenticationNotSuccessful });
        expect(verified).toBe(2);
        // The credential remembered was dropped: the right one is verified again.
        expect((await as(password)).items[0].resultStatus).toBe(ResultStatus.Success);
        expect(verified).toBe(3);
        // A minute later it is verified again (a removed user does not stay valid on an open connection).
        const now = Date.now;
        const later = vi.spyOn(Date, 'now').mockImplementation(() => now.call(Date) + 61_000);
        try {
          expect((await as(password)).items[0].resultStatus).toBe(ResultStatus.Success);
        } finally {
          later.mockRestore();
        }
        expect(verified).toBe(4);
        // Another connection verifies for itself.
        const k2 = await RawKmip.connect(port, pki, stranger);
        try {
          expect((await k2.send([createWith(12)], { authentication: { username: u.body.name, password } })).items[0].resultStatus).toBe(ResultStatus.Success);
        } finally {
          k2.close();
        }
        expect(verified).toBe(5);
      } finally {
        auth.authenticate = real;
        k.close();
      }
    });

    it('Locate pages in the database: Maximum Items, Offset Items and Located Items as before, by Unique Identifier too', async () => {
      const k = await RawKmip.connect(port, pki, client);
      try {
        const batch = `b-${randomBytes(4).toString('hex')}`;
        const made = await k.send([createWith(12, batch), createWith(12, batch), createWith(12, batch)]);
        const created = made.items.map((i) => uidOf(i.payload));
        const locate = async (extra: Ttlv[], minor = 4) => {
          const r = await k.send([{ operation: Operation.Locate, payload: payload([attr('x-Batch', ttlv.text(0, batch)), ...extra]) }], { minor });
          expect(r.items[0].resultStatus).toBe(ResultStatus.Success);
          return { ids: children(r.items[0].payload!, Tag.UniqueIdentifier).map((u) => u.value as string), located: child(r.items[0].payload!, Tag.LocatedItems)?.value };
        };
        const all = await locate([]);
        expect([...all.ids].sort()).toEqual([...created].sort());
        expect(all.located).toBe(3);
        const max = (n: number) => ttlv.int(Tag.MaximumItems, n);
        const off = (n: number) => ttlv.int(Tag.OffsetItems, n);
        expect(await locate([max(2)])).toEqual({ ids: all.ids.slice(0, 2), located: 3 });
        expect(await locate([max(2), off(2)])).toEqual({ ids: all.ids.slice(2), located: 3 });
        expect(await locate([off(1)])).toEqual({ ids: all.ids.slice(1), located: 3 });
        expect(await locate([off(5)])).toEqual({ ids: [], located: 3 });
        expect(await locate([max(0)])).toEqual({ ids: [], located: 3 });
        expect(await locate([max(1), off(1)], 1)).toEqual({ ids: all.ids.slice(1, 2), located: undefined });
        const byId = [attr('Unique Identifier', ttlv.text(0, created[1]))];
        expect(await locate(byId)).toEqual({ ids: [created[1]], located: 1 });
        expect(await locate([...byId, off(1)])).toEqual({ ids: [], located: 1 });
        expect(await locate([attr('Unique Identifier', ttlv.text(0, 'dek_nope'))])).toEqual({ ids: [], located: 0 });
      } finally {
        k.close();
      }
    });

    it('a user removed through the API is refused at the next message on a connection that verified its credential; any principal change on this node re-verifies', async () => {
      const auth = s.app.services.auth;
      const user = async () => {
        const password = `kmip-pw-${randomBytes(8).toString('hex')}`;
        noteSecret(password);
        const u = await s.call('POST', '/api/v1/auth/users', { name: `ontap-${randomBytes(3).toString('hex')}`, password, role: 'application', svms: [svm.name] });
        expect(u.status, JSON.stringify(u.body)).toBe(201);
        return { id: u.body.id as string, name: u.body.name as string, password };
      };
      const a = await user();
      const real = auth.authenticate;
      let verified = 0;
      // Counts the KMIP credential's checks only: API calls authenticate with the bearer token, and
      // do so again whenever its cache entry has aged out (a slow machine).
      auth.authenticate = (header) => {
        if (header?.startsWith('Basic ')) verified += 1;
        return real(header);
      };
      const k = await RawKmip.connect(port, pki, stranger);
      const asA = () => k.send([createWith(12)], { authentication: { username: a.name, password: a.password } });
      try {
        expect((await asA()).items[0].resultStatus).toBe(ResultStatus.Success);
        expect((await asA()).items[0].resultStatus).toBe(ResultStatus.Success);
        expect(verified).toBe(1);
        // Another principal made on this node: the remembered credential is verified again (and still holds).
        const r0 = auth.revision();
        const tok = await s.call('POST', '/api/v1/auth/tokens', { name: `t-${randomBytes(3).toString('hex')}`, role: 'readonly' });
        expect(tok.status, JSON.stringify(tok.body)).toBe(201);
        noteSecret(tok.body.token);
        expect(auth.revision()).toBeGreaterThan(r0);
        expect((await asA()).items[0].resultStatus).toBe(ResultStatus.Success);
        expect(verified).toBe(2);
        const r1 = auth.revision();
        expect((await s.call('DELETE', `/api/v1/auth/tokens/${tok.body.id}`)).status).toBe(200);
        expect(auth.revision()).toBeGreaterThan(r1);
        expect((await asA()).items[0].resultStatus).toBe(ResultStatus.Success);
        expect(verified).toBe(3);
        // The user removed: the very next message on the same connection is refused, well within the minute.
        const del = await s.call('DELETE', `/api/v1/auth/users/${a.id}`);
        expect(del.status, JSON.stringify(del.body)).toBe(200);
        const refused = await asA();
        expect(refused.items[0]).toMatchObject({ resultStatus: ResultStatus.OperationFailed, resultReason: ResultReason.AuthenticationNotSuccessful });
        expect(JSON.stringify(refused.items[0].resultMessage)).not.toContain(a.password);
        expect(verified).toBe(4);
        // And stays refused (nothing remembered from the refusal).
        expect((await asA()).items[0].resultReason).toBe(ResultReason.AuthenticationNotSuccessful);
      } finally {
        auth.authenticate = real;
        k.close();
      }
    });
  });
}
