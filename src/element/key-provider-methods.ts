/**
 * Element KMIP key providers and key servers (Element 12.5/12.7: CreateKeyProviderKmip,
 * CreateKeyServerKmip, … DeleteKeyServerKmip), and the master-key moves they make possible:
 * RekeySoftwareEncryptionAtRestMasterKey External with a keyProviderID moves the master key onto a
 * new root key created on the provider's KMIP server; Internal moves it back to the admin SVM's
 * onboard key manager.
 *
 * Model:
 * - A key server holds what Element's does: CA certificate(s) (PEM, possibly concatenated), the
 *   client certificate (PEM), host names (several for a clustered server, tried in order) and a
 *   port. Element generates the client key pair itself; Keysmith cannot, so the client
 *   certificate must be installed with its private key through /api/security/certificates (type
 *   client), and is found by fingerprint. A provider has at most one server, as Element's.
 * - Each External rekey makes a new 'kmip' keystore configuration of the admin SVM (key_provider_id
 *   set) with a fresh root object on the server, and switches the admin SVM to it as a job (the KEKs
 *   move; no DEK changes). Element's "master keys are always replaced" holds: the old one is
 *   decommissioned when the move ends.
 * - A provider is active while the admin SVM's enabled configuration was made from it.
 */
import { X509Certificate } from 'node:crypto';
import type { SvmRow } from '../store/svm-repo.js';
import type { Services } from '../app.js';
import { fingerprintOf } from '../certificates/certificate-service.js';
import { fail } from '../errors.js';
import { MIGRATE_JOB, SWITCH_JOB } from '../keymanagers/key-store-service.js';
import { keyInfo, type EncryptionKeyInfo } from '../keymanagers/master-key-service.js';
import { DEFAULT_TIMEOUT_S, type KmipEndpoint } from '../keymanagers/kmip-key-manager.js';
import { MASTER_PROVIDER_JOB, type MasterProviderParams } from '../jobs/master-provider-job.js';
import type { Principal } from '../auth/auth-service.js';
import { createKeyStoreRepo } from '../store/key-store-repo.js';
import type { KeyManagerRow } from '../store/key-manager-repo.js';
import type { KmipKeyProviderRow, KmipKeyServerRow } from '../store/kmip-server-repo.js';
import type { MasterKeyRow } from '../store/master-key-repo.js';
import type { Tx } from '../store/schema.js';
import { ElementError, type Params } from './rpc.js';

interface Call {
  params: Params;
  principal: Principal;
  actor: { actor: string; requestId?: string };
}
type Method = (s: Services, c: Call) => Promise<Record<string, unknown>>;

const REKEY_MASTER = 'rekey-master';
const MAX_PEM = 64 * 1024;

function requireRead(p: Principal): void {
  if (p.role === 'cluster-admin' || (p.role === 'readonly' && p.svms.length === 0)) return;
  fail('permission_denied');
}

function requireAdmin(p: Principal): void {
  if (p.role !== 'cluster-admin') fail('permission_denied');
}

/** One or more PEM certificates, each parsed; refuses anything else. */
function pemCertificates(name: string, text: string): X509Certificate[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  let rest = text;
  for (const b of blocks) rest = rest.replace(b, '');
  if (blocks.length === 0 || rest.trim() !== '') throw new ElementError('xInvalidParameter', `${name} must be one or more PEM X.509 certificates.`);
  try {
    return blocks.map((b) => new X509Certificate(b));
  } catch {
    throw new ElementError('xInvalidParameter', `${name} holds a certificate that does not parse.`);
  }
}

function hostnames(list: string[] | undefined, name: string): string[] | undefined {
  if (list === undefined) return undefined;
  if (list.length === 0 || list.length > 8) throw new ElementError('xInvalidParameter', `${name} must list 1 to 8 host names or addresses.`);
  for (const h of list) if (!/^[A-Za-z0-9.\-_:]{1,253}$/.test(h)) throw new ElementError('xInvalidParameter', `${name} holds an invalid host name: ${JSON.stringify(h.slice(0, 64))}.`);
  return list;
}

function port(p: Params): number | undefined {
  const v = p.integer('kmipKeyServerPort', { min: 1 });
  if (v !== undefined && v > 65535) throw new ElementError('xInvalidParameter', 'kmipKeyServerPort must be at most 65535.');
  return v;
}

function name(p: Params, param: string, required: boolean): string | undefined {
  const v = p.string(param, { required, maxLength: 255 });
  if (v !== undefined && v.trim().length === 0) throw new ElementError('xInvalidParameter', `${param} must not be empty.`);
  return v;
}

/** The installed client certificate (with its private key) that a server's PEM names. */
async function installedClient(s: Services, pem: string) {
  const [cert] = pemCertificates('kmipClientCertificate', pem);
  for (const row of await s.repos.certificates.findByFingerprint(fingerprintOf(cert.raw), 'client')) {
    if (row.private_key) return row;
  }
  throw new ElementError('xInvalidParameter', 'kmipClientCertificate is not installed with its private key: install it through /api/security/certificates (type client, with private_key) first; Keysmith does not generate client key pairs.');
}

/** tx: inside a transaction every read must use it (SQLite has one connection, which the transaction holds). */
async function providerActive(s: Services, id: number, tx?: Tx): Promise<boolean> {
  for (const cfg of await s.repos.kmipServers.configsForProvider(id, tx)) {
    const km = await s.repos.keyManagers.findByUuid(cfg.key_manager_uuid, tx);
    if (km?.enabled === 1) return true;
  }
  return false;
}

async function serverView(s: Services, r: KmipKeyServerRow) {
  return {
    keyServerID: r.id,
    kmipKeyServerName: r.name,
    kmipKeyServerHostnames: JSON.parse(r.hostnames) as string[],
    kmipKeyServerPort: r.port,
    kmipCaCertificate: r.ca_pem,
    kmipClientCertificate: r.client_certificate_pem,
    ...(r.key_provider_id !== null ? { keyProviderID: r.key_provider_id } : {}),
    kmipAssignedProviderIsActive: r.key_provider_id !== null && (await providerActive(s, r.key_provider_id)),
  };
}

async function providerView(s: Services, p: KmipKeyProviderRow) {
  const servers = await s.repos.kmipServers.serversOfProvider(p.id);
  return {
    keyProviderID: p.id,
    keyProviderName: p.name,
    keyProviderIsActive: await providerActive(s, p.id),
    keyServerIDs: servers.map((x) => x.id),
    // Element reports the KMIP library's capabilities here; Keysmith's client is its own over Node's TLS.
    kmipCapabilities: 'SSL',
  };
}

async function findServer(s: Services, id: number, tx?: Tx): Promise<KmipKeyServerRow> {
  const r = await s.repos.kmipServers.findServer(id, tx);
  if (!r) fail('key_server_unknown', `Key server ${id} does not exist.`);
  return r;
}

async function findProvider(s: Services, id: number, tx?: Tx): Promise<KmipKeyProviderRow> {
  const r = await s.repos.kmipServers.findProvider(id, tx);
  if (!r) fail('key_provider_unknown', `Key provider ${id} does not exist.`);
  return r;
}

/**
 * Runs a change of providers and servers with its checks in one transaction. On PostgreSQL it first
 * locks the admin SVM's configuration rows, as a move of the master key does (submitMove): two
 * changes, or a change and a move, then see each other's effects instead of both passing their
 * checks. SQLite runs one transaction at a time already.
 */
function changeProviders<T>(s: Services, fn: (tx: Tx) => Promise<T>): Promise<T> {
  const repo = createKeyStoreRepo(s.store.db, s.store.dialect);
  return s.store.db.transaction().execute(async (tx) => {
    const admin = await s.repos.svms.findAdmin(tx);
    if (admin) await repo.lockConfigs(admin.uuid, tx);
    return fn(tx);
  });
}

/** How to reach a key server: its host names in order (one primary, the rest as failover). */
async function endpointOf(s: Services, r: KmipKeyServerRow): Promise<{ endpoint: KmipEndpoint; clientUuid: string }> {
  const client = await installedClient(s, r.client_certificate_pem);
  const key = await s.certificates.privateKey(client);
  if (!key) throw new ElementError('xInvalidParameter', 'The private key of kmipClientCertificate cannot be opened on this node.');
  const hosts = JSON.parse(r.hostnames) as string[];
  return {
    clientUuid: client.uuid,
    endpoint: {
      servers: [{ host: hosts[0], port: r.port, timeout: DEFAULT_TIMEOUT_S, secondary: hosts.slice(1).map((h) => ({ host: h, port: r.port })) }],
      clientCertificatePem: r.client_certificate_pem,
      serverCaPems: pemCertificates('kmipCaCertificate', r.ca_pem).map((c) => c.toString()),
      secrets: { key: key.export({ format: 'pem', type: 'pkcs8' }) as string, passwords: {} },
    },
  };
}

/** Element's EncryptionKeyInfo of a master key row, External with its provider when it is on one. */
export async function masterKeyInfo(s: Services, row: MasterKeyRow): Promise<EncryptionKeyInfo> {
  const providerId = await providerOfMaster(s, row);
  return providerId !== undefined ? { ...keyInfo(row), keyManagementType: 'external', keyProviderID: providerId } : keyInfo(row);
}

/** tx: inside a transaction every read must use it (SQLite has one connection, which the transaction holds). */
async function providerOfMaster(s: Services, row: MasterKeyRow, tx?: Tx): Promise<number | undefined> {
  if (!row.key_manager_uuid) return undefined;
  return (await s.repos.kmipServers.findConfig(row.key_manager_uuid, tx))?.key_provider_id ?? undefined;
}

/**
 * Submits the job that moves the master key onto `target` (already recorded, not yet enabled):
 * in one transaction the target becomes the admin SVM's enabled configuration ('switching').
 */
async function submitMove(s: Services, c: Call, target: KeyManagerRow, type: 'internal' | 'external', providerId?: number): Promise<{ asyncHandle: number }> {
  const repo = createKeyStoreRepo(s.store.db, s.store.dialect);
  const job = await s.store.db.transaction().execute(async (tx) => {
    await repo.lockConfigs(target.svm_uuid, tx);
    if ((await repo.openJobs([REKEY_MASTER, MASTER_PROVIDER_JOB], null, tx)).length > 0) fail('master_rekey_running');
    if ((await repo.openJobs([SWITCH_JOB, MIGRATE_JOB, 'rekey-internal'], null, tx)).length > 0) fail('key_store_busy');
    const current = await s.master.current(tx);
    const oldProvider = await providerOfMaster(s, current, tx);
    const configs = await repo.configsForSvm(target.svm_uuid, tx);
    if (configs.some((k) => k.state === 'switching')) fail('key_store_switching');
    const t = new Date().toISOString();
    for (const k of configs) if (k.uuid !== target.uuid && (k.enabled === 1 || k.state !== 'disabled')) await repo.setEnabledState(k.uuid, 0, 'disabled', t, tx);
    await repo.setEnabledState(target.uuid, 1, 'switching', t, tx);
    const total = await repo.countKeksWrappedBy(configs.filter((k) => k.uuid !== target.uuid).map((k) => k.uuid), tx);
    const params: MasterProviderParams = {
      svm_uuid: target.svm_uuid,
      to: target.uuid,
      old_master_id: current.id,
      key_management_type: type,
      ...(providerId !== undefined ? { key_provider_id: providerId } : {}),
      ...(oldProvider !== undefined ? { old_key_provider_id: oldProvider } : {}),
    };
    const j = await s.jobs.submit({ type: MASTER_PROVIDER_JOB, svmUuid: null, params: { ...params }, createdBy: c.actor.actor, total }, tx);
    await s.audit.recordIn(tx, { ...c.actor, action: 'master_key.rekey', outcome: 'success', objectType: 'job', objectId: j.uuid, detail: { master_key: current.id, key_management_type: type, ...(providerId !== undefined ? { key_provider: providerId } : {}), configuration: target.uuid } });
    return j;
  });
  s.jobs.kick();
  return { asyncHandle: job.handle };
}

/**
 * The refusals submitMove makes, checked before anything is created for the move (a new root on a
 * KMIP server, an inactive configuration): a refused rekey leaves nothing behind. submitMove checks
 * again under its lock; only a request racing this one can still be refused there.
 */
async function refuseWhileBusy(s: Services, admin: SvmRow): Promise<void> {
  const repo = createKeyStoreRepo(s.store.db, s.store.dialect);
  if ((await repo.openJobs([REKEY_MASTER, MASTER_PROVIDER_JOB], null)).length > 0) fail('master_rekey_running');
  if ((await repo.openJobs([SWITCH_JOB, MIGRATE_JOB, 'rekey-internal'], null)).length > 0) fail('key_store_busy');
  // Switching (65537610), initializing (65539436), disabling (65539437), as for an Internal rekey.
  await s.keyStores.rekeyGate(admin.uuid);
}

/** RekeySoftwareEncryptionAtRestMasterKey External: a new root key on the provider's server becomes the master key. */
export async function rekeyMasterOntoProvider(s: Services, c: Call, providerId: number): Promise<{ asyncHandle: number }> {
  requireAdmin(c.principal);
  const provider = await findProvider(s, providerId);
  const [server] = await s.repos.kmipServers.serversOfProvider(provider.id);
  if (!server) fail('key_provider_no_servers', `Key provider ${provider.id} has no key server: add one with AddKeyServerToProviderKmip.`);
  if (s.keyring.isSealed()) fail('sealed');
  const admin = await s.svms.admin();
  if (!admin) throw new Error('the admin SVM is missing');
  await refuseWhileBusy(s, admin);
  const { endpoint, clientUuid } = await endpointOf(s, server);
  // Made inactive first (its root created on the server and read back), then enabled with the job.
  const target = await s.externalKmip.createWith(admin, endpoint, { clientUuid, caUuids: [] }, c.actor, { inactive: true, keyProviderId: provider.id });
  return submitMove(s, c, target, 'external', provider.id);
}

/** RekeySoftwareEncryptionAtRestMasterKey Internal while the master key is on a provider: back onto the admin SVM's onboard key manager. */
export async function rekeyMasterBackInternal(s: Services, c: Call, current: KeyManagerRow): Promise<{ asyncHandle: number }> {
  requireAdmin(c.principal);
  const configs = await s.keyStores.list();
  const okm = configs
    .map((x) => x.config)
    .filter((k) => k.svm_uuid === current.svm_uuid && k.type === 'okm')
    .pop();
  if (!okm) fail('not_supported', 'The master key can move back to internal key management only onto the admin SVM’s onboard key manager, and there is none: create one (POST /api/security/key-managers with create_inactive=true).');
  s.keyring.root(okm); // sealed or unsynchronized nodes refuse up front
  await refuseWhileBusy(s, { uuid: current.svm_uuid } as SvmRow);
  return submitMove(s, c, okm, 'internal');
}

export const KEY_PROVIDER_METHODS: Record<string, Method> = {
  async CreateKeyProviderKmip(s, { params, principal, actor }) {
    requireAdmin(principal);
    const n = name(params, 'keyProviderName', true)!;
    const row = await s.store.db.transaction().execute(async (tx) => {
      if (await s.repos.kmipServers.findProviderByName(n, tx)) throw new ElementError('xInvalidParameter', `A key provider named ${n} already exists.`);
      const r: KmipKeyProviderRow = { id: await s.repos.kmipServers.nextProviderId(tx), name: n, created_at: new Date().toISOString() };
      await s.repos.kmipServers.insertProvider(r, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'key_provider.create', outcome: 'success', objectType: 'key_provider', objectId: String(r.id), detail: { name: n } });
      return r;
    });
    return { kmipKeyProvider: await providerView(s, row) };
  },

  async CreateKeyServerKmip(s, { params, principal, actor }) {
    requireAdmin(principal);
    const ca = params.string('kmipCaCertificate', { required: true, maxLength: MAX_PEM })!;
    const client = params.string('kmipClientCertificate', { required: true, maxLength: MAX_PEM })!;
    const hosts = hostnames(params.stringArray('kmipKeyServerHostnames'), 'kmipKeyServerHostnames');
    if (!hosts) throw new ElementError('xMissingParameter', 'Missing required parameter: kmipKeyServerHostnames.');
    const n = name(params, 'kmipKeyServerName', true)!;
    const p = port(params) ?? 5696;
    pemCertificates('kmipCaCertificate', ca);
    // Element does not contact the server here; the client's private key must be installed already.
    await installedClient(s, client);
    const row = await s.store.db.transaction().execute(async (tx) => {
      const r: KmipKeyServerRow = { id: await s.repos.kmipServers.nextServerId(tx), name: n, hostnames: JSON.stringify(hosts), port: p, ca_pem: ca, client_certificate_pem: client, key_provider_id: null, created_at: new Date().toISOString() };
      await s.repos.kmipServers.insertServer(r, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'key_server.create', outcome: 'success', objectType: 'key_server', objectId: String(r.id), detail: { name: n, hostnames: hosts, port: p } });
      return r;
    });
    return { kmipKeyServer: await serverView(s, row) };
  },

  async ModifyKeyServerKmip(s, { params, principal, actor }) {
    requireAdmin(principal);
    const id = params.integer('keyServerID', { required: true, min: 1 })!;
    const ca = params.string('kmipCaCertificate', { maxLength: MAX_PEM });
    const client = params.string('kmipClientCertificate', { maxLength: MAX_PEM });
    const hosts = hostnames(params.stringArray('kmipKeyServerHostnames'), 'kmipKeyServerHostnames');
    const n = name(params, 'kmipKeyServerName', false);
    const p = port(params);
    const r = await findServer(s, id);
    if (ca !== undefined) pemCertificates('kmipCaCertificate', ca);
    if (client !== undefined) await installedClient(s, client);
    // The master key may be on this server: its configuration is a separate record (checked
    // against the server when it was made), so a modification here applies to later moves only.
    const patch = { ...(ca !== undefined ? { ca_pem: ca } : {}), ...(client !== undefined ? { client_certificate_pem: client } : {}), ...(hosts ? { hostnames: JSON.stringify(hosts) } : {}), ...(n !== undefined ? { name: n } : {}), ...(p !== undefined ? { port: p } : {}) };
    await s.store.db.transaction().execute(async (tx) => {
      if (Object.keys(patch).length > 0) await s.repos.kmipServers.updateServer(id, patch, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'key_server.modify', outcome: 'success', objectType: 'key_server', objectId: String(id), detail: { fields: Object.keys(patch) } });
    });
    return { kmipKeyServer: await serverView(s, { ...r, ...patch }) };
  },

  async AddKeyServerToProviderKmip(s, { params, principal, actor }) {
    requireAdmin(principal);
    const providerId = params.integer('keyProviderID', { required: true, min: 1 })!;
    const serverId = params.integer('keyServerID', { required: true, min: 1 })!;
    await changeProviders(s, async (tx) => {
      await findProvider(s, providerId, tx);
      const server = await findServer(s, serverId, tx);
      if (server.key_provider_id === providerId) return;
      if (server.key_provider_id !== null) throw new ElementError('xInvalidParameter', `Key server ${serverId} is already assigned to key provider ${server.key_provider_id}.`);
      if ((await s.repos.kmipServers.serversOfProvider(providerId, tx)).length > 0) throw new ElementError('xInvalidParameter', `Key provider ${providerId} already has a key server; a provider has one.`);
      await s.repos.kmipServers.updateServer(serverId, { key_provider_id: providerId }, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'key_provider.add_server', outcome: 'success', objectType: 'key_provider', objectId: String(providerId), detail: { key_server: serverId } });
    });
    return {};
  },

  async RemoveKeyServerFromProviderKmip(s, { params, principal, actor }) {
    requireAdmin(principal);
    const serverId = params.integer('keyServerID', { required: true, min: 1 })!;
    await changeProviders(s, async (tx) => {
      const server = await findServer(s, serverId, tx);
      if (server.key_provider_id === null) return;
      if (await providerActive(s, server.key_provider_id, tx)) fail('key_provider_in_use', `Key provider ${server.key_provider_id} holds the master key: its key server cannot be removed.`);
      await s.repos.kmipServers.updateServer(serverId, { key_provider_id: null }, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'key_provider.remove_server', outcome: 'success', objectType: 'key_provider', objectId: String(server.key_provider_id), detail: { key_server: serverId } });
    });
    return {};
  },

  async ListKeyProvidersKmip(s, { params, principal }) {
    requireRead(principal);
    const active = params.boolean('keyProviderIsActive');
    const assigned = params.boolean('kmipKeyProviderHasServerAssigned');
    const out = [];
    for (const p of await s.repos.kmipServers.listProviders()) {
      const v = await providerView(s, p);
      if (active !== undefined && v.keyProviderIsActive !== active) continue;
      if (assigned !== undefined && v.keyServerIDs.length > 0 !== assigned) continue;
      out.push(v);
    }
    return { kmipKeyProviders: out };
  },

  async ListKeyServersKmip(s, { params, principal }) {
    requireRead(principal);
    const providerId = params.integer('keyProviderID', { min: 1 });
    const active = params.boolean('kmipAssignedProviderIsActive');
    const assigned = params.boolean('kmipHasProviderAssigned');
    const out = [];
    for (const r of await s.repos.kmipServers.listServers()) {
      if (providerId !== undefined && r.key_provider_id !== providerId) continue;
      if (assigned !== undefined && (r.key_provider_id !== null) !== assigned) continue;
      const v = await serverView(s, r);
      if (active !== undefined && v.kmipAssignedProviderIsActive !== active) continue;
      out.push(v);
    }
    return { kmipKeyServers: out };
  },

  async GetKeyProviderKmip(s, { params, principal }) {
    requireRead(principal);
    const id = params.integer('keyProviderID', { required: true, min: 1 })!;
    return { kmipKeyProvider: await providerView(s, await findProvider(s, id)) };
  },

  async GetKeyServerKmip(s, { params, principal }) {
    requireRead(principal);
    const id = params.integer('keyServerID', { required: true, min: 1 })!;
    return { kmipKeyServer: await serverView(s, await findServer(s, id)) };
  },

  async TestKeyProviderKmip(s, { params, principal }) {
    requireAdmin(principal);
    const id = params.integer('keyProviderID', { required: true, min: 1 })!;
    await findProvider(s, id);
    const [server] = await s.repos.kmipServers.serversOfProvider(id);
    if (!server) fail('key_provider_no_servers', `Key provider ${id} has no key server to test.`);
    await s.externalKmip.probe((await endpointOf(s, server)).endpoint);
    return {};
  },

  async TestKeyServerKmip(s, { params, principal }) {
    requireAdmin(principal);
    const id = params.integer('keyServerID', { required: true, min: 1 })!;
    await s.externalKmip.probe((await endpointOf(s, await findServer(s, id))).endpoint);
    return {};
  },

  async DeleteKeyProviderKmip(s, { params, principal, actor }) {
    requireAdmin(principal);
    const id = params.integer('keyProviderID', { required: true, min: 1 })!;
    await changeProviders(s, async (tx) => {
      await findProvider(s, id, tx);
      if (await providerActive(s, id, tx)) fail('key_provider_in_use', `Key provider ${id} holds the master key and cannot be deleted.`);
      if ((await s.repos.kmipServers.serversOfProvider(id, tx)).length > 0) fail('key_provider_in_use', `Key provider ${id} still has a key server: remove it first.`);
      await s.repos.kmipServers.removeProvider(id, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'key_provider.delete', outcome: 'success', objectType: 'key_provider', objectId: String(id) });
    });
    return {};
  },

  async DeleteKeyServerKmip(s, { params, principal, actor }) {
    requireAdmin(principal);
    const id = params.integer('keyServerID', { required: true, min: 1 })!;
    await changeProviders(s, async (tx) => {
      const r = await findServer(s, id, tx);
      if (r.key_provider_id !== null) fail('key_server_in_use', `Key server ${id} is assigned to key provider ${r.key_provider_id}: remove it from the provider first.`);
      await s.repos.kmipServers.removeServer(id, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'key_server.delete', outcome: 'success', objectType: 'key_server', objectId: String(id) });
    });
    return {};
  },
};
