/**
 * The 'kmip' key manager type: a tenant's root key lives on an external KMIP server as an AES-256
 * Symmetric Key object; key_managers.root_id holds its KMIP Unique Identifier.
 *
 * Design choice: the root key is fetched with KMIP Get once per process (at start, or on first
 * use) and held in the keyring's memory, and KEKs are wrapped locally with the same AES-256-GCM
 * blob format (crypto/aead.ts, node:crypto) and context binding as the onboard key manager.
 * Reasons:
 * - It is what ONTAP itself does with an external key manager: it fetches its keys from the KMIP
 *   server at boot and uses them locally; the server's job is to hold keys, not to be in the data
 *   path. A KEK open is then never a network round trip, and the data path (keyring.kek) needs no
 *   change per key manager type.
 * - Server-side Encrypt/Decrypt would need AES-GCM with AAD on the server to keep the context
 *   binding (DESIGN invariant 4), which PyKMIP and several servers do not offer; CBC plus an
 *   integrity check of our own is exactly the hand-rolled construction we refuse.
 * - The root of trust still lives only on the KMIP server: it is never stored by Keysmith, sealed
 *   or not, so a restart must reach the server, and destroying the object there shreds every key
 *   of the tenant.
 * The cost: the root key must be extractable from the server (Get), as ONTAP also requires, and
 * sits in Keysmith's memory while it runs, as onboard roots do.
 *
 * Invariants:
 * - A root fetched from the server is used only if it is an AES key of exactly 32 bytes and matches
 *   the key-check value recorded when the configuration was made (kmip_configs.root_kcv, see
 *   rootCheck): another object under the same id, or another server, is refused, never used. A
 *   configuration made before that value existed adopts one only at start (loadAll) or on a checked
 *   change, once the fetched root has opened a KEK it wraps; until then its root is not used.
 * - Settings changed on another node (kmip_configs.revision moved) replace this node's cached ones
 *   on the periodic tick or when the cached ones fail, only for the same root: the stored key-check
 *   value must be the one in force here and match the root held here, or the root fetched through
 *   the new settings. Otherwise the old settings stay in use (refresh).
 * - wrapKek/unwrapKek bind each KEK to its tenant, id and version (kekContext), like okm.ts.
 * - No key material, password or private key reaches a log line, an error or an audit record.
 *   Errors carry the server names and Node's error codes only.
 */
import { createHmac, hkdfSync, timingSafeEqual, KeyObject } from 'node:crypto';
import { open, seal, type WrapContext } from '../crypto/aead.js';
import { KeysmithError, fail } from '../errors.js';
import { kekContext, type Keyring, type NodeIdentity } from '../hierarchy/keyring.js';
import { DEFAULT_KMIP_PORT, KmipClient, KmipClientError, KmipConnectError, KmipOperationError, type KmipServerAddress } from '../kmip/client.js';
import { CryptographicAlgorithm, Operation, ResultReason, RevocationReasonCode } from '../kmip/enums.js';
import type { KeyManagerRow } from '../store/key-manager-repo.js';
import type { KmipConfigRow, KmipServerRepo } from '../store/kmip-server-repo.js';
import type { KeyManager } from './key-manager.js';

/** One primary key server and its secondaries, as stored in kmip_configs.servers. */
export interface StoredServer {
  host: string;
  port: number;
  /** Seconds (ONTAP's `timeout`). */
  timeout: number;
  username?: string;
  secondary: { host: string; port: number }[];
}

/** What a node needs to connect that is secret: sealed per node (kmip_node_secrets). */
export interface KmipSecrets {
  /** The client certificate's private key, PKCS#8 PEM. */
  key: string;
  /**
   * KMIP passwords by primary server name (serverName): a password stays with its server when the
   * list is reordered or shortened, on this node and on nodes whose copy predates the change.
   */
  passwords: Record<string, string>;
}

export interface KmipEndpoint {
  servers: StoredServer[];
  clientCertificatePem: string;
  serverCaPems: string[];
  secrets: KmipSecrets;
}

export const DEFAULT_TIMEOUT_S = 10;

export const serverName = (s: { host: string; port: number }) => (s.host.includes(':') ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`);

/** The password a primary server (and its secondaries) is sent, if one is stored for it. */
export function passwordFor(secrets: KmipSecrets, s: { host: string; port: number }): string | null {
  const name = serverName(s);
  return Object.hasOwn(secrets.passwords, name) ? secrets.passwords[name] : null;
}

const KCV_LABEL = 'keysmith/kcv/v1';

/**
 * Key-check value of an external root: HMAC-SHA256 of a fixed label and the key manager's uuid under
 * a key derived from the root with HKDF (never the root itself, which also keys AES-GCM). It tells
 * whether a fetched key is the root a configuration was made with, and reveals nothing usable about
 * it. Not a secret; stored as lower-case hex.
 */
export function rootCheck(kmUuid: string, root: Buffer): string {
  const k = Buffer.from(hkdfSync('sha256', root, Buffer.alloc(0), KCV_LABEL, 32));
  try {
    return createHmac('sha256', k).update(`${KCV_LABEL}\0${kmUuid}`).digest('hex');
  } finally {
    k.fill(0);
  }
}

/** Constant-time comparison of a root with a stored key-check value; a malformed value matches nothing. */
export function matchesRootCheck(kmUuid: string, root: Buffer, kcv: string): boolean {
  if (!/^[0-9a-f]{64}$/.test(kcv)) return false;
  return timingSafeEqual(Buffer.from(kcv, 'hex'), Buffer.from(rootCheck(kmUuid, root), 'hex'));
}

/** The refusal for a fetched key that is not the configuration's root. */
export function wrongRoot(km: Pick<KeyManagerRow, 'uuid' | 'root_id'>, target?: string, server?: string): KeysmithError {
  return new KeysmithError('kmip_operation', `${server ? `Key server ${server}` : 'The key server'} returns another key for object ${km.root_id} than the root key manager ${km.uuid} was made with: it is not used.`, target);
}

/** "host", "host:port", "[v6]:port" → host and port (5696 by default); null when malformed. */
export function parseServer(text: unknown): { host: string; port: number } | null {
  if (typeof text !== 'string' || text.length === 0 || text.length > 300 || /\s/.test(text)) return null;
  let host = text;
  let port = DEFAULT_KMIP_PORT;
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::(\d+))?$/.exec(text);
  if (v6) {
    host = v6[1];
    if (v6[2] !== undefined) port = Number(v6[2]);
  } else {
    const parts = text.split(':');
    if (parts.length > 2) return null;
    host = parts[0];
    if (parts.length === 2) {
      if (!/^\d{1,5}$/.test(parts[1])) return null;
      port = Number(parts[1]);
    }
  }
  if (!host || !/^[A-Za-z0-9.\-_:]+$/.test(host) || port < 1 || port > 65535) return null;
  return { host, port };
}

export const nodeSecretContext = (km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid'>, nodeId: string): WrapContext => ({
  purpose: `kmip-secrets:${nodeId}`,
  tenant: km.svm_uuid,
  keyId: km.uuid,
  version: 1,
});

export function sealSecrets(node: NodeIdentity, km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid'>, secrets: KmipSecrets): Buffer {
  const plain = Buffer.from(JSON.stringify(secrets), 'utf8');
  try {
    return seal(node.sealKey, node.id, 1, nodeSecretContext(km, node.id), plain);
  } finally {
    plain.fill(0);
  }
}

/**
 * Opens a node's sealed secrets. `legacy`: the copy holds its passwords by position in the server list
 * of its time (sealed before they were keyed by name). `alignedWith` is that list when it is known to
 * be the current one; otherwise such passwords are dropped, never sent to whichever server now sits
 * at their position.
 */
export function openSecrets(node: NodeIdentity, km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid'>, blob: Buffer, alignedWith: StoredServer[] | null = null): { secrets: KmipSecrets; legacy: boolean } | null {
  const plain = open(node.sealKey, nodeSecretContext(km, node.id), blob);
  if (!plain) return null;
  try {
    let raw: { key: string; passwords?: unknown };
    try {
      raw = JSON.parse(plain.toString('utf8')) as { key: string; passwords?: unknown };
    } catch {
      // JSON.parse's message quotes its input, here passwords and a private key: never passed on.
      throw new Error(`the sealed KMIP secrets of key manager ${km.uuid} on this node are not readable`);
    }
    const passwords: Record<string, string> = {};
    const legacy = Array.isArray(raw.passwords);
    if (Array.isArray(raw.passwords)) {
      const list = raw.passwords as unknown[];
      if (alignedWith && list.length === alignedWith.length) list.forEach((pw, i) => typeof pw === 'string' && (passwords[serverName(alignedWith[i])] = pw));
    } else if (raw.passwords && typeof raw.passwords === 'object') {
      for (const [name, pw] of Object.entries(raw.passwords)) if (typeof pw === 'string') passwords[name] = pw;
    }
    return { secrets: { key: raw.key, passwords }, legacy };
  } finally {
    plain.fill(0);
  }
}

/** ONTAP's refusal for a failure to reach or use the KMIP server (see docs/errors.md). */
export function kmipRefusal(e: unknown, target?: string): KeysmithError {
  if (e instanceof KeysmithError) return e;
  if (e instanceof KmipConnectError) {
    // The primary's failure says most; a TLS verdict anywhere beats a plain connection failure.
    const tls = e.failures.find((f) => f.tls)?.tls;
    const where = e.failures.map((f) => `${f.server}: ${f.code ?? 'failed'}`).join('; ');
    if (tls === 'server_certificate') return new KeysmithError('kmip_server_ca', `Failed to establish secure connection for a key management server due to incorrect server_ca certificates (${where}).`, target);
    if (tls === 'client_certificate') return new KeysmithError('kmip_client_certificate', `Failed to establish secure connection for a key management server due to incorrect client certificates (${where}).`, target);
    if (tls === 'handshake') return new KeysmithError('kmip_tls', `Failed to establish secure connection for a key management server (${where}).`, target);
    return new KeysmithError('kmip_versions', `Failed to query supported KMIP protocol versions: no key server answered (${where}).`, target);
  }
  // PyKMIP, like other servers, accepts the TLS session and then answers Authentication Not
  // Successful for a client certificate it does not accept (e.g. no EKU clientAuth).
  if (e instanceof KmipOperationError && e.resultReason === ResultReason.AuthenticationNotSuccessful) {
    return new KeysmithError('kmip_client_certificate', 'Failed to establish secure connection for a key management server due to incorrect client certificates: the server did not accept the client certificate.', target);
  }
  if (e instanceof KmipOperationError) return new KeysmithError('kmip_operation', `The key server refused ${e.operation === Operation.Get ? 'to return the root key' : 'the request'}: ${e.message}`, target);
  if (e instanceof KmipClientError) return new KeysmithError('kmip_versions', `Failed to query supported KMIP protocol versions: ${e.message}`, target);
  throw e;
}

/**
 * Connections to KMIP servers, one client per primary key server (with its secondaries for
 * failover), reused between calls and closed when a configuration changes.
 */
export function createKmipConnector() {
  const cache = new Map<string, KmipClient[]>();

  function clientsFor(e: KmipEndpoint): KmipClient[] {
    return e.servers.map((s) => {
      const servers: KmipServerAddress[] = [{ host: s.host, port: s.port }, ...s.secondary.map((x) => ({ host: x.host, port: x.port }))];
      const password = passwordFor(e.secrets, s);
      return new KmipClient({
        servers,
        ca: e.serverCaPems,
        cert: e.clientCertificatePem,
        key: e.secrets.key,
        timeoutMs: s.timeout * 1000,
        credential: s.username !== undefined && password ? { username: s.username, password } : undefined,
      });
    });
  }

  /**
   * Runs `fn` against the first primary (and its secondaries) that can be reached, in order. Only
   * a failure to connect moves on to the next primary; a failed operation is reported as is.
   */
  async function run<T>(clients: KmipClient[], fn: (c: KmipClient) => Promise<T>): Promise<T> {
    const failures: KmipConnectError['failures'] = [];
    for (const c of clients) {
      try {
        return await fn(c);
      } catch (e) {
        if (e instanceof KmipConnectError) failures.push(...e.failures);
        else throw e;
      }
    }
    throw new KmipConnectError(failures);
  }

  return {
    /** With the cached clients of a key manager (made on first use). */
    async with<T>(kmUuid: string, endpoint: () => Promise<KmipEndpoint>, fn: (c: KmipClient) => Promise<T>): Promise<T> {
      let clients = cache.get(kmUuid);
      if (!clients) {
        clients = clientsFor(await endpoint());
        cache.set(kmUuid, clients);
      }
      return run(clients, fn);
    },
    /** With throw-away clients (a configuration being created or changed, a connectivity probe). */
    async once<T>(e: KmipEndpoint, fn: (c: KmipClient) => Promise<T>): Promise<T> {
      const clients = clientsFor(e);
      try {
        return await run(clients, fn);
      } finally {
        for (const c of clients) c.close();
      }
    },
    forget(kmUuid: string): void {
      for (const c of cache.get(kmUuid) ?? []) c.close();
      cache.delete(kmUuid);
    },
    close(): void {
      for (const k of [...cache.keys()]) this.forget(k);
    },
  };
}
export type KmipConnector = ReturnType<typeof createKmipConnector>;

/** Fetches a root key with Get and checks it is a 32-byte AES key. */
export async function fetchRoot(c: KmipClient, uid: string): Promise<Buffer> {
  const k = await c.get(uid);
  if (k.keyMaterial.length !== 32 || (k.cryptographicAlgorithm !== undefined && k.cryptographicAlgorithm !== CryptographicAlgorithm.AES)) {
    k.keyMaterial.fill(0);
    fail('kmip_operation', `KMIP object ${uid} is not a 256-bit AES key: it cannot be a root key.`);
  }
  return k.keyMaterial;
}

/**
 * Revokes and destroys an object on the server: only for a root this request has just created and
 * that no configuration records (an active object cannot be destroyed, so it is revoked first; a
 * server that refuses to revoke a pre-active one leaves Destroy to decide).
 */
export async function destroyRoot(c: KmipClient, uid: string): Promise<void> {
  try {
    await c.revoke(uid, RevocationReasonCode.CessationOfOperation);
  } catch (e) {
    if (!(e instanceof KmipOperationError)) throw e;
  }
  await c.destroy(uid);
}

/** The endpoint of a stored configuration for this node, or the refusal saying why there is none. */
export function endpointOf(cfg: KmipConfigRow, secrets: KmipSecrets): KmipEndpoint {
  return {
    servers: JSON.parse(cfg.servers) as StoredServer[],
    clientCertificatePem: cfg.client_certificate_pem,
    serverCaPems: JSON.parse(cfg.server_ca_pems) as string[],
    secrets,
  };
}

/** What a node's cached settings were built from: a change of any of these means another endpoint or root check. */
function settingsOf(cfg: Pick<KmipConfigRow, 'servers' | 'client_certificate_pem' | 'server_ca_pems' | 'root_kcv'>): string {
  return JSON.stringify([cfg.servers, cfg.client_certificate_pem, cfg.server_ca_pems, cfg.root_kcv ?? null]);
}

/** A configuration's settings as this node holds them, and the stored revision they were read at. */
interface Cached {
  endpoint: KmipEndpoint;
  /** The key-check value of its root (null: made before 0009, not yet proven). */
  kcv: string | null;
  revision: number;
  settings: string;
}

export function createKmipKeyManager(deps: {
  keyring: Pick<Keyring, 'root' | 'hasRoot' | 'putRoot' | 'wrapKek' | 'isSealed' | 'node'>;
  repo: Pick<KmipServerRepo, 'findConfig' | 'findNodeSecret' | 'upsertNodeSecret' | 'setRootCheck' | 'findKekOf' | 'configRevisions'>;
  connector: KmipConnector;
  /** The client certificate's private key through the certificates service (needs the admin SVM's KEK). */
  certificateKey: (certificateUuid: string) => Promise<KeyObject | null>;
}): KeyManager & {
  load(config: KeyManagerRow, opts?: { adopt?: boolean; outsideTx?: boolean }): Promise<void>;
  endpoint(config: KeyManagerRow): Promise<KmipEndpoint>;
  verifyRoot(config: KeyManagerRow, root: Buffer, kcv: string | null, adopt: boolean, target?: string): Promise<string>;
  rememberEndpoint(kmUuid: string, e: KmipEndpoint, stored: KmipConfigRow): void;
  forgetEndpoint(kmUuid: string): void;
  refresh(config: KeyManagerRow, opts?: { adopt?: boolean }): Promise<boolean>;
  changed(): Promise<string[]>;
} {
  const { keyring, repo, connector } = deps;
  const loading = new Map<string, Promise<void>>();
  const refreshing = new Map<string, Promise<boolean>>();
  // Connection settings of every configuration this node has used, read once (at start, or when it
  // was made or changed here) and again only when the stored revision moves (refresh). wrapKek and
  // unwrapKek run inside job transactions, where a store read outside that transaction would wait
  // forever on SQLite's one connection: with this cache they read nothing for any configuration
  // loaded at start or made on this node. The key-check value (null: made before 0009, not yet
  // proven) is read with the endpoint and for the same reason.
  const cache = new Map<string, Cached>();

  /** This node's connection settings for a configuration: its sealed copy, or made from the certificates service. */
  async function endpoint(config: KeyManagerRow): Promise<KmipEndpoint> {
    const known = cache.get(config.uuid);
    if (known) return known.endpoint;
    const cfg = await repo.findConfig(config.uuid);
    if (!cfg) throw new Error(`key manager ${config.uuid} of type kmip has no KMIP configuration`);
    const made = await readEndpoint(config, cfg);
    cache.set(config.uuid, made);
    return made.endpoint;
  }

  /** The endpoint of a stored configuration with this node's secrets for it (reads and may write the store). */
  async function readEndpoint(config: KeyManagerRow, cfg: KmipConfigRow): Promise<Cached> {
    const settings = { kcv: cfg.root_kcv ?? null, revision: Number(cfg.revision ?? 0), settings: settingsOf(cfg) };
    const servers = JSON.parse(cfg.servers) as StoredServer[];
    const s = await repo.findNodeSecret(config.uuid, keyring.node.id);
    // A copy sealed before passwords were keyed by name lines up with the current servers only if it
    // was sealed by the change that made them (the same transaction and time); else the list may have
    // changed on another node since.
    const opened = s ? openSecrets(keyring.node, config, s.blob, s.created_at === cfg.updated_at ? servers : null) : null;
    if (opened) {
      if (opened.legacy) await repo.upsertNodeSecret({ key_manager_uuid: config.uuid, node_id: keyring.node.id, blob: sealSecrets(keyring.node, config, opened.secrets), created_at: s!.created_at });
      return { endpoint: endpointOf(cfg, opened.secrets), ...settings };
    }
    // No copy for this node yet: the certificates service can open the private key while the admin
    // SVM's KEK is reachable (passwords are not recoverable that way: servers that check them need
    // the configuration to be patched on this node).
    let key: KeyObject | null = null;
    try {
      key = await deps.certificateKey(cfg.client_certificate_uuid);
    } catch {
      key = null;
    }
    if (!key) fail('kmip_not_on_node');
    const made: KmipSecrets = { key: key.export({ format: 'pem', type: 'pkcs8' }) as string, passwords: {} };
    await repo.upsertNodeSecret({ key_manager_uuid: config.uuid, node_id: keyring.node.id, blob: sealSecrets(keyring.node, config, made), created_at: new Date().toISOString() });
    return { endpoint: endpointOf(cfg, made), ...settings };
  }

  function setCheck(kmUuid: string, kcv: string): void {
    const known = cache.get(kmUuid);
    if (known) known.kcv = kcv;
  }

  /**
   * Refuses a fetched root that is not the configuration's: it must match `kcv`. Without one (made
   * before 0009), `adopt` records one, but only after the root opens a KEK of this configuration
   * (AES-GCM: no other key can); when none is wrapped yet nothing depends on the root, and it is
   * adopted as is, as at creation. Adopting reads and writes the store: callers pass `adopt` only
   * outside any transaction (start, a change of settings). Returns the value in force.
   */
  async function verifyRoot(config: KeyManagerRow, root: Buffer, kcv: string | null, adopt: boolean, target?: string): Promise<string> {
    if (kcv !== null) {
      if (!matchesRootCheck(config.uuid, root, kcv)) throw wrongRoot(config, target);
      return kcv;
    }
    if (!adopt) fail('kmip_operation', `The root key of key manager ${config.uuid} has not been checked against the keys it protects yet: it is checked at start and then every 30 seconds.`, target);
    const kek = await repo.findKekOf(config.uuid, config.root_version);
    if (kek) {
      const material = open(root, kekContext(kek), kek.wrapped);
      if (!material) throw wrongRoot(config, target);
      material.fill(0);
    }
    const made = rootCheck(config.uuid, root);
    if (await repo.setRootCheck(config.uuid, made)) {
      setCheck(config.uuid, made);
      return made;
    }
    // Another node recorded one meanwhile: this root must match it.
    const stored = (await repo.findConfig(config.uuid))?.root_kcv ?? null;
    if (stored === null || !matchesRootCheck(config.uuid, root, stored)) throw wrongRoot(config, target);
    setCheck(config.uuid, stored);
    return stored;
  }

  /**
   * Rebuilds the cached settings of a configuration from the store when its revision moved since
   * they were read (another node changed them). The new settings are adopted only for the same root:
   * their key-check value must be the one already in force here (a configuration's root never
   * changes) and must match the root this node holds; when it holds none, the root is fetched through
   * the new settings and checked (verifyRoot, `adopt` as there) before anything is switched, and kept.
   * A refusal leaves the old settings in use. True when new settings were adopted (the root is then
   * held here). Reads the store: never inside a transaction.
   */
  function refresh(config: KeyManagerRow, opts: { adopt?: boolean } = {}): Promise<boolean> {
    let p = refreshing.get(config.uuid);
    if (!p) {
      p = (async () => {
        const known = cache.get(config.uuid);
        if (!known) return false; // nothing cached: the next use reads the store anyway
        const cfg = await repo.findConfig(config.uuid);
        if (!cfg || Number(cfg.revision ?? 0) === known.revision) return false;
        if (settingsOf(cfg) === known.settings) {
          // Changed in nothing this node connects with (e.g. another node's own copy of the secrets).
          known.revision = Number(cfg.revision ?? 0);
          return false;
        }
        // Compared before anything is read or fetched: a configuration's root check value never changes.
        const otherRoot = () => new KeysmithError('kmip_operation', `The settings of key manager ${config.uuid} stored by another node name another root than the one in use here: they are not used.`);
        if (known.kcv !== null && (cfg.root_kcv ?? null) !== known.kcv) throw otherRoot();
        if (keyring.hasRoot(config) && (cfg.root_kcv == null || !matchesRootCheck(config.uuid, keyring.root(config), cfg.root_kcv))) throw otherRoot();
        const next = await readEndpoint(config, cfg);
        if (!keyring.hasRoot(config)) {
          let root: Buffer | undefined;
          try {
            root = await connector.once(next.endpoint, (c) => fetchRoot(c, config.root_id));
            next.kcv = await verifyRoot(config, root, next.kcv, opts.adopt === true);
            keyring.putRoot(config, root);
          } catch (e) {
            root?.fill(0);
            throw kmipRefusal(e);
          }
        }
        connector.forget(config.uuid);
        cache.set(config.uuid, next);
        return true;
      })().finally(() => refreshing.delete(config.uuid));
      refreshing.set(config.uuid, p);
    }
    return p;
  }

  /**
   * Makes the configuration's root available in the keyring (once; concurrent callers share the
   * fetch), after checking it is the root (verifyRoot; `adopt` as there). When it fails with the
   * cached settings, the stored ones may have been changed on another node: `outsideTx` callers
   * (holding no transaction) refresh and use them at once; callers inside a transaction only start
   * the refresh, which reads the store once their transaction has let go of it.
   */
  async function load(config: KeyManagerRow, opts: { adopt?: boolean; outsideTx?: boolean } = {}): Promise<void> {
    if (keyring.isSealed()) fail('sealed');
    if (keyring.hasRoot(config)) return;
    // Callers share a load only with callers of the same kind: an `adopt` or `outsideTx` load reads and
    // writes the store, and a caller inside a transaction that waited on it would wait on itself
    // (SQLite has one connection, held by that transaction).
    const slot = `${config.uuid}:${config.root_version}:${opts.adopt === true ? 'adopt' : opts.outsideTx === true ? 'out' : 'in'}`;
    let p = loading.get(slot);
    if (!p) {
      p = (async () => {
        let root: Buffer | undefined;
        try {
          await endpoint(config);
          root = await connector.with(config.uuid, () => endpoint(config), (c) => fetchRoot(c, config.root_id));
          await verifyRoot(config, root, cache.get(config.uuid)?.kcv ?? null, opts.adopt === true);
          keyring.putRoot(config, root);
        } catch (e) {
          root?.fill(0);
          // A refused connection must not stay cached: the next attempt starts afresh.
          connector.forget(config.uuid);
          if (cache.has(config.uuid)) {
            if (opts.outsideTx !== true && opts.adopt !== true) void refresh(config).catch(() => undefined);
            else if (await refresh(config, { adopt: opts.adopt })) return;
          }
          throw kmipRefusal(e);
        }
      })().finally(() => loading.delete(slot));
      loading.set(slot, p);
    }
    return p;
  }

  return {
    type: 'kmip',
    location: 'external',
    load,
    endpoint,
    verifyRoot,
    refresh,
    /** The configurations whose cached settings are older than the store's (one read of the revisions); gone ones are dropped. */
    async changed() {
      if (cache.size === 0) return [];
      const stored = await repo.configRevisions();
      const out: string[] = [];
      for (const [u, known] of cache) {
        const rev = stored.get(u);
        if (rev === undefined) {
          // Deleted on another node: its connections and settings are of no more use here.
          connector.forget(u);
          cache.delete(u);
        } else if (rev !== known.revision) out.push(u);
      }
      return out;
    },
    rememberEndpoint: (kmUuid, e, stored) => {
      cache.set(kmUuid, { endpoint: e, kcv: stored.root_kcv ?? null, revision: Number(stored.revision ?? 0), settings: settingsOf(stored) });
    },
    forgetEndpoint: (kmUuid) => {
      cache.delete(kmUuid);
    },

    async wrapKek(config, kek, material) {
      await load(config);
      return { wrapped: keyring.wrapKek(config, kek, material), rootVersion: config.root_version };
    },

    async unwrapKek(config, kek) {
      const at = { ...config, root_version: kek.root_version };
      await load(at);
      return open(keyring.root(at), kekContext(kek), kek.wrapped);
    },

    async ready(config) {
      await load(config, { outsideTx: true });
    },

    describe: (config) => ({ name: 'default', href: `/api/security/key-managers/${config.uuid}` }),

    async health(config) {
      try {
        await load(config, { outsideTx: true });
        return { code: 0, message: '' };
      } catch (e) {
        if (e instanceof KeysmithError) return { code: Number(e.code), message: e.message };
        throw e;
      }
    },
  };
}
export type KmipKeyManager = ReturnType<typeof createKmipKeyManager>;
