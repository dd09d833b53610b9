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
 * - A root fetched from the server is used only if it is an AES key of exactly 32 bytes.
 * - wrapKek/unwrapKek bind each KEK to its tenant, id and version (kekContext), like okm.ts.
 * - No key material, password or private key reaches a log line, an error or an audit record.
 *   Errors carry the server names and Node's error codes only.
 */
import { KeyObject } from 'node:crypto';
import { open, seal, type WrapContext } from '../crypto/aead.js';
import { KeysmithError, fail } from '../errors.js';
import { kekContext, type Keyring, type NodeIdentity } from '../hierarchy/keyring.js';
import { DEFAULT_KMIP_PORT, KmipClient, KmipClientError, KmipConnectError, KmipOperationError, type KmipServerAddress } from '../kmip/client.js';
import { CryptographicAlgorithm, Operation, ResultReason } from '../kmip/enums.js';
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
  /** KMIP passwords, by primary server index. */
  passwords: (string | null)[];
}

export interface KmipEndpoint {
  servers: StoredServer[];
  clientCertificatePem: string;
  serverCaPems: string[];
  secrets: KmipSecrets;
}

export const DEFAULT_TIMEOUT_S = 10;

export const serverName = (s: { host: string; port: number }) => (s.host.includes(':') ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`);

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

export function openSecrets(node: NodeIdentity, km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid'>, blob: Buffer): KmipSecrets | null {
  const plain = open(node.sealKey, nodeSecretContext(km, node.id), blob);
  if (!plain) return null;
  try {
    return JSON.parse(plain.toString('utf8')) as KmipSecrets;
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
    return e.servers.map((s, i) => {
      const servers: KmipServerAddress[] = [{ host: s.host, port: s.port }, ...s.secondary.map((x) => ({ host: x.host, port: x.port }))];
      const password = e.secrets.passwords[i];
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

/** The endpoint of a stored configuration for this node, or the refusal saying why there is none. */
export function endpointOf(cfg: KmipConfigRow, secrets: KmipSecrets): KmipEndpoint {
  return {
    servers: JSON.parse(cfg.servers) as StoredServer[],
    clientCertificatePem: cfg.client_certificate_pem,
    serverCaPems: JSON.parse(cfg.server_ca_pems) as string[],
    secrets,
  };
}

export function createKmipKeyManager(deps: {
  keyring: Pick<Keyring, 'root' | 'hasRoot' | 'putRoot' | 'wrapKek' | 'isSealed' | 'node'>;
  repo: Pick<KmipServerRepo, 'findConfig' | 'findNodeSecret' | 'upsertNodeSecret'>;
  connector: KmipConnector;
  /** The client certificate's private key through the certificates service (needs the admin SVM's KEK). */
  certificateKey: (certificateUuid: string) => Promise<KeyObject | null>;
}): KeyManager & {
  load(config: KeyManagerRow): Promise<void>;
  endpoint(config: KeyManagerRow): Promise<KmipEndpoint>;
  rememberEndpoint(kmUuid: string, e: KmipEndpoint): void;
  forgetEndpoint(kmUuid: string): void;
} {
  const { keyring, repo, connector } = deps;
  const loading = new Map<string, Promise<void>>();
  // Connection settings of every configuration this node has used, read once (at start, or when it
  // was made or changed here). wrapKek/unwrapKek run inside job transactions, where a store read
  // outside that transaction would wait forever on SQLite's one connection: with this cache they
  // read nothing for any configuration loaded at start or made on this node.
  const endpoints = new Map<string, KmipEndpoint>();

  /** This node's connection settings for a configuration: its sealed copy, or made from the certificates service. */
  async function endpoint(config: KeyManagerRow): Promise<KmipEndpoint> {
    const known = endpoints.get(config.uuid);
    if (known) return known;
    const e = await readEndpoint(config);
    endpoints.set(config.uuid, e);
    return e;
  }

  async function readEndpoint(config: KeyManagerRow): Promise<KmipEndpoint> {
    const cfg = await repo.findConfig(config.uuid);
    if (!cfg) throw new Error(`key manager ${config.uuid} of type kmip has no KMIP configuration`);
    const s = await repo.findNodeSecret(config.uuid, keyring.node.id);
    const secrets = s ? openSecrets(keyring.node, config, s.blob) : null;
    if (secrets) return endpointOf(cfg, secrets);
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
    const servers = JSON.parse(cfg.servers) as StoredServer[];
    const made: KmipSecrets = { key: key.export({ format: 'pem', type: 'pkcs8' }) as string, passwords: servers.map(() => null) };
    await repo.upsertNodeSecret({ key_manager_uuid: config.uuid, node_id: keyring.node.id, blob: sealSecrets(keyring.node, config, made), created_at: new Date().toISOString() });
    return endpointOf(cfg, made);
  }

  /** Makes the configuration's root available in the keyring (once; concurrent callers share the fetch). */
  async function load(config: KeyManagerRow): Promise<void> {
    if (keyring.isSealed()) fail('sealed');
    if (keyring.hasRoot(config)) return;
    const slot = `${config.uuid}:${config.root_version}`;
    let p = loading.get(slot);
    if (!p) {
      p = (async () => {
        try {
          const root = await connector.with(config.uuid, () => endpoint(config), (c) => fetchRoot(c, config.root_id));
          keyring.putRoot(config, root);
        } catch (e) {
          // A refused connection must not stay cached: the next attempt starts afresh.
          connector.forget(config.uuid);
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
    rememberEndpoint: (kmUuid, e) => void endpoints.set(kmUuid, e),
    forgetEndpoint: (kmUuid) => void endpoints.delete(kmUuid),

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
      await load(config);
    },

    describe: (config) => ({ name: 'default', href: `/api/security/key-managers/${config.uuid}` }),

    async health(config) {
      try {
        await load(config);
        return { code: 0, message: '' };
      } catch (e) {
        if (e instanceof KeysmithError) return { code: Number(e.code), message: e.message };
        throw e;
      }
    },
  };
}
export type KmipKeyManager = ReturnType<typeof createKmipKeyManager>;
