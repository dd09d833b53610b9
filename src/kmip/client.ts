/**
 * A KMIP client over mutually authenticated TLS, built on the same codec as the server.
 *
 * Invariants:
 * - One connection per client, reused between requests; requests on it are strictly one at a time
 *   (queued), so a response always belongs to the one request in flight. Each batch item carries
 *   a fresh Unique Batch Item ID and the response must echo it (and the Operation); anything else
 *   is a protocol error and the connection is dropped rather than trusted further.
 * - Servers are tried in order, primary first, whenever a connection must be opened: a refused,
 *   timed-out or TLS-failed connection moves on to the next server. A request goes to the next
 *   server only when it cannot have been processed: the connection failed before the request
 *   was written, or the server refused the TLS session (a TLS alert; in TLS 1.3, a fresh
 *   connection closed before any response byte, which is how a refused client certificate
 *   shows). A connection that breaks after a request was written on an established session is
 *   reported, never retried: Create or Register must not run twice behind the caller's back.
 * - A request that gets no answer within `timeoutMs` fails with KmipTimeoutError and its connection
 *   is destroyed (a late answer could otherwise be read as the answer to the next request).
 * - Responses are framed with a maximum size before any allocation (TtlvFramer).
 * - No key material, password or credential appears in an error message.
 */
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import tls from 'node:tls';
import { KmipFrameError, TtlvFramer } from './framer.js';
import {
  AttributeName,
  BlockCipherMode,
  CryptographicAlgorithm,
  CryptographicUsageMask,
  KeyFormatType,
  NameType,
  ObjectType,
  Operation,
  PaddingMethod,
  QueryFunction,
  ResultStatus,
  RevocationReasonCode,
  enumName,
  ResultReason,
} from './enums.js';
import { buildRequest, parseResponse, type ProtocolVersion, type ResponseBatchItem } from './message.js';
import { Tag } from './tags.js';
import { child, children, decodeTtlv, encodeTtlv, ItemType, KmipDecodeError, ttlv, type Ttlv } from './ttlv.js';

// ---------------------------------------------------------------------------------------------
// Errors

export type KmipClientErrorKind = 'connect' | 'timeout' | 'connection' | 'protocol' | 'operation';

export class KmipClientError extends Error {
  constructor(
    readonly kind: KmipClientErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'KmipClientError';
  }
}

/** Why connecting to one server failed; `code` is Node's error code (e.g. ECONNREFUSED, UNABLE_TO_VERIFY_LEAF_SIGNATURE). */
export interface ServerFailure {
  server: string;
  code?: string;
  message: string;
  /** A rough reading of a TLS failure, for callers that map it to their own codes. */
  tls?: 'server_certificate' | 'client_certificate' | 'handshake';
}

/** No server in the list could be reached. */
export class KmipConnectError extends KmipClientError {
  constructor(readonly failures: ServerFailure[]) {
    super('connect', `no KMIP server reachable: ${failures.map((f) => `${f.server}: ${f.code ?? f.message}`).join('; ')}`);
    this.name = 'KmipConnectError';
  }
}

export class KmipTimeoutError extends KmipClientError {
  constructor(message: string) {
    super('timeout', message);
    this.name = 'KmipTimeoutError';
  }
}

/** The server answered the operation with a failure. */
export class KmipOperationError extends KmipClientError {
  constructor(
    readonly operation: number,
    readonly resultStatus: number,
    readonly resultReason: number | undefined,
    readonly resultMessage: string | undefined,
  ) {
    super(
      'operation',
      `KMIP ${enumName(Operation, operation)} failed: ${resultReason === undefined ? enumName(ResultStatus, resultStatus) : enumName(ResultReason, resultReason)}` +
        (resultMessage ? ` (${resultMessage})` : ''),
    );
    this.name = 'KmipOperationError';
  }
}

// ---------------------------------------------------------------------------------------------
// Options

export interface KmipServerAddress {
  host: string;
  /** Default 5696. */
  port?: number;
}

export interface KmipClientOptions {
  /** Primary first, then secondaries in failover order. */
  servers: KmipServerAddress[];
  /** PEM: the CA certificates that sign the servers' certificates. */
  ca: string | Buffer | Array<string | Buffer>;
  /** PEM client certificate (chain) and its private key, for mutual TLS. */
  cert: string | Buffer;
  key: string | Buffer;
  /** Per connection attempt and per request. Default 10 s. */
  timeoutMs?: number;
  /** Default 1.2. */
  protocolVersion?: ProtocolVersion;
  /** Sent in every request header as a Username and Password credential. */
  credential?: { username: string; password: string };
  /** Largest response accepted. Default 16 MiB. */
  maxResponseBytes?: number;
  /** OpenSSL cipher list for TLS 1.2, when a server needs a specific one. */
  ciphers?: string;
}

export const DEFAULT_KMIP_PORT = 5696;

// ---------------------------------------------------------------------------------------------
// One TLS connection

interface Pending {
  resolve(b: Buffer): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

function classifyTls(code: string | undefined, message: string): ServerFailure['tls'] {
  const c = code ?? '';
  if (/ALERT_(BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_REQUIRED|UNSUPPORTED_CERTIFICATE|CERTIFICATE_UNKNOWN|ACCESS_DENIED|CERTIFICATE_EXPIRED|DECRYPT_ERROR)/.test(c)) return 'client_certificate';
  if (/CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME|ERR_TLS_CERT/.test(c)) return 'server_certificate';
  if (c.startsWith('ERR_SSL') || /handshake|ssl|tls/i.test(message)) return 'handshake';
  return undefined;
}

function failureOf(server: string, e: unknown): ServerFailure {
  const err = e as Error & { code?: string };
  return { server, code: err.code, message: err.message, tls: classifyTls(err.code, err.message) };
}

/** TLS alerts from the server: the session was refused, so no request on it was processed. */
function isTlsRefusal(e: unknown): boolean {
  const code = (e as { code?: string }).code ?? '';
  return /^ERR_SSL_.*ALERT/.test(code);
}

class Connection {
  private readonly framer: TtlvFramer;
  private pending: Pending | undefined;
  private closedError: Error | undefined;
  /** Whether any byte of a response arrived since the last request was written. */
  private sawBytes = false;
  /** Responses received on this connection. */
  private completed = 0;
  private readonly tls13: boolean;

  constructor(
    readonly server: string,
    private readonly socket: tls.TLSSocket,
    maxResponseBytes: number,
  ) {
    this.framer = new TtlvFramer({ maxMessageBytes: maxResponseBytes });
    this.tls13 = socket.getProtocol() === 'TLSv1.3';
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.close(e));
    socket.on('close', () => this.close(Object.assign(new KmipClientError('connection', `connection to ${server} closed`), { code: 'ECONNCLOSED' })));
    socket.on('end', () => socket.end());
  }

  get alive(): boolean {
    return this.closedError === undefined && !this.socket.destroyed;
  }

  exchange(message: Buffer, timeoutMs: number): Promise<Buffer> {
    if (!this.alive) return Promise.reject(this.closedError ?? new KmipClientError('connection', `connection to ${this.server} closed`));
    if (this.pending) return Promise.reject(new Error('KMIP connection already has a request in flight'));
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.close(new KmipTimeoutError(`no KMIP response from ${this.server} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending = { resolve, reject, timer };
      this.sawBytes = false;
      this.socket.write(message);
    });
  }

  private onData(chunk: Buffer): void {
    this.sawBytes = true;
    let messages: Buffer[];
    try {
      messages = this.framer.push(chunk);
    } catch (e) {
      this.close(new KmipClientError('protocol', `unframeable response from ${this.server}: ${(e as Error).message}`, { cause: e }));
      return;
    }
    for (const m of messages) {
      const p = this.pending;
      if (!p) {
        this.close(new KmipClientError('protocol', `unsolicited message from ${this.server}`));
        return;
      }
      this.pending = undefined;
      this.completed++;
      clearTimeout(p.timer);
      p.resolve(m);
    }
  }

  /**
   * Whether the last request failed because the server refused the TLS session, so it cannot
   * have been processed: a TLS alert, or, in TLS 1.3 (where the server checks the client
   * certificate after the client considers the handshake done), a fresh connection closed or
   * reset before any response byte.
   */
  get sessionRefused(): boolean {
    if (this.sawBytes || this.closedError === undefined) return false;
    if (isTlsRefusal(this.closedError)) return true;
    const code = (this.closedError as { code?: string }).code;
    return this.tls13 && this.completed === 0 && (code === 'ECONNCLOSED' || code === 'ECONNRESET' || code === 'EPIPE');
  }

  close(e: Error): void {
    if (!this.closedError) this.closedError = e;
    const p = this.pending;
    this.pending = undefined;
    if (p) {
      clearTimeout(p.timer);
      p.reject(this.closedError);
    }
    if (!this.socket.destroyed) this.socket.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Result shapes

export interface KmipAttribute {
  name: string;
  index?: number;
  value: Ttlv;
}

export interface ManagedKey {
  uniqueIdentifier: string;
  objectType: number;
  keyFormatType: number;
  /** Raw/Opaque key bytes. */
  keyMaterial: Buffer;
  cryptographicAlgorithm?: number;
  cryptographicLength?: number;
}

export interface QueryResult {
  operations: number[];
  objectTypes: number[];
  vendorIdentification?: string;
  serverInformation?: Ttlv;
}

export interface CipherOptions {
  /** Default CBC. */
  blockCipherMode?: number;
  /** Default PKCS5 for CBC, None otherwise. */
  paddingMethod?: number;
  /** Default AES. */
  cryptographicAlgorithm?: number;
  /** Ask the server to generate the IV (default true when no IV is given). */
  randomIV?: boolean;
  /** IV, counter or nonce to use (encrypt) or that was used (decrypt). */
  ivCounterNonce?: Buffer;
  /** AES-GCM tag length in bytes (encrypt) / the tag (decrypt). */
  tagLength?: number;
  authenticatedEncryptionAdditionalData?: Buffer;
  authenticatedEncryptionTag?: Buffer;
}

export interface EncryptResult {
  data: Buffer;
  ivCounterNonce?: Buffer;
  authenticatedEncryptionTag?: Buffer;
}

// ---------------------------------------------------------------------------------------------
// The client

const ATTRIBUTE_TAGS: ReadonlyMap<string, number> = new Map(
  Object.entries(AttributeName)
    .filter(([k]) => k in Tag)
    .map(([k, name]) => [name, (Tag as Record<string, number>)[k]]),
);
const ATTRIBUTE_NAMES_BY_TAG: ReadonlyMap<number, string> = new Map([...ATTRIBUTE_TAGS].map(([n, t]) => [t, n]));

function text(t: Ttlv | undefined, what: string): string {
  if (!t || t.type !== ItemType.TextString) throw new KmipClientError('protocol', `response has no ${what}`);
  return t.value;
}

function describeServer(s: KmipServerAddress): string {
  const port = s.port ?? DEFAULT_KMIP_PORT;
  return isIP(s.host) === 6 ? `[${s.host}]:${port}` : `${s.host}:${port}`;
}

export class KmipClient {
  readonly protocolVersion: ProtocolVersion;
  private readonly timeoutMs: number;
  private readonly maxResponseBytes: number;
  private conn: Connection | undefined;
  private tail: Promise<unknown> = Promise.resolve();
  private readonly idPrefix = randomBytes(4);
  private counter = 0;
  private closed = false;

  constructor(private readonly opts: KmipClientOptions) {
    if (opts.servers.length === 0) throw new TypeError('KmipClient needs at least one server');
    this.protocolVersion = opts.protocolVersion ?? { major: 1, minor: 2 };
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.maxResponseBytes = opts.maxResponseBytes ?? 16 * 1024 * 1024;
  }

  /** The server the open connection goes to, if any. */
  get connectedServer(): string | undefined {
    return this.conn?.alive ? this.conn.server : undefined;
  }

  close(): void {
    this.closed = true;
    this.conn?.close(new KmipClientError('connection', 'client closed'));
    this.conn = undefined;
  }

  private get is2x(): boolean {
    return this.protocolVersion.major >= 2;
  }

  /**
   * Opens a connection to the first server that accepts one, in order, skipping servers that
   * already refused this request's TLS session. `failures` collects why each server failed.
   */
  private async connect(skip: ReadonlySet<string>, failures: ServerFailure[]): Promise<Connection> {
    for (const s of this.opts.servers) {
      const name = describeServer(s);
      if (skip.has(name)) continue;
      try {
        return await this.connectOne(s, name);
      } catch (e) {
        failures.push(failureOf(name, e));
      }
    }
    throw new KmipConnectError(failures);
  }

  private connectOne(s: KmipServerAddress, name: string): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const socket = tls.connect({
        host: s.host,
        port: s.port ?? DEFAULT_KMIP_PORT,
        // SNI carries host names only; an IP address is still checked against the certificate's SAN.
        servername: isIP(s.host) ? undefined : s.host,
        ca: this.opts.ca,
        cert: this.opts.cert,
        key: this.opts.key,
        minVersion: 'TLSv1.2',
        ciphers: this.opts.ciphers,
        rejectUnauthorized: true,
      });
      const timer = setTimeout(() => {
        const e = Object.assign(new KmipTimeoutError(`connecting to ${name} took longer than ${this.timeoutMs} ms`), { code: 'ETIMEDOUT' });
        socket.destroy();
        reject(e);
      }, this.timeoutMs);
      const onError = (e: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(e);
      };
      socket.once('error', onError);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        socket.setNoDelay(true);
        resolve(new Connection(name, socket, this.maxResponseBytes));
      });
    });
  }

  /**
   * Sends one request message with the given batch items and returns the response items, in
   * order, after checking each echoes its Unique Batch Item ID and Operation. Failed items are
   * returned, not thrown: see `call` for the one-operation form that throws.
   */
  batch(items: Array<{ operation: number; payload: Ttlv }>): Promise<ResponseBatchItem[]> {
    const run = (): Promise<ResponseBatchItem[]> => this.send(items);
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** One operation; a failed result becomes KmipOperationError. Returns the response payload. */
  async call(operation: number, payload: Ttlv[]): Promise<Ttlv> {
    const [item] = await this.batch([{ operation, payload: ttlv.struct(Tag.RequestPayload, payload) }]);
    if (item.resultStatus !== ResultStatus.Success) {
      throw new KmipOperationError(operation, item.resultStatus, item.resultReason, item.resultMessage);
    }
    return item.payload ?? ttlv.struct(Tag.ResponsePayload, []);
  }

  private async send(items: Array<{ operation: number; payload: Ttlv }>): Promise<ResponseBatchItem[]> {
    if (this.closed) throw new KmipClientError('connection', 'client closed');
    const ids = items.map(() => this.nextId());
    const message = encodeTtlv(
      buildRequest({
        header: {
          protocolVersion: this.protocolVersion,
          authentication: this.opts.credential,
          maximumResponseSize: this.maxResponseBytes > 0x7fffffff ? undefined : this.maxResponseBytes,
          batchCount: items.length,
        },
        items: items.map((it, i) => ({ operation: it.operation, uniqueBatchItemId: ids[i], payload: it.payload })),
      }),
    );
    // A server that refuses the TLS session after the handshake (TLS 1.3 checks the client
    // certificate then) did not process the request: move on to the next server, as for a
    // failed connection. Any other failure after the request was written is reported as is.
    const failures: ServerFailure[] = [];
    const refused = new Set<string>();
    for (;;) {
      if (!this.conn?.alive) this.conn = await this.connect(refused, failures);
      const conn = this.conn;
      let raw: Buffer;
      try {
        raw = await conn.exchange(message, this.timeoutMs);
      } catch (e) {
        this.conn = undefined;
        if (conn.sessionRefused) {
          refused.add(conn.server);
          // In TLS 1.3 a refused client certificate usually shows only as a closed connection.
          failures.push({ ...failureOf(conn.server, e), tls: isTlsRefusal(e) ? classifyTls((e as { code?: string }).code, (e as Error).message) : 'client_certificate' });
          continue;
        }
        throw e instanceof KmipClientError ? e : new KmipClientError('connection', `KMIP request to ${conn.server} failed: ${(e as Error).message}`, { cause: e });
      }
      return this.check(conn, raw, items, ids);
    }
  }

  private check(conn: Connection, raw: Buffer, items: Array<{ operation: number }>, ids: Buffer[]): ResponseBatchItem[] {
    const fail = (message: string, cause?: unknown): never => {
      conn.close(new KmipClientError('protocol', message));
      if (this.conn === conn) this.conn = undefined;
      throw new KmipClientError('protocol', `${message} (from ${conn.server})`, { cause });
    };
    let response;
    try {
      response = parseResponse(decodeTtlv(raw, { maxDepth: 32, maxItems: 1_000_000 }));
    } catch (e) {
      if (e instanceof KmipDecodeError || e instanceof KmipFrameError) fail(`malformed KMIP response: ${e.message}`, e);
      throw e;
    }
    // A server that cannot parse the request at all answers one failed item without an ID (PyKMIP
    // does so in KMIP 1.0); that is an answer, not a mismatch.
    if (response.items.length === 1 && response.items[0].uniqueBatchItemId === undefined && response.items[0].resultStatus !== ResultStatus.Success) {
      return items.map(() => response.items[0]);
    }
    if (response.items.length !== items.length) fail(`expected ${items.length} batch items, got ${response.items.length}`);
    response.items.forEach((it, i) => {
      if (!it.uniqueBatchItemId?.equals(ids[i])) fail('response batch item does not echo the request’s Unique Batch Item ID');
      if (it.operation !== undefined && it.operation !== items[i].operation) fail('response batch item names another operation');
    });
    return response.items;
  }

  private nextId(): Buffer {
    const id = Buffer.allocUnsafe(8);
    this.idPrefix.copy(id, 0);
    id.writeUInt32BE((this.counter = (this.counter + 1) >>> 0), 4);
    return id;
  }

  // -------------------------------------------------------------------------------------------
  // Attribute encoding: 1.x Template-Attribute / Attribute (name, value) versus 2.x Attributes.

  private attr(name: string, make: (tag: number) => Ttlv): Ttlv {
    if (this.is2x) {
      const tag = ATTRIBUTE_TAGS.get(name);
      if (tag === undefined) throw new TypeError(`no KMIP 2.x tag for attribute ${name}`);
      return make(tag);
    }
    return ttlv.struct(Tag.Attribute, [ttlv.text(Tag.AttributeName, name), make(Tag.AttributeValue)]);
  }

  private nameAttr(name: string): Ttlv {
    return this.attr(AttributeName.Name, (tag) =>
      ttlv.struct(tag, [ttlv.text(Tag.NameValue, name), ttlv.enumeration(Tag.NameType, NameType.UninterpretedTextString)]),
    );
  }

  private attributes(list: Ttlv[]): Ttlv {
    return this.is2x ? ttlv.struct(Tag.Attributes, list) : ttlv.struct(Tag.TemplateAttribute, list);
  }

  // -------------------------------------------------------------------------------------------
  // Typed operations

  async discoverVersions(versions: ProtocolVersion[] = []): Promise<ProtocolVersion[]> {
    const payload = await this.call(
      Operation.DiscoverVersions,
      versions.map((v) => ttlv.struct(Tag.ProtocolVersion, [ttlv.int(Tag.ProtocolVersionMajor, v.major), ttlv.int(Tag.ProtocolVersionMinor, v.minor)])),
    );
    return children(payload, Tag.ProtocolVersion).map((pv) => {
      const major = child(pv, Tag.ProtocolVersionMajor);
      const minor = child(pv, Tag.ProtocolVersionMinor);
      if (major?.type !== ItemType.Integer || minor?.type !== ItemType.Integer) throw new KmipClientError('protocol', 'malformed Protocol Version');
      return { major: major.value, minor: minor.value };
    });
  }

  async query(functions: number[] = [QueryFunction.QueryOperations, QueryFunction.QueryObjects, QueryFunction.QueryServerInformation]): Promise<QueryResult> {
    const payload = await this.call(
      Operation.Query,
      functions.map((f) => ttlv.enumeration(Tag.QueryFunction, f)),
    );
    const enums = (tag: number): number[] => children(payload, tag).flatMap((c) => (c.type === ItemType.Enumeration ? [c.value] : []));
    const vendor = child(payload, Tag.VendorIdentification);
    return {
      operations: enums(Tag.Operation),
      objectTypes: enums(Tag.ObjectType),
      vendorIdentification: vendor?.type === ItemType.TextString ? vendor.value : undefined,
      serverInformation: child(payload, Tag.ServerInformation),
    };
  }

  /** Create a server-generated AES key (256 bits unless said otherwise). Returns its Unique Identifier. */
  async createSymmetricKey(opts: { name?: string; lengthBits?: 128 | 192 | 256; usageMask?: number } = {}): Promise<string> {
    const attrs = [
      this.attr(AttributeName.CryptographicAlgorithm, (t) => ttlv.enumeration(t, CryptographicAlgorithm.AES)),
      this.attr(AttributeName.CryptographicLength, (t) => ttlv.int(t, opts.lengthBits ?? 256)),
      this.attr(AttributeName.CryptographicUsageMask, (t) =>
        ttlv.int(t, opts.usageMask ?? CryptographicUsageMask.Encrypt | CryptographicUsageMask.Decrypt),
      ),
    ];
    if (opts.name !== undefined) attrs.push(this.nameAttr(opts.name));
    const payload = await this.call(Operation.Create, [ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey), this.attributes(attrs)]);
    return text(child(payload, Tag.UniqueIdentifier), 'Unique Identifier');
  }

  createAes256(name?: string): Promise<string> {
    return this.createSymmetricKey({ name, lengthBits: 256 });
  }

  /** Register client-supplied key bytes as a Symmetric Key in Raw format. Returns its Unique Identifier. */
  async registerSymmetricKey(key: Buffer, opts: { name?: string; algorithm?: number; usageMask?: number } = {}): Promise<string> {
    const attrs = [
      this.attr(AttributeName.CryptographicUsageMask, (t) =>
        ttlv.int(t, opts.usageMask ?? CryptographicUsageMask.Encrypt | CryptographicUsageMask.Decrypt),
      ),
    ];
    if (opts.name !== undefined) attrs.push(this.nameAttr(opts.name));
    const object = ttlv.struct(Tag.SymmetricKey, [
      ttlv.struct(Tag.KeyBlock, [
        ttlv.enumeration(Tag.KeyFormatType, KeyFormatType.Raw),
        ttlv.struct(Tag.KeyValue, [ttlv.bytes(Tag.KeyMaterial, key)]),
        ttlv.enumeration(Tag.CryptographicAlgorithm, opts.algorithm ?? CryptographicAlgorithm.AES),
        ttlv.int(Tag.CryptographicLength, key.length * 8),
      ]),
    ]);
    const payload = await this.call(Operation.Register, [
      ttlv.enumeration(Tag.ObjectType, ObjectType.SymmetricKey),
      this.attributes(attrs),
      object,
    ]);
    return text(child(payload, Tag.UniqueIdentifier), 'Unique Identifier');
  }

  /** Get a key's material (Raw unless another format is asked for). */
  async get(uniqueIdentifier: string, keyFormatType: number = KeyFormatType.Raw): Promise<ManagedKey> {
    const req = [ttlv.text(Tag.UniqueIdentifier, uniqueIdentifier), ttlv.enumeration(Tag.KeyFormatType, keyFormatType)];
    const payload = await this.call(Operation.Get, req);
    const objectType = child(payload, Tag.ObjectType);
    if (objectType?.type !== ItemType.Enumeration) throw new KmipClientError('protocol', 'Get response has no Object Type');
    const obj = payload.type === ItemType.Structure ? payload.value.find((c) => c.type === ItemType.Structure && child(c, Tag.KeyBlock)) : undefined;
    const block = obj && child(obj, Tag.KeyBlock);
    if (!block) throw new KmipClientError('protocol', 'Get response has no Key Block');
    const format = child(block, Tag.KeyFormatType);
    const value = child(block, Tag.KeyValue);
    const material = value && (value.type === ItemType.ByteString ? value : child(value, Tag.KeyMaterial));
    if (format?.type !== ItemType.Enumeration || material?.type !== ItemType.ByteString) {
      throw new KmipClientError('protocol', 'Get response has no byte-string Key Material');
    }
    const alg = child(block, Tag.CryptographicAlgorithm);
    const len = child(block, Tag.CryptographicLength);
    return {
      uniqueIdentifier: text(child(payload, Tag.UniqueIdentifier), 'Unique Identifier'),
      objectType: objectType.value,
      keyFormatType: format.value,
      keyMaterial: material.value,
      cryptographicAlgorithm: alg?.type === ItemType.Enumeration ? alg.value : undefined,
      cryptographicLength: len?.type === ItemType.Integer ? len.value : undefined,
    };
  }

  /** Get Attributes by name ('State', 'Name', 'x-custom', …); all attributes when `names` is empty. */
  async getAttributes(uniqueIdentifier: string, names: string[] = []): Promise<KmipAttribute[]> {
    const req: Ttlv[] = [ttlv.text(Tag.UniqueIdentifier, uniqueIdentifier)];
    for (const n of names) {
      if (this.is2x) {
        const tag = ATTRIBUTE_TAGS.get(n);
        if (tag === undefined) throw new TypeError(`no KMIP 2.x tag for attribute ${n}`);
        req.push(ttlv.enumeration(Tag.AttributeReference, tag));
      } else {
        req.push(ttlv.text(Tag.AttributeName, n));
      }
    }
    const payload = await this.call(Operation.GetAttributes, req);
    if (this.is2x) {
      const attrs = child(payload, Tag.Attributes);
      if (!attrs || attrs.type !== ItemType.Structure) return [];
      return attrs.value.map((v) => ({ name: ATTRIBUTE_NAMES_BY_TAG.get(v.tag) ?? `0x${v.tag.toString(16)}`, value: v }));
    }
    return children(payload, Tag.Attribute).map((a) => {
      const index = child(a, Tag.AttributeIndex);
      const value = child(a, Tag.AttributeValue);
      if (!value) throw new KmipClientError('protocol', 'Attribute without a value');
      return { name: text(child(a, Tag.AttributeName), 'Attribute Name'), index: index?.type === ItemType.Integer ? index.value : undefined, value };
    });
  }

  /** The key's State (an enums.State value). */
  async getState(uniqueIdentifier: string): Promise<number> {
    const [a] = await this.getAttributes(uniqueIdentifier, [AttributeName.State]);
    if (a?.value.type !== ItemType.Enumeration) throw new KmipClientError('protocol', 'no State attribute in the response');
    return a.value.value;
  }

  async activate(uniqueIdentifier: string): Promise<void> {
    await this.call(Operation.Activate, [ttlv.text(Tag.UniqueIdentifier, uniqueIdentifier)]);
  }

  async revoke(uniqueIdentifier: string, reason: number = RevocationReasonCode.CessationOfOperation, message?: string): Promise<void> {
    const rr = [ttlv.enumeration(Tag.RevocationReasonCode, reason)];
    if (message !== undefined) rr.push(ttlv.text(Tag.RevocationMessage, message));
    const payload = [ttlv.text(Tag.UniqueIdentifier, uniqueIdentifier), ttlv.struct(Tag.RevocationReason, rr)];
    if (reason === RevocationReasonCode.KeyCompromise) payload.push(ttlv.dateTime(Tag.CompromiseOccurrenceDate, new Date()));
    await this.call(Operation.Revoke, payload);
  }

  async destroy(uniqueIdentifier: string): Promise<void> {
    await this.call(Operation.Destroy, [ttlv.text(Tag.UniqueIdentifier, uniqueIdentifier)]);
  }

  /** Unique Identifiers of the objects whose Name is `name` (optionally of one Object Type). */
  async locateByName(name: string, opts: { objectType?: number; maximumItems?: number } = {}): Promise<string[]> {
    const attrs = [this.nameAttr(name)];
    if (opts.objectType !== undefined) attrs.push(this.attr(AttributeName.ObjectType, (t) => ttlv.enumeration(t, opts.objectType!)));
    const req: Ttlv[] = [];
    if (opts.maximumItems !== undefined) req.push(ttlv.int(Tag.MaximumItems, opts.maximumItems));
    if (this.is2x) req.push(ttlv.struct(Tag.Attributes, attrs));
    else req.push(...attrs);
    const payload = await this.call(Operation.Locate, req);
    return children(payload, Tag.UniqueIdentifier).map((u) => text(u, 'Unique Identifier'));
  }

  private cryptoParams(o: CipherOptions): Ttlv {
    const mode = o.blockCipherMode ?? BlockCipherMode.CBC;
    const p = [
      ttlv.enumeration(Tag.BlockCipherMode, mode),
      ttlv.enumeration(Tag.PaddingMethod, o.paddingMethod ?? (mode === BlockCipherMode.CBC ? PaddingMethod.PKCS5 : PaddingMethod.None)),
      ttlv.enumeration(Tag.CryptographicAlgorithm, o.cryptographicAlgorithm ?? CryptographicAlgorithm.AES),
    ];
    if (o.randomIV ?? o.ivCounterNonce === undefined) p.push(ttlv.bool(Tag.RandomIV, true));
    if (o.tagLength !== undefined) p.push(ttlv.int(Tag.TagLength, o.tagLength));
    return ttlv.struct(Tag.CryptographicParameters, p);
  }

  async encrypt(uniqueIdentifier: string, data: Buffer, o: CipherOptions = {}): Promise<EncryptResult> {
    const req = [ttlv.text(Tag.UniqueIdentifier, uniqueIdentifier), this.cryptoParams(o), ttlv.bytes(Tag.Data, data)];
    if (o.ivCounterNonce) req.push(ttlv.bytes(Tag.IVCounterNonce, o.ivCounterNonce));
    if (o.authenticatedEncryptionAdditionalData) req.push(ttlv.bytes(Tag.AuthenticatedEncryptionAdditionalData, o.authenticatedEncryptionAdditionalData));
    const payload = await this.call(Operation.Encrypt, req);
    const out = child(payload, Tag.Data);
    if (out?.type !== ItemType.ByteString) throw new KmipClientError('protocol', 'Encrypt response has no Data');
    const iv = child(payload, Tag.IVCounterNonce);
    const tag = child(payload, Tag.AuthenticatedEncryptionTag);
    return {
      data: out.value,
      ivCounterNonce: iv?.type === ItemType.ByteString ? iv.value : o.ivCounterNonce,
      authenticatedEncryptionTag: tag?.type === ItemType.ByteString ? tag.value : undefined,
    };
  }

  async decrypt(uniqueIdentifier: string, data: Buffer, o: CipherOptions = {}): Promise<Buffer> {
    const req = [
      ttlv.text(Tag.UniqueIdentifier, uniqueIdentifier),
      this.cryptoParams({ ...o, randomIV: false }),
      ttlv.bytes(Tag.Data, data),
    ];
    if (o.ivCounterNonce) req.push(ttlv.bytes(Tag.IVCounterNonce, o.ivCounterNonce));
    if (o.authenticatedEncryptionAdditionalData) req.push(ttlv.bytes(Tag.AuthenticatedEncryptionAdditionalData, o.authenticatedEncryptionAdditionalData));
    if (o.authenticatedEncryptionTag) req.push(ttlv.bytes(Tag.AuthenticatedEncryptionTag, o.authenticatedEncryptionTag));
    const payload = await this.call(Operation.Decrypt, req);
    const out = child(payload, Tag.Data);
    if (out?.type !== ItemType.ByteString) throw new KmipClientError('protocol', 'Decrypt response has no Data');
    return out.value;
  }
}
