/**
 * The KMIP server: TTLV over mutually authenticated TLS (1.2+), port 5696 by default.
 *
 * Invariants:
 * - Every TLS peer presented a certificate that chains to the configured client CA (else the
 *   handshake fails). Who it is comes from the certificates resource: a `client` certificate
 *   installed for an SVM with the same fingerprint makes it a principal of that SVM; a request's
 *   Username/Password credential, when sent, must be a local user's and names the principal
 *   instead. Without either, only Discover Versions and Query are answered. A connection keeps its
 *   last verified credential (the user name and an HMAC of the password under a per-process key,
 *   never the password) while this node changes no principal (the auth service's revision) and
 *   for at most CREDENTIAL_TTL_MS, so a user removed on this node stops working on a connection
 *   already open at its next message, and one removed on another node within that time; any other
 *   credential is verified afresh.
 * - Bytes are framed before they are decoded; a declared length over the maximum is refused before
 *   anything is allocated for it and the connection is closed. Undecodable messages are answered
 *   with Invalid Message (in KMIP 1.0 when not even the version could be read) and the connection
 *   stays usable.
 * - One message at a time per connection, answers in order; a peer that sends faster than it
 *   reads is paused (no unbounded queue). close() stops accepting, lets in-flight messages finish,
 *   then closes every connection.
 * - Failures answer Operation Failed with a Result Reason and a Result Message; internal details
 *   are logged, never sent. No key material or password is logged or audited.
 * - A client is never told that a change which committed failed: over the Maximum Response Size,
 *   only read-only items give up their answer (Response Too Large).
 */
import tls from 'node:tls';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import { KeysmithError, KMIP_REASONS } from '../errors.js';
import { newId } from '../ids.js';
import type { Durability } from '../store/durability.js';
import type { AuditService } from '../audit/audit-service.js';
import type { AuthService, Principal } from '../auth/auth-service.js';
import type { CertificateService } from '../certificates/certificate-service.js';
import type { SvmRow } from '../store/svm-repo.js';
import { BatchErrorContinuationOption, Operation, ResultReason, ResultStatus, enumName } from './enums.js';
import { KmipFrameError, TtlvFramer } from './framer.js';
import { KmipMessageError, buildResponse, parseRequest, type ProtocolVersion, type RequestMessage, type ResponseBatchItem } from './message.js';
import { Tag } from './tags.js';
import { ItemType, decodeTtlv, encodeTtlv, ttlv, type Ttlv } from './ttlv.js';
import type { KmipObjectService } from './kmip-object-service.js';
import { KmipError, type KmipPrincipal, type OpContext } from './operations/context.js';
import { OPERATIONS, UNAUTHENTICATED_OPERATIONS } from './operations/index.js';
import { SUPPORTED_VERSIONS, isSupportedVersion } from './operations/discover-query.js';

/** How long an open connection trusts its certificate's principal before looking again. */
const CERT_PRINCIPAL_TTL_MS = 5_000;
/**
 * How long an open connection trusts a Username/Password credential it verified (argon2id, tens of
 * ms) before verifying it again: the bound on how long a user removed on another node keeps an
 * open connection (a change on this node is seen at once, through the auth service's revision).
 */
const CREDENTIAL_TTL_MS = 60_000;
export interface KmipServerOptions {
  host: string;
  port: number;
  cert: Buffer | string;
  key: Buffer | string;
  /** Client CA(s), PEM: peers must present a certificate issued by one of them. */
  ca: Buffer | string;
  maxMessageBytes?: number;
  /** A connection idle this long is closed. */
  idleTimeoutMs?: number;
}

export interface KmipServerDeps {
  log: Logger;
  audit: AuditService;
  auth: Pick<AuthService, 'authenticate' | 'revision'>;
  certificates: Pick<CertificateService, 'clientPrincipal' | 'revision'>;
  svms: { admin(): Promise<SvmRow | undefined>; resolve(ref: string): Promise<SvmRow | undefined> };
  objects: KmipObjectService;
  /** When commits are on disk: answers wait for it (store/durability.ts). */
  durability: Pick<Durability, 'wait'>;
}

export interface KmipServer {
  listen(): Promise<{ host: string; port: number }>;
  close(): Promise<void>;
  readonly port: number;
}

const V1_0: ProtocolVersion = { major: 1, minor: 0 };
const DEFAULT_MAX_MESSAGE = 1024 * 1024;
/** Messages queued on one connection before reading from it pauses. */
const MAX_PENDING = 4;

const nowSeconds = () => BigInt(Math.floor(Date.now() / 1000));

function failure(reason: number, message: string, base: Partial<ResponseBatchItem> = {}): ResponseBatchItem {
  return { ...base, resultStatus: ResultStatus.OperationFailed, resultReason: reason, resultMessage: message };
}

/** One failed item with no Operation: how a message that cannot be read is answered. */
export function invalidMessage(version: ProtocolVersion, message: string): Buffer {
  return encodeTtlv(buildResponse({ protocolVersion: version, timeStamp: nowSeconds(), items: [failure(ResultReason.InvalidMessage, message)] }));
}

/** The newest version this server speaks that is not newer than the client's. */
function answerVersion(v: ProtocolVersion): ProtocolVersion {
  if (isSupportedVersion(v)) return v;
  return SUPPORTED_VERSIONS.find((s) => s.major < v.major || (s.major === v.major && s.minor <= v.minor)) ?? V1_0;
}

const CAN_DATA: Principal['role'][] = ['cluster-admin', 'svm-admin', 'application'];

/** Operations whose handlers hand their audit record to the server (OpContext.deferAudit). */
const DEFERRING_OPERATIONS = new Set<number>([Operation.Get, Operation.Encrypt, Operation.Decrypt]);

/**
 * Operations that change no object: their answer may be withheld (Response Too Large) and asked for
 * again. Any other operation's result is always sent as it is.
 */
const READ_ONLY_OPERATIONS = new Set<number>([
  Operation.DiscoverVersions,
  Operation.Query,
  Operation.Locate,
  Operation.Check,
  Operation.Get,
  Operation.GetAttributes,
  Operation.GetAttributeList,
  Operation.Encrypt,
  Operation.Decrypt,
]);

interface Identify {
  cert: () => Promise<KmipPrincipal | null>;
  credential: (username: string, password: string) => Promise<KmipPrincipal>;
}

export function createKmipServer(deps: KmipServerDeps, opts: KmipServerOptions): KmipServer {
  const { log, audit } = deps;
  const maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE;
  const conns = new Set<{ socket: tls.TLSSocket; idle: () => Promise<void> }>();
  let boundPort = 0;
  let closing = false;

  const server = tls.createServer({
    cert: opts.cert,
    key: opts.key,
    ca: opts.ca,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    handshakeTimeout: 10_000,
  });
  server.on('tlsClientError', (e) => log.debug({ err: { message: e.message } }, 'KMIP TLS handshake failed'));
  // Connections remember a verified password only as an HMAC under this key, useless outside this process.
  const credentialKey = randomBytes(32);

  async function credentialPrincipal(username: string, password: string): Promise<KmipPrincipal> {
    let p: Principal;
    try {
      p = await deps.auth.authenticate(`Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`);
    } catch (e) {
      if (e instanceof KeysmithError) throw new KmipError(ResultReason.AuthenticationNotSuccessful, 'the Username and Password credential is not valid');
      throw e;
    }
    if (!CAN_DATA.includes(p.role)) throw new KmipError(ResultReason.PermissionDenied, `role ${p.role} cannot use keys`);
    const svm = p.svms.length > 0 ? await deps.svms.resolve(p.svms[0]) : p.role === 'cluster-admin' ? await deps.svms.admin() : undefined;
    if (!svm) throw new KmipError(ResultReason.PermissionDenied, 'the user is bound to no SVM');
    return { actor: `${p.kind}:${p.name}:${p.id}`, svm };
  }

  function onConnection(socket: tls.TLSSocket): void {
    if (closing) {
      socket.destroy();
      return;
    }
    const peer = socket.getPeerCertificate();
    const der = peer?.raw;
    // The certificate's principal, looked up again when this node installs or deletes a certificate
    // (revision) and at least every CERT_PRINCIPAL_TTL_MS (another node's change, an SVM deleted with
    // its certificates), so a deleted client certificate stops working on connections already open.
    let certPrincipal: { value: Promise<KmipPrincipal | null>; revision: number; at: number } | undefined;
    const principalOfCert = () => {
      const revision = deps.certificates.revision();
      const now = Date.now();
      if (certPrincipal && certPrincipal.revision === revision && now - certPrincipal.at < CERT_PRINCIPAL_TTL_MS) return certPrincipal.value;
      const entry = { value: lookupCertPrincipal(), revision, at: now };
      certPrincipal = entry;
      // A lookup that failed (the store, not the certificate) is tried again by the next message.
      entry.value.catch(() => {
        if (certPrincipal === entry) certPrincipal = undefined;
      });
      return entry.value;
    };
    const lookupCertPrincipal = () =>
      (async (): Promise<KmipPrincipal | null> => {
        if (!der) return null;
        const hit = await deps.certificates.clientPrincipal(der);
        if (!hit) {
          await audit.record({ actor: `tls:${peer.subject?.CN ?? 'unknown'}`, action: 'kmip.authenticate', outcome: 'failure', objectType: 'certificate', detail: { reason: 'client certificate not installed', fingerprint: peer.fingerprint256 } });
          return null;
        }
        return { actor: `certificate:${hit.certificate.common_name ?? hit.certificate.name}:${hit.certificate.uuid}`, svm: hit.svm };
      })();

    // The last Username/Password credential verified on this connection (see CREDENTIAL_TTL_MS).
    let credential: { username: string; mac: Buffer; principal: KmipPrincipal; at: number; revision: number } | undefined;
    const principalOfCredential = async (username: string, password: string): Promise<KmipPrincipal> => {
      const mac = createHmac('sha256', credentialKey).update(password, 'utf8').digest();
      const now = Date.now();
      // Read before verifying: a change made during the check makes the next message check again.
      const revision = deps.auth.revision();
      const c = credential;
      if (c && c.username === username && timingSafeEqual(c.mac, mac) && c.revision === revision && now - c.at < CREDENTIAL_TTL_MS) return c.principal;
      // Another, an expired or a possibly revoked credential: the one remembered is dropped whatever this one's outcome.
      credential = undefined;
      const principal = await credentialPrincipal(username, password);
      credential = { username, mac, principal, at: now, revision };
      return principal;
    };
    const identify: Identify = { cert: principalOfCert, credential: principalOfCredential };

    const framer = new TtlvFramer({ maxMessageBytes });
    let chain: Promise<void> = Promise.resolve();
    let pending = 0;
    const conn = { socket, idle: () => chain };
    conns.add(conn);
    socket.setTimeout(opts.idleTimeoutMs ?? 5 * 60_000, () => socket.destroy());
    socket.on('error', (e) => log.debug({ err: { message: e.message } }, 'KMIP connection error'));
    socket.on('close', () => conns.delete(conn));

    const send = (buf: Buffer) => {
      if (socket.destroyed) return;
      if (!socket.write(buf)) {
        socket.pause();
        socket.once('drain', () => pending < MAX_PENDING && socket.resume());
      }
    };

    let unframeable = false;
    socket.on('data', (chunk: Buffer) => {
      if (unframeable) return;
      let frames: Buffer[];
      try {
        frames = framer.push(chunk);
      } catch (e) {
        unframeable = true;
        const msg = e instanceof KmipFrameError ? e.message : 'the byte stream cannot be framed';
        chain = chain.then(() => {
          send(invalidMessage(V1_0, msg));
          socket.end();
        });
        socket.pause();
        return;
      }
      for (const f of frames) {
        pending += 1;
        if (pending >= MAX_PENDING) socket.pause();
        chain = chain
          .then(() => handle(f, identify))
          .then(send, (e) => {
            log.error({ err: { message: (e as Error).message, stack: (e as Error).stack } }, 'KMIP message failed');
            send(invalidMessage(V1_0, 'internal error'));
          })
          .finally(() => {
            pending -= 1;
            if (pending < MAX_PENDING && !socket.writableNeedDrain && !closing) socket.resume();
          });
      }
    });
  }
  server.on('secureConnection', onConnection);

  async function handle(frame: Buffer, identify: Identify): Promise<Buffer> {
    let t: Ttlv;
    try {
      t = decodeTtlv(frame);
    } catch (e) {
      return invalidMessage(V1_0, `malformed TTLV: ${(e as Error).message}`.slice(0, 200));
    }
    let req: RequestMessage;
    try {
      req = parseRequest(t);
    } catch (e) {
      const v = e instanceof KmipMessageError && e.protocolVersion ? answerVersion(e.protocolVersion) : V1_0;
      return invalidMessage(v, `malformed request: ${(e as Error).message}`.slice(0, 200));
    }
    const version = answerVersion(req.header.protocolVersion);
    const versionOk = isSupportedVersion(req.header.protocolVersion);

    let principal: KmipPrincipal | null = null;
    let authError: KmipError | null = null;
    try {
      const a = req.header.authentication;
      if (a && 'username' in a) principal = await identify.credential(a.username, a.password);
      else if (a) throw new KmipError(ResultReason.AuthenticationNotSuccessful, 'only Username and Password credentials are supported');
      else principal = await identify.cert();
      if (!principal) authError = new KmipError(ResultReason.AuthenticationNotSuccessful, 'the client certificate is not installed as a client certificate of any SVM');
    } catch (e) {
      if (!(e instanceof KmipError)) throw e;
      authError = e;
    }

    const ctx: OpContext | null = principal ? { version, v2: version.major >= 2, principal, objects: deps.objects, requestId: newId('req') } : null;
    const stopOnError = req.header.batchErrorContinuationOption !== BatchErrorContinuationOption.Continue;
    const items: ResponseBatchItem[] = [];
    // Audit records of reads (Get, Encrypt, Decrypt) handed over by their handlers: consecutive
    // reads of a batch share one group commit. Each is settled before the response is built, and
    // before any other kind of item runs, so the audit log keeps the batch's order.
    let deferred: { index: number; base: Partial<ResponseBatchItem>; operation: number; error: Promise<unknown> }[] = [];
    if (ctx)
      ctx.deferAudit = (recorded) => {
        const it = req.items[items.length];
        // The rejection is caught at once (never unhandled) and turned into the item's failure below.
        deferred.push({ index: items.length, base: { operation: it.operation, uniqueBatchItemId: it.uniqueBatchItemId }, operation: it.operation, error: recorded.then(() => null, (e: unknown) => e ?? new Error('audit failed')) });
      };
    /**
     * Waits for the deferred audit records; an item whose record failed fails (its material is not
     * sent) and, unless the batch continues on errors, the items after it are dropped as if the
     * batch had stopped there. False when one failed.
     */
    const settle = async (): Promise<boolean> => {
      const waiting = deferred;
      deferred = [];
      let firstFailed = -1;
      for (const d of waiting) {
        const e = await d.error;
        if (e === null) continue;
        if (firstFailed < 0) firstFailed = d.index;
        items[d.index] = await failed(e, d.base, ctx, d.operation);
      }
      if (firstFailed >= 0 && stopOnError) items.length = firstFailed + 1;
      return firstFailed < 0;
    };
    for (const it of req.items) {
      const base = { operation: it.operation, uniqueBatchItemId: it.uniqueBatchItemId };
      if (deferred.length > 0 && !DEFERRING_OPERATIONS.has(it.operation) && !(await settle()) && stopOnError) break;
      try {
        if (!versionOk && it.operation !== Operation.DiscoverVersions)
          throw new KmipError(ResultReason.InvalidMessage, `protocol version ${req.header.protocolVersion.major}.${req.header.protocolVersion.minor} is not supported`);
        const op = OPERATIONS.get(it.operation);
        if (!op) throw new KmipError(ResultReason.OperationNotSupported, `operation ${enumName(Operation, it.operation)} is not supported`);
        if (!ctx && !UNAUTHENTICATED_OPERATIONS.has(it.operation)) throw authError!;
        // Discover Versions and Query read only the version, never the principal.
        const anon: OpContext = ctx ?? { version, v2: version.major >= 2, principal: null as unknown as KmipPrincipal, objects: deps.objects, requestId: '' };
        const out = await op(anon, it.payload);
        const uid = out.find((x) => x.tag === Tag.UniqueIdentifier && x.type === ItemType.TextString);
        if (ctx && uid) ctx.placeholder = uid.value as string;
        items.push({ ...base, resultStatus: ResultStatus.Success, payload: ttlv.struct(Tag.ResponsePayload, out) });
      } catch (e) {
        items.push(await failed(e, base, ctx, it.operation));
        if (stopOnError) break;
      }
    }
    if (deferred.length > 0) await settle();
    // Every commit so far (a created key, a state change) is on disk before the client hears of it;
    // if the disk fails, no item of the batch is reported done.
    const synced = deps.durability.wait();
    if (synced) {
      try {
        await synced;
      } catch (e) {
        log.error({ err: { message: (e as Error).message } }, 'the store could not make a commit durable');
        const lost = items.map((i) => failure(ResultReason.GeneralFailure, 'the server could not store the result of this request', { operation: i.operation, uniqueBatchItemId: i.uniqueBatchItemId }));
        return encodeTtlv(buildResponse({ protocolVersion: version, timeStamp: nowSeconds(), items: lost }));
      }
    }
    let out = encodeTtlv(buildResponse({ protocolVersion: version, timeStamp: nowSeconds(), items }));
    const max = req.header.maximumResponseSize;
    if (max !== undefined && out.length > max) {
      // KMIP answers a response over the client's Maximum Response Size with Response Too Large. Items
      // that changed something (Create, Register, Activate, Destroy, …) have committed: told they
      // failed, a client would retry a Create (leaving an orphan key) or think a destroyed key still
      // exists. So only successful read-only items give up their answer; they can be asked again.
      const size = out.length;
      const withheld = items.map((i) =>
        i.resultStatus === ResultStatus.Success && i.operation !== undefined && READ_ONLY_OPERATIONS.has(i.operation)
          ? failure(ResultReason.ResponseTooLarge, `the response (${size} bytes) exceeds Maximum Response Size ${max}`, { operation: i.operation, uniqueBatchItemId: i.uniqueBatchItemId })
          : i,
      );
      out = encodeTtlv(buildResponse({ protocolVersion: version, timeStamp: nowSeconds(), items: withheld }));
      // Still too large: what is left are committed results and refusals. They are sent as they are,
      // over the maximum, because no smaller answer would be true.
      if (out.length > max) log.debug({ size: out.length, max }, 'KMIP response over the Maximum Response Size once every read was withheld');
    }
    return out;
  }

  async function failed(e: unknown, base: Partial<ResponseBatchItem>, ctx: OpContext | null, operation: number): Promise<ResponseBatchItem> {
    let reason: number;
    let message: string;
    if (e instanceof KmipError) {
      reason = e.reason;
      message = e.message;
    } else if (e instanceof KeysmithError) {
      reason = (ResultReason as Record<string, number>)[KMIP_REASONS[e.kind] ?? 'GeneralFailure'] ?? ResultReason.GeneralFailure;
      message = e.message;
    } else {
      log.error({ err: { message: (e as Error)?.message, stack: (e as Error)?.stack } }, 'KMIP operation failed');
      reason = ResultReason.GeneralFailure;
      message = 'internal error';
    }
    if (ctx)
      await audit
        .record({ actor: ctx.principal.actor, requestId: ctx.requestId, action: `kmip.${enumName(Operation, operation)}`, outcome: 'failure', objectType: 'key', objectId: e instanceof KmipError ? e.objectId : undefined, svmUuid: ctx.principal.svm.uuid, detail: { reason: enumName(ResultReason, reason) } })
        .catch((err) => log.error({ err: { message: (err as Error).message } }, 'audit of a KMIP refusal failed'));
    return failure(reason, message, base);
  }

  return {
    get port() {
      return boundPort;
    },
    listen: () =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(opts.port, opts.host, () => {
          server.off('error', reject);
          const a = server.address();
          boundPort = typeof a === 'object' && a ? a.port : opts.port;
          resolve({ host: opts.host, port: boundPort });
        });
      }),
    async close() {
      if (closing) return;
      closing = true;
      const closed = new Promise<void>((r) => server.close(() => r()));
      await Promise.all(
        [...conns].map(async (c) => {
          c.socket.pause();
          await Promise.race([c.idle(), new Promise((r) => setTimeout(r, 5000))]);
          c.socket.end();
          setTimeout(() => c.socket.destroy(), 1000).unref();
        }),
      );
      for (const c of conns) c.socket.destroy();
      if (server.listening) await closed;
    },
  };
}
