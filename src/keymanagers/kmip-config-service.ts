/**
 * External KMIP key managers (ONTAP POST/GET/PATCH /security/key-managers with `external`): how a
 * configuration is made (its root key created on the KMIP server), shown, changed and loaded at start.
 *
 * Invariants:
 * - A configuration is recorded only after its servers were reached over mutual TLS with the
 *   certificates named, and its root key was created there, activated and read back as a 256-bit
 *   AES key. Any failure refuses the request (with ONTAP's code for it) and records nothing.
 * - Every refusal that can be made before the root is created is made first. A root created and
 *   then refused (a racing configuration, a failed commit) is revoked and destroyed on its server,
 *   best effort, unless the store refers to its object: a key in use is never destroyed. A crash
 *   between the two can still leave one there, named keysmith-root-<cluster>-<key manager uuid>.
 * - The root's key-check value (root_kcv) is recorded with the configuration. A change of
 *   certificates or servers is recorded only after the new settings reach the server and Get of the
 *   root object returns a key matching it (and the very root this node holds, if it holds one): a
 *   change can never point a tenant at another key, and a refused change leaves the old settings in
 *   use.
 * - Passwords are kept by server name, so they follow their server through any change of the list.
 * - Every certificate a configuration newly names is read again, share-locked, in the transaction
 *   that records it, and must be the one validated: a certificate deleted meanwhile refuses the
 *   request (65536821), since the delete's own check (3735683) cannot see a configuration not yet
 *   committed.
 * - A new client certificate must carry the current one's key pair (ONTAP 65536850), so the
 *   private key copies other nodes hold stay valid.
 * - Passwords and private keys are sealed under this node's seal key (kmip_node_secrets); they are
 *   never shown, logged or audited.
 */
import { X509Certificate, timingSafeEqual, type KeyObject } from 'node:crypto';
import { KeysmithError, fail } from '../errors.js';
import { uuid } from '../ids.js';
import type { AuditService } from '../audit/audit-service.js';
import { fingerprintOf, type CertificateService } from '../certificates/certificate-service.js';
import type { Keyring } from '../hierarchy/keyring.js';
import type { CertificateRepo, CertificateRow } from '../store/certificate-repo.js';
import type { KeyManagerRepo, KeyManagerRow } from '../store/key-manager-repo.js';
import type { KmipConfigRow, KmipServerRepo } from '../store/kmip-server-repo.js';
import type { Db, Tx } from '../store/schema.js';
import type { SvmRow } from '../store/svm-repo.js';
import {
  DEFAULT_TIMEOUT_S,
  destroyRoot,
  fetchRoot,
  kmipRefusal,
  matchesRootCheck,
  parseServer,
  passwordFor,
  rootCheck,
  sealSecrets,
  serverName,
  wrongRoot,
  type KmipConnector,
  type KmipEndpoint,
  type KmipKeyManager,
  type KmipSecrets,
  type StoredServer,
} from './kmip-key-manager.js';
import type { KmipClient } from '../kmip/client.js';
import type { Actor } from './onboard-service.js';

/** ONTAP's certificate reference. */
export interface CertificateRef {
  name?: unknown;
  uuid?: unknown;
}

export interface ExternalInput {
  servers?: unknown;
  client_certificate?: unknown;
  server_ca_certificates?: unknown;
}

interface ServerInput {
  server?: unknown;
  timeout?: unknown;
  username?: unknown;
  password?: unknown;
  secondary_key_servers?: unknown;
}

const MAX_PRIMARIES = 4;
const MAX_SECONDARIES = 3;

const certLink = (c: { uuid: string; name: string }) => ({ uuid: c.uuid, name: c.name, _links: { self: { href: `/api/security/certificates/${c.uuid}` } } });

function spki(pem: string): Buffer {
  return new X509Certificate(pem).publicKey.export({ format: 'der', type: 'spki' }) as Buffer;
}

/** Validates ONTAP's `external.servers` into stored servers and their passwords. */
export function parseServers(input: unknown, target = 'external.servers'): { servers: StoredServer[]; passwords: (string | null)[] } {
  if (!Array.isArray(input) || input.length === 0) fail('invalid_field', `${target} must list at least one key server.`, target);
  if (input.length > MAX_PRIMARIES) fail('invalid_value', `At most ${MAX_PRIMARIES} primary key servers can be configured.`, target);
  const servers: StoredServer[] = [];
  const passwords: (string | null)[] = [];
  const seen = new Set<string>();
  input.forEach((raw: unknown, i) => {
    const t = `${target}[${i}]`;
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) fail('invalid_field', `${t} must be an object.`, t);
    const s = raw as ServerInput;
    const extra = Object.keys(s).filter((k) => !['server', 'timeout', 'username', 'password', 'secondary_key_servers', '_links'].includes(k));
    if (extra.length > 0) fail('invalid_field', `${t} has unknown fields: ${extra.join(', ')}.`, `${t}.${extra[0]}`);
    const addr = parseServer(s.server);
    if (!addr) fail('invalid_value', `${t}.server must be host or host:port.`, `${t}.server`);
    let timeout = DEFAULT_TIMEOUT_S;
    if (s.timeout !== undefined) {
      const n = typeof s.timeout === 'string' && /^\d+$/.test(s.timeout) ? Number(s.timeout) : s.timeout;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 60) fail('invalid_value', `${t}.timeout must be an integer from 1 to 60 seconds.`, `${t}.timeout`);
      timeout = n;
    }
    if (s.username !== undefined && (typeof s.username !== 'string' || s.username.length === 0 || s.username.length > 256)) fail('invalid_value', `${t}.username must be a non-empty string.`, `${t}.username`);
    if (s.password !== undefined && (typeof s.password !== 'string' || s.password.length === 0 || s.password.length > 256)) fail('invalid_value', `${t}.password must be a non-empty string.`, `${t}.password`);
    if (s.password !== undefined && s.username === undefined) fail('invalid_field', `${t}.password needs ${t}.username.`, `${t}.username`);
    const secondary: { host: string; port: number }[] = [];
    if (s.secondary_key_servers !== undefined) {
      if (!Array.isArray(s.secondary_key_servers) || s.secondary_key_servers.length > MAX_SECONDARIES) fail('invalid_value', `${t}.secondary_key_servers must list at most ${MAX_SECONDARIES} servers.`, `${t}.secondary_key_servers`);
      for (const x of s.secondary_key_servers) {
        const a = parseServer(x);
        if (!a) fail('invalid_value', `${t}.secondary_key_servers must hold host or host:port strings.`, `${t}.secondary_key_servers`);
        secondary.push(a);
      }
    }
    for (const a of [addr, ...secondary]) {
      if (seen.has(serverName(a))) fail('duplicate', `Key server ${serverName(a)} is listed twice.`, `${t}.server`);
      seen.add(serverName(a));
    }
    servers.push({ host: addr.host, port: addr.port, timeout, ...(s.username !== undefined ? { username: s.username as string } : {}), secondary });
    passwords.push((s.password as string | undefined) ?? null);
  });
  return { servers, passwords };
}

/** Passwords (in the order of `servers`) keyed by their server's name, as KmipSecrets holds them. */
function byName(servers: StoredServer[], passwords: (string | null)[]): Record<string, string> {
  const out: Record<string, string> = {};
  servers.forEach((s, i) => {
    const pw = passwords[i];
    if (pw !== null && pw !== undefined) out[serverName(s)] = pw;
  });
  return out;
}

export function createKmipConfigService(deps: {
  db: Db;
  repo: KmipServerRepo;
  keyManagers: Pick<KeyManagerRepo, 'insert' | 'findEnabledForSvm' | 'findByUuid' | 'findByRootId' | 'list'>;
  certificates: Pick<CertificateService, 'get' | 'list' | 'privateKey'>;
  certificateRows: Pick<CertificateRepo, 'findForUse'>;
  svms: { admin(): Promise<SvmRow | undefined>; resolve(ref: string): Promise<SvmRow | undefined> };
  keyring: Pick<Keyring, 'node' | 'putRoot' | 'hasRoot' | 'root' | 'isSealed' | 'forgetKeyManager'>;
  connector: KmipConnector;
  manager: KmipKeyManager;
  audit: AuditService;
  clusterUuid: string;
}) {
  const { db, repo, keyring, connector, audit } = deps;
  const now = () => new Date().toISOString();
  // A periodic tick, from the first loadAll (at start) until close: roots that could not be fetched at
  // start are tried again (the data path reads roots from the keyring only, so without this an outage
  // at boot would outlast the server's return), and settings changed on another node are adopted
  // (one read of the revisions, see tick).
  let ticker: NodeJS.Timeout | undefined;
  // Set by close(): a load or tick still running then starts no timer and no further work.
  let closed = false;
  // The tick in progress: ticks run one at a time (the timer skips a turn while one runs).
  let ticking: Promise<unknown> | undefined;
  let pending = false;
  const RETRY_MS = 30_000;

  /** An installed certificate named by uuid or name, in the SVM or the admin SVM, of one type. */
  async function findCertificate(svm: SvmRow, ref: unknown, type: 'client' | 'server_ca', target: string): Promise<CertificateRow> {
    if (!ref || typeof ref !== 'object' || Array.isArray(ref)) fail('invalid_field', `${target} must be an object with a name or uuid.`, target);
    const r = ref as CertificateRef;
    if ((r.uuid !== undefined && typeof r.uuid !== 'string') || (r.name !== undefined && typeof r.name !== 'string') || (r.uuid === undefined && r.name === undefined)) {
      fail('invalid_field', `${target} needs a name or uuid.`, target);
    }
    const admin = await deps.svms.admin();
    const scopes = [...new Set([svm.uuid, admin?.uuid].filter((x): x is string => !!x))];
    let row: CertificateRow | undefined;
    if (typeof r.uuid === 'string') {
      row = await deps.certificates.get(r.uuid);
      if (row && typeof r.name === 'string' && row.name !== r.name) row = undefined;
    } else {
      row = (await deps.certificates.list({ svmUuids: scopes, name: r.name as string, type })).find((c) => c.svm_uuid === svm.uuid) ?? (await deps.certificates.list({ svmUuids: scopes, name: r.name as string, type }))[0];
    }
    if (!row || row.type !== type || !scopes.includes(row.svm_uuid)) {
      throw new KeysmithError('certificate_not_installed', `The ${type} certificate named by ${target} is not installed for this SVM or the cluster.`, target);
    }
    return row;
  }

  async function clientKey(row: CertificateRow, target: string): Promise<KeyObject> {
    const key = await deps.certificates.privateKey(row);
    if (!key) throw new KeysmithError('certificate_not_installed', `The client certificate ${row.name} was installed without its private key: install it with private_key.`, target);
    return key;
  }

  async function resolveCas(svm: SvmRow, input: unknown): Promise<CertificateRow[]> {
    if (!Array.isArray(input) || input.length === 0) fail('invalid_field', 'external.server_ca_certificates must name at least one installed server_ca certificate.', 'external.server_ca_certificates');
    const out: CertificateRow[] = [];
    for (const [i, ref] of input.entries()) out.push(await findCertificate(svm, ref, 'server_ca', `external.server_ca_certificates[${i}]`));
    return out;
  }

  /**
   * In the transaction that records a configuration: each certificate it names anew is still installed
   * and is the one validated (same fingerprint). They were read before the round trips to the server,
   * and a delete may have landed since; findForUse makes a delete running now wait for this commit
   * (then its in-use check sees the configuration) or, when it came first, leaves nothing to find.
   */
  async function stillInstalled(named: { uuid: string; pem: string; target: string }[], tx: Tx): Promise<void> {
    for (const n of named) {
      const row = await deps.certificateRows.findForUse(n.uuid, tx);
      if (!row || row.fingerprint !== fingerprintOf(new X509Certificate(n.pem).raw)) {
        throw new KeysmithError('certificate_not_installed', `The certificate named by ${n.target} is no longer installed: it was deleted while the request was being checked.`, n.target);
      }
    }
  }

  function secretsRow(km: KeyManagerRow, secrets: KmipSecrets, t: string) {
    return { key_manager_uuid: km.uuid, node_id: keyring.node.id, blob: sealSecrets(keyring.node, km, secrets), created_at: t };
  }

  /** Whether every operation on `endpoint` reaches one and the same server (one primary, no secondaries). */
  const oneAddress = (endpoint: KmipEndpoint) => endpoint.servers.length === 1 && endpoint.servers[0].secondary.length === 0;

  /** Records what became of a root created for a configuration that was refused (ids and codes only). */
  async function auditDiscard(svm: SvmRow, who: Actor, kmUuid: string, uid: string, cleanup: string, cause: unknown): Promise<void> {
    const code = cause instanceof KeysmithError ? cause.code : new KeysmithError('internal').code;
    await audit
      .record({ ...who, action: 'key_manager.create', outcome: 'failure', objectType: 'key_manager', objectId: kmUuid, svmUuid: svm.uuid, detail: { code, root_object: uid, root_cleanup: cleanup } })
      .catch(() => undefined);
  }

  /**
   * Creates the root key on the server behind `endpoint` and reads it back. Returns its unique
   * identifier and material. Refusals carry ONTAP's code for what failed.
   */
  async function createRoot(endpoint: KmipEndpoint, name: string, svm: SvmRow, who: Actor, kmUuid: string): Promise<{ uid: string; root: Buffer }> {
    // A connection lost after Create moves on to the next primary, which makes its own root.
    const discarded: { uid: string; cleanup: string }[] = [];
    try {
      return await connector.once(endpoint, async (c: KmipClient) => {
        // ONTAP asks for the server's protocol versions first; an answer proves TLS both ways.
        await c.discoverVersions();
        const uid = await c.createAes256(name);
        try {
          await c.activate(uid);
          return { uid, root: await fetchRoot(c, uid) };
        } catch (e) {
          // Made by this request a moment ago, recorded nowhere: not left on the server. Only where
          // the settings name one address: with several, the client may have reconnected to another
          // server since the Create, where the same id can name someone else's key.
          const cleanup = !oneAddress(endpoint)
            ? 'kept_several_servers'
            : (await deps.keyManagers.findByRootId(uid).then((r) => r.length > 0, () => true))
              ? 'kept_in_use'
              : await destroyRoot(c, uid).then(() => 'destroyed', () => 'failed');
          discarded.push({ uid, cleanup });
          throw e;
        }
      });
    } catch (e) {
      const refusal = kmipRefusal(e, 'external');
      for (const d of discarded) await auditDiscard(svm, who, kmUuid, d.uid, d.cleanup, refusal);
      throw refusal;
    }
  }

  /**
   * A root created for a configuration that was then refused: revoked and destroyed on its server
   * (best effort), unless some key manager in the store refers to its object id. A commit that failed
   * without saying whether it happened may have recorded it after all, and a key the store refers to
   * is never destroyed; one whose check cannot be made is kept too.
   */
  async function discardRoot(endpoint: KmipEndpoint, uid: string, svm: SvmRow, who: Actor, kmUuid: string, cause: unknown): Promise<void> {
    let cleanup: string;
    try {
      // Destroyed only where that cannot reach another key: one address (see createRoot), and a
      // refusal of ours, so the transaction surely did not commit (a lost connection may have).
      if (!oneAddress(endpoint)) cleanup = 'kept_several_servers';
      else if (!(cause instanceof KeysmithError)) cleanup = 'kept_outcome_unknown';
      else if ((await deps.keyManagers.findByRootId(uid)).length > 0) cleanup = 'kept_in_use';
      else {
        await connector.once(endpoint, (c) => destroyRoot(c, uid));
        cleanup = 'destroyed';
      }
    } catch {
      cleanup = 'failed';
    }
    await auditDiscard(svm, who, kmUuid, uid, cleanup, cause);
  }

  /**
   * Checks that every primary server of `endpoint` (each with its secondaries) is reached with the
   * new settings and returns this configuration's root: the same bytes each time, matching its
   * key-check value `kcv` and the root this node holds, if any. A configuration without a value yet
   * (made before 0009) is given one here, once the root is proven (manager.verifyRoot). Returns the
   * root and the value in force.
   */
  async function verifySameRoot(km: KeyManagerRow, endpoint: KmipEndpoint, kcv: string | null, target = 'external'): Promise<{ root: Buffer; kcv: string }> {
    let first: Buffer | undefined;
    for (const srv of endpoint.servers) {
      const one: KmipEndpoint = { ...endpoint, servers: [srv] };
      let fetched: Buffer;
      try {
        fetched = await connector.once(one, (c) => fetchRoot(c, km.root_id));
      } catch (e) {
        first?.fill(0);
        throw kmipRefusal(e, target);
      }
      const expected = first ?? (keyring.hasRoot(km) ? keyring.root(km) : undefined);
      if ((expected && !timingSafeEqual(expected, fetched)) || (kcv !== null && !matchesRootCheck(km.uuid, fetched, kcv))) {
        fetched.fill(0);
        first?.fill(0);
        throw wrongRoot(km, target, serverName(srv));
      }
      if (first) fetched.fill(0);
      else first = fetched;
    }
    if (!first) fail('invalid_field', 'At least one key server is needed.', target);
    try {
      return { root: first, kcv: await deps.manager.verifyRoot(km, first, kcv, true, target) };
    } catch (e) {
      first.fill(0);
      throw e;
    }
  }

  /** ONTAP's `external` object of a configuration. `connectivity` probes each server from this node (expensive). */
  async function view(km: KeyManagerRow, opts: { connectivity?: boolean; nodeName?: string } = {}): Promise<Record<string, unknown> | undefined> {
    const cfg = await repo.findConfig(km.uuid);
    if (!cfg) return undefined;
    const servers = JSON.parse(cfg.servers) as StoredServer[];
    const caUuids = JSON.parse(cfg.server_ca_uuids) as string[];
    const client = await deps.certificates.get(cfg.client_certificate_uuid);
    const cas = await Promise.all(caUuids.map(async (u) => (await deps.certificates.get(u)) ?? { uuid: u, name: '' }));
    let states: string[] | undefined;
    if (opts.connectivity) {
      let endpoint: KmipEndpoint | undefined;
      try {
        endpoint = await deps.manager.endpoint(km);
      } catch {
        endpoint = undefined; // this node cannot connect at all: every server's state is unknown
      }
      states = await Promise.all(
        servers.map(async (s) => {
          if (!endpoint) return 'unknown';
          // Each primary on its own (its password found by its name), so one answering does not hide
          // another; with the stored certificates, which another node may have changed since this one cached them.
          const one: KmipEndpoint = { ...endpoint, clientCertificatePem: cfg.client_certificate_pem, serverCaPems: JSON.parse(cfg.server_ca_pems) as string[], servers: [{ ...s, secondary: [] }] };
          try {
            await connector.once(one, (c) => c.discoverVersions());
            return 'available';
          } catch {
            return 'not_responding';
          }
        }),
      );
    }
    return {
      servers: servers.map((s, i) => ({
        server: serverName(s),
        timeout: s.timeout,
        ...(s.username !== undefined ? { username: s.username } : {}),
        secondary_key_servers: s.secondary.map(serverName),
        ...(states
          ? { connectivity: { cluster_availability: states[i] === 'available', node_states: [{ node: { name: opts.nodeName ?? keyring.node.id, uuid: keyring.node.id }, state: states[i] }] } }
          : {}),
        _links: { self: { href: `/api/security/key-managers/${km.uuid}/key-servers/${encodeURIComponent(serverName(s))}` } },
      })),
      client_certificate: certLink(client ?? { uuid: cfg.client_certificate_uuid, name: '' }),
      server_ca_certificates: cas.map(certLink),
    };
  }

  /** Creates a configuration from a ready endpoint: its root made on the server, then recorded. */
  async function createWith(
    svm: SvmRow,
    endpoint: KmipEndpoint,
    refs: { clientUuid: string; caUuids: string[] },
    who: Actor,
    opts: { inactive?: boolean; keyProviderId?: number; rootName?: string } = {},
  ): Promise<KeyManagerRow> {
    const inactive = opts.inactive === true;
    const { servers, secrets } = endpoint;
    // Every refusal that can be made without the root comes before it is created on the server.
    if (keyring.isSealed()) fail('sealed');
    if (!inactive && (await deps.keyManagers.findEnabledForSvm(svm.uuid))) fail('key_manager_exists', undefined, 'svm');
    const kmUuid = uuid();
    const { uid, root } = await createRoot(endpoint, opts.rootName ?? `keysmith-root-${deps.clusterUuid}-${kmUuid}`, svm, who, kmUuid);
    const kcv = rootCheck(kmUuid, root);
    const t = now();
    const km: KeyManagerRow = {
      uuid: kmUuid,
      svm_uuid: svm.uuid,
      type: 'kmip',
      enabled: inactive ? 0 : 1,
      state: inactive ? 'disabled' : 'active',
      // No passphrase: the root is never sealed by Keysmith; it lives on the KMIP server.
      kdf: '{}',
      root_id: uid,
      root_version: 1,
      passphrase_seal: Buffer.alloc(0),
      backup_seal: Buffer.alloc(0),
      created_at: t,
      updated_at: t,
    };
    const cfg: KmipConfigRow = {
      key_manager_uuid: kmUuid,
      servers: JSON.stringify(servers),
      client_certificate_uuid: refs.clientUuid,
      client_certificate_pem: endpoint.clientCertificatePem,
      server_ca_uuids: JSON.stringify(refs.caUuids),
      server_ca_pems: JSON.stringify(endpoint.serverCaPems),
      key_provider_id: opts.keyProviderId ?? null,
      created_at: t,
      updated_at: t,
      root_kcv: kcv,
    };
    try {
      keyring.putRoot(km, root);
      await db.transaction().execute(async (tx: Tx) => {
        await stillInstalled(
          [
            { uuid: refs.clientUuid, pem: endpoint.clientCertificatePem, target: 'external.client_certificate' },
            ...refs.caUuids.map((u, i) => ({ uuid: u, pem: endpoint.serverCaPems[i], target: `external.server_ca_certificates[${i}]` })),
          ],
          tx,
        );
        if (!inactive && (await deps.keyManagers.findEnabledForSvm(svm.uuid, tx))) fail('key_manager_exists', undefined, 'svm');
        await deps.keyManagers.insert(km, tx);
        await repo.insertConfig(cfg, tx);
        await repo.upsertNodeSecret(secretsRow(km, secrets, t), tx);
        await audit.recordIn(tx, {
          ...who,
          action: 'key_manager.create',
          outcome: 'success',
          objectType: 'key_manager',
          objectId: km.uuid,
          svmUuid: svm.uuid,
          detail: { type: 'external', servers: servers.map(serverName), client_certificate: refs.clientUuid, server_ca_certificates: refs.caUuids, root_object: uid, ...(inactive ? { inactive: true } : {}), ...(opts.keyProviderId ? { key_provider: opts.keyProviderId } : {}) },
        });
      });
    } catch (e) {
      keyring.forgetKeyManager(km.uuid);
      root.fill(0);
      await discardRoot(endpoint, uid, svm, who, kmUuid, e);
      throw e;
    }
    deps.manager.rememberEndpoint(km.uuid, endpoint, cfg);
    return km;
  }

  return {
    view,

    /** ONTAP's status of a configuration on this node: 0, or the code of the refusal that stops it. */
    health: (km: KeyManagerRow) => deps.manager.health(km),

    /** POST /security/key-managers with `external`: a KMIP key manager for the SVM, its root created on the server. */
    async create(svm: SvmRow, input: ExternalInput, who: Actor, opts: { inactive?: boolean; keyProviderId?: number; rootName?: string } = {}): Promise<KeyManagerRow> {
      if (!input || typeof input !== 'object' || Array.isArray(input)) fail('invalid_field', 'external must be an object.', 'external');
      const extra = Object.keys(input).filter((k) => !['servers', 'client_certificate', 'server_ca_certificates'].includes(k));
      if (extra.length > 0) fail('invalid_field', `external has unknown fields: ${extra.join(', ')}.`, `external.${extra[0]}`);
      if (keyring.isSealed()) fail('sealed');
      const inactive = opts.inactive === true;
      if (!inactive && (await deps.keyManagers.findEnabledForSvm(svm.uuid))) fail('key_manager_exists', undefined, 'svm');
      const parsed = parseServers(input.servers);
      const { servers } = parsed;
      if (input.client_certificate === undefined) fail('invalid_field', 'external.client_certificate is required.', 'external.client_certificate');
      const client = await findCertificate(svm, input.client_certificate, 'client', 'external.client_certificate');
      const cas = await resolveCas(svm, input.server_ca_certificates);
      const key = await clientKey(client, 'external.client_certificate');
      const secrets: KmipSecrets = { key: key.export({ format: 'pem', type: 'pkcs8' }) as string, passwords: byName(servers, parsed.passwords) };
      const endpoint: KmipEndpoint = { servers, clientCertificatePem: client.public_certificate, serverCaPems: cas.map((c) => c.public_certificate), secrets };
      return createWith(svm, endpoint, { clientUuid: client.uuid, caUuids: cas.map((c) => c.uuid) }, who, opts);
    },

    createWith,

    /** Connects to the servers of an endpoint and asks their KMIP versions (Element's Test methods); refusals carry the TLS verdict. */
    async probe(endpoint: KmipEndpoint): Promise<void> {
      try {
        await connector.once(endpoint, (c) => c.discoverVersions());
      } catch (e) {
        throw kmipRefusal(e);
      }
    },

    /** PATCH /security/key-managers/{uuid} with `external`: new certificates or servers, checked against the server first. */
    async update(km: KeyManagerRow, input: ExternalInput, who: Actor): Promise<void> {
      if (km.type !== 'kmip') fail('external_not_enabled', undefined, 'external');
      if (!input || typeof input !== 'object' || Array.isArray(input)) fail('invalid_field', 'external must be an object.', 'external');
      const extra = Object.keys(input).filter((k) => !['servers', 'client_certificate', 'server_ca_certificates'].includes(k));
      if (extra.length > 0) fail('invalid_field', `external has unknown fields: ${extra.join(', ')}.`, `external.${extra[0]}`);
      if (input.servers === undefined && input.client_certificate === undefined && input.server_ca_certificates === undefined) fail('invalid_field', 'Nothing to change in external.', 'external');
      if (keyring.isSealed()) fail('sealed');
      const cfg = await repo.findConfig(km.uuid);
      if (!cfg) throw new Error(`key manager ${km.uuid} has no KMIP configuration`);
      const svm = await deps.svms.resolve(km.svm_uuid);
      if (!svm) fail('not_found', undefined, 'uuid');
      // This node's secrets; everything else from the store, which another node may have changed since
      // this node cached it (what is not patched here must stay as stored, not as cached).
      let current: KmipSecrets;
      try {
        current = (await deps.manager.endpoint(km)).secrets;
      } catch (e) {
        // A node without its copy of the client key gets one by naming the client certificate here.
        if (!(e instanceof KeysmithError && e.kind === 'kmip_not_on_node') || input.client_certificate === undefined) throw e;
        current = { key: '', passwords: {} };
      }
      let servers = JSON.parse(cfg.servers) as StoredServer[];
      let passwords = current.passwords;
      if (input.servers !== undefined) {
        const p = parseServers(input.servers);
        servers = p.servers;
        // A server given without a password keeps the one stored for its name, if any; a server no
        // longer listed takes its password with it.
        passwords = byName(
          servers,
          p.passwords.map((pw, i) => pw ?? passwordFor(current, servers[i])),
        );
      }
      let client: CertificateRow | undefined;
      let key = current.key;
      if (input.client_certificate !== undefined) {
        client = await findCertificate(svm, input.client_certificate, 'client', 'external.client_certificate');
        // ONTAP: a replacement client certificate must carry the same key pair (a renewal), or keys
        // already held for this client on the server would no longer be reachable.
        if (!spki(client.public_certificate).equals(spki(cfg.client_certificate_pem))) fail('client_certificate_keys_differ', undefined, 'external.client_certificate');
        key = (await clientKey(client, 'external.client_certificate')).export({ format: 'pem', type: 'pkcs8' }) as string;
      }
      const cas = input.server_ca_certificates !== undefined ? await resolveCas(svm, input.server_ca_certificates) : undefined;
      const secrets: KmipSecrets = { key, passwords };
      const endpoint: KmipEndpoint = {
        servers,
        clientCertificatePem: client?.public_certificate ?? cfg.client_certificate_pem,
        serverCaPems: cas ? cas.map((c) => c.public_certificate) : (JSON.parse(cfg.server_ca_pems) as string[]),
        secrets,
      };
      const checked = await verifySameRoot(km, endpoint, cfg.root_kcv ?? null);
      const root = checked.root;
      const t = now();
      let stored: KmipConfigRow;
      try {
        stored = await db.transaction().execute(async (tx: Tx) => {
          await stillInstalled(
            [
              ...(client ? [{ uuid: client.uuid, pem: client.public_certificate, target: 'external.client_certificate' }] : []),
              ...(cas ?? []).map((c, i) => ({ uuid: c.uuid, pem: c.public_certificate, target: `external.server_ca_certificates[${i}]` })),
            ],
            tx,
          );
          await repo.updateConfig(
            km.uuid,
            {
              servers: JSON.stringify(servers),
              ...(client ? { client_certificate_uuid: client.uuid, client_certificate_pem: client.public_certificate } : {}),
              ...(cas ? { server_ca_uuids: JSON.stringify(cas.map((c) => c.uuid)), server_ca_pems: JSON.stringify(cas.map((c) => c.public_certificate)) } : {}),
              updated_at: t,
            },
            tx,
          );
          await repo.upsertNodeSecret(secretsRow(km, secrets, t), tx);
          await audit.recordIn(tx, {
            ...who,
            action: 'key_manager.update_external',
            outcome: 'success',
            objectType: 'key_manager',
            objectId: km.uuid,
            svmUuid: km.svm_uuid,
            detail: { servers: servers.map(serverName), ...(client ? { client_certificate: client.uuid } : {}), ...(cas ? { server_ca_certificates: cas.map((c) => c.uuid) } : {}) },
          });
          // As written, with its new revision: this node's settings are then current, not refreshed again.
          return (await repo.findConfig(km.uuid, tx))!;
        });
      } catch (e) {
        root.fill(0);
        throw e;
      }
      connector.forget(km.uuid);
      deps.manager.rememberEndpoint(km.uuid, endpoint, stored);
      if (!keyring.hasRoot(km)) keyring.putRoot(km, root);
      else root.fill(0);
    },

    /** ONTAP's key_server records of a configuration (GET .../key-servers). */
    async keyServers(km: KeyManagerRow, opts: { connectivity?: boolean; nodeName?: string } = {}): Promise<Record<string, unknown>[]> {
      if (km.type !== 'kmip') fail('external_not_enabled', undefined, 'uuid');
      const ext = await view(km, opts);
      return ((ext?.servers ?? []) as Record<string, unknown>[]).map((r) => ({ ...r }));
    },

    /**
     * POST/PATCH/DELETE .../key-servers: the server list changed one way, then the same checked
     * update as a PATCH of `external.servers` (every primary must return this root).
     */
    async changeServers(km: KeyManagerRow, change: { add?: unknown[]; modify?: { server: string; patch: Record<string, unknown> }; remove?: string }, who: Actor): Promise<void> {
      if (km.type !== 'kmip') fail('external_not_enabled', undefined, 'uuid');
      const cfg = await repo.findConfig(km.uuid);
      if (!cfg) throw new Error(`key manager ${km.uuid} has no KMIP configuration`);
      const raw: Record<string, unknown>[] = (JSON.parse(cfg.servers) as StoredServer[]).map((s) => ({
        server: serverName(s),
        timeout: s.timeout,
        ...(s.username !== undefined ? { username: s.username } : {}),
        secondary_key_servers: s.secondary.map(serverName),
      }));
      const index = (name: string) => {
        const a = parseServer(name);
        const i = a ? raw.findIndex((r) => r.server === serverName(a)) : -1;
        if (i < 0) fail('not_found', `Key server ${name} is not configured in this key manager.`, 'server');
        return i;
      };
      if (change.add) raw.push(...(change.add as Record<string, unknown>[]));
      if (change.modify) {
        const i = index(change.modify.server);
        raw[i] = { ...raw[i], ...change.modify.patch };
      }
      if (change.remove !== undefined) {
        const i = index(change.remove);
        if (raw.length === 1) fail('invalid_field', 'The last primary key server cannot be removed: delete the key manager instead.', 'server');
        raw.splice(i, 1);
      }
      await this.update(km, { servers: raw }, who);
    },

    /** At start: fetches the root of every KMIP configuration (failures are reported, not thrown). */
    async loadAll(): Promise<{ loaded: string[]; failed: { uuid: string; code: string }[] }> {
      const loaded: string[] = [];
      const failed: { uuid: string; code: string }[] = [];
      if (closed || keyring.isSealed()) return { loaded, failed };
      for (const km of await deps.keyManagers.list()) {
        if (km.type !== 'kmip') continue;
        try {
          // Outside any transaction: a configuration made before 0009 may adopt its key-check value here.
          await deps.manager.load(km, { adopt: true });
          loaded.push(km.uuid);
        } catch (e) {
          failed.push({ uuid: km.uuid, code: e instanceof KeysmithError ? e.code : 'internal' });
        }
      }
      pending = failed.length > 0;
      if (!ticker && !closed) {
        ticker = setInterval(() => {
          if (!ticking) void this.tick().catch(() => undefined);
        }, RETRY_MS);
        ticker.unref();
      }
      return { loaded, failed };
    },

    /**
     * The periodic tick: adopts the settings of every configuration changed on another node since this
     * node cached them (manager.refresh: only for the same root; a refusal keeps the old settings and
     * is tried again next tick), then retries the roots that could not be loaded. Without a change,
     * its only store read is the revisions.
     */
    async tick(): Promise<{ refreshed: string[]; refused: { uuid: string; code: string }[] }> {
      while (ticking) await ticking.catch(() => undefined);
      const run = (async () => {
        const refreshed: string[] = [];
        const refused: { uuid: string; code: string }[] = [];
        if (closed || keyring.isSealed()) return { refreshed, refused };
        for (const u of await deps.manager.changed()) {
          const km = await deps.keyManagers.findByUuid(u);
          if (!km || km.type !== 'kmip') continue;
          try {
            // Outside any transaction, as at start.
            if (await deps.manager.refresh(km, { adopt: true })) refreshed.push(u);
          } catch (e) {
            refused.push({ uuid: u, code: e instanceof KeysmithError ? e.code : 'internal' });
          }
        }
        if (pending && !closed) await this.loadAll();
        return { refreshed, refused };
      })();
      ticking = run;
      try {
        return await run;
      } finally {
        if (ticking === run) ticking = undefined;
      }
    },

    /** Drops cached connections of a configuration (deleted or changed). */
    forget(kmUuid: string): void {
      connector.forget(kmUuid);
      deps.manager.forgetEndpoint(kmUuid);
    },

    close(): void {
      closed = true;
      if (ticker) clearInterval(ticker);
      ticker = undefined;
      connector.close();
    },

    /** For Element key providers: a configuration's stored row. */
    findConfig: (kmUuid: string) => repo.findConfig(kmUuid),
  };
}
export type KmipConfigService = ReturnType<typeof createKmipConfigService>;
