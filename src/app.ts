/**
 * The composition root: the one place that opens the store, builds the services and wires them
 * into the HTTP server. Nothing else reads configuration or opens connections.
 */
import pino, { type Logger } from 'pino';
import type { FastifyInstance } from 'fastify';
import type { Config } from './config.js';
import { openStore, type Store } from './store/db.js';
import { createSvmRepo } from './store/svm-repo.js';
import { createKeyManagerRepo } from './store/key-manager-repo.js';
import { createKekRepo } from './store/kek-repo.js';
import { createDekRepo } from './store/dek-repo.js';
import { createPrincipalRepo } from './store/principal-repo.js';
import { createAuditRepo, directAppender } from './store/audit-repo.js';
import { createMetaRepo } from './store/meta-repo.js';
import { createAuditService, type AuditService } from './audit/audit-service.js';
import { createAuthService, type AuthService } from './auth/auth-service.js';
import { createKeyring, loadNodeIdentity, type Keyring } from './hierarchy/keyring.js';
import { createDekService, type DekService } from './hierarchy/dek-service.js';
import { createOnboardService, type OnboardService } from './keymanagers/onboard-service.js';
import { createSvmService, type SvmService } from './hierarchy/svm-service.js';
import { buildServer } from './api/server.js';
import { createJobRepo } from './store/job-repo.js';
import { createJobRunner, type JobRunner } from './jobs/job-runner.js';
import { rekeyInternalJob } from './jobs/rekey-job.js';
import { uuid } from './ids.js';
import { createKeyStoreRepo } from './store/key-store-repo.js';
import { createKeyStoreService, MIGRATE_JOB, SWITCH_JOB, type KeyStoreService } from './keymanagers/key-store-service.js';
import { createOkmKeyManager } from './keymanagers/okm.js';
import type { KeyManagers } from './keymanagers/key-manager.js';
import { switchJob } from './jobs/switch-job.js';
import { migrateJob } from './jobs/migrate-job.js';
import { createCertificateRepo } from './store/certificate-repo.js';
import { createCertificateService, type CertificateService } from './certificates/certificate-service.js';
import { readFileSync } from 'node:fs';
import { createKmipRepo } from './store/kmip-repo.js';
import { createKmipObjectService } from './kmip/kmip-object-service.js';
import { createKmipServer, type KmipServer } from './kmip/server.js';
import { createMasterKeyRepo } from './store/master-key-repo.js';
import { createMasterKeyService, type MasterKeyService } from './keymanagers/master-key-service.js';
import { rekeyMasterJob } from './jobs/rekey-master-job.js';
import { createKmipServerRepo } from './store/kmip-server-repo.js';
import { createKmipConnector, createKmipKeyManager } from './keymanagers/kmip-key-manager.js';
import { createKmipConfigService, type KmipConfigService } from './keymanagers/kmip-config-service.js';
import { MASTER_PROVIDER_JOB, masterProviderJob } from './jobs/master-provider-job.js';

export const VERSION = '0.1.0';

/** Fields that must never appear in a log line, wherever they sit. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  '*.passphrase',
  '*.existing_passphrase',
  '*.password',
  '*.plaintext',
  '*.secret',
  '*.token',
  '*.key_backup',
  '*.onboard.passphrase',
  '*.onboard.existing_passphrase',
];

export interface Services {
  config: Config;
  store: Store;
  log: Logger;
  keyring: Keyring;
  audit: AuditService;
  auth: AuthService;
  svms: SvmService;
  onboard: OnboardService;
  deks: DekService;
  jobs: JobRunner;
  keyStores: KeyStoreService;
  certificates: CertificateService;
  /** The Element master key (software encryption at rest). */
  master: MasterKeyService;
  /** External KMIP key managers (ONTAP `external`, Element key providers). */
  externalKmip: KmipConfigService;
  repos: {
    svms: ReturnType<typeof createSvmRepo>;
    keyManagers: ReturnType<typeof createKeyManagerRepo>;
    keks: ReturnType<typeof createKekRepo>;
    deks: ReturnType<typeof createDekRepo>;
    principals: ReturnType<typeof createPrincipalRepo>;
    meta: ReturnType<typeof createMetaRepo>;
    jobs: ReturnType<typeof createJobRepo>;
    certificates: ReturnType<typeof createCertificateRepo>;
    masterKeys: ReturnType<typeof createMasterKeyRepo>;
    kmipServers: ReturnType<typeof createKmipServerRepo>;
  };
  cluster: { uuid: string; name: string };
}

export interface App {
  services: Services;
  server: FastifyInstance;
  /** A bootstrap admin token created on this start (first start only), to print once. */
  bootstrapSecret?: string;
  /** Keys that this node holds no seal for (need synchronize). */
  unsynchronized: string[];
  listen(): Promise<string>;
  close(): Promise<void>;
  /** The KMIP listener, when configured (its port is known after listen()). */
  kmip?: KmipServer;
}

export async function createApp(config: Config, opts: { logStream?: NodeJS.WritableStream } = {}): Promise<App> {
  const log = pino(
    { level: config.logLevel, redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
    (opts.logStream as pino.DestinationStream | undefined) ?? pino.destination(1),
  );
  const node = loadNodeIdentity(config.dataDir);
  const store = await openStore({ url: config.store, pgSchema: config.pgSchema });
  const { db } = store;
  const repos = {
    svms: createSvmRepo(db),
    keyManagers: createKeyManagerRepo(db),
    keks: createKekRepo(db),
    deks: createDekRepo(db, store.dialect),
    principals: createPrincipalRepo(db),
    meta: createMetaRepo(db),
    jobs: createJobRepo(db),
    certificates: createCertificateRepo(db, store.dialect),
    masterKeys: createMasterKeyRepo(db, store.dialect),
    kmipServers: createKmipServerRepo(db),
  };
  const audit = createAuditService({ db, repo: createAuditRepo(db, store.dialect), direct: store.sqlite && directAppender(store.sqlite), durability: store.durability, fsyncReads: config.auditFsyncReads });
  const auth = createAuthService({ repo: repos.principals });
  const keyring = createKeyring({ node, startSealed: config.sealed, keyManagers: repos.keyManagers, keks: repos.keks });
  const onboard = createOnboardService({ db, svms: repos.svms, keyManagers: repos.keyManagers, keks: repos.keks, deks: repos.deks, keyring, audit, kdfCost: config.kdfCost });
  const deks = createDekService({ db, deks: repos.deks, keks: repos.keks, keyManagers: repos.keyManagers, svms: repos.svms, keyring, audit });
  const svms = createSvmService({ db, svms: repos.svms, keyManagers: repos.keyManagers, keks: repos.keks, deks: repos.deks, audit, keyring });
  const certificates = createCertificateService({ db, repo: repos.certificates, audit, deks, svms });

  const clusterUuid = await repos.meta.setIfAbsent('cluster_uuid', uuid());
  const clusterName = await repos.meta.setIfAbsent('cluster_name', 'cluster1');
  await repos.meta.touchNode(node.id, config.nodeName, new Date().toISOString());
  await svms.ensureAdmin(clusterName);

  // First start: one admin token, printed once (or the one automation gave us).
  let bootstrapSecret: string | undefined;
  await db.transaction().execute(async (tx) => {
    if ((await repos.principals.countPrincipals(tx)) > 0) return;
    const { secret, row } = await auth.createToken({ name: 'bootstrap', role: 'cluster-admin', svms: [], secret: config.bootstrapToken }, tx);
    await audit.recordIn(tx, { actor: 'system', action: 'token.create', outcome: 'success', objectType: 'token', objectId: row.id, detail: { name: 'bootstrap', role: 'cluster-admin' } });
    bootstrapSecret = config.bootstrapToken ? undefined : secret;
  });

  const { unsynchronized } = await keyring.load();
  // Element: software encryption at rest with an internal master key from the first start.
  const master = createMasterKeyService({ db, repo: repos.masterKeys, keyManagers: repos.keyManagers, svms: repos.svms, keyring });
  await master.current();
  // Key manager types: a new type (KMIP, the cloud KMSs) registers its KeyManager here.
  const kmipConnector = createKmipConnector();
  const kmipManager = createKmipKeyManager({ keyring, repo: repos.kmipServers, connector: kmipConnector, certificateKey: async (u) => { const c = await certificates.get(u); return c ? certificates.privateKey(c) : null; } });
  const keyManagerTypes: KeyManagers = { okm: createOkmKeyManager(keyring), kmip: kmipManager };
  const externalKmip = createKmipConfigService({ db, repo: repos.kmipServers, keyManagers: repos.keyManagers, certificates, certificateRows: repos.certificates, svms, keyring, connector: kmipConnector, manager: kmipManager, audit, clusterUuid });
  // External roots are fetched from their KMIP servers now, as ONTAP does at boot; one that cannot be
  // reached leaves its tenants unavailable (status says why) and is tried again on use.
  const kmipLoad = await externalKmip.loadAll();
  for (const f of kmipLoad.failed) log.warn({ key_manager: f.uuid, code: f.code }, 'external key manager root not loaded');
  const keyStoreRepo = createKeyStoreRepo(db, store.dialect);
  // KEKs per switch/migrate step: the rekey batch, at most 50 (each may be a round trip to an external key manager).
  const kekMoves = { repo: keyStoreRepo, keyManagers: repos.keyManagers, managers: keyManagerTypes, keyring, batch: Math.min(config.rekeyBatch ?? 50, 50) };
  const jobs = createJobRunner({
    db,
    repo: repos.jobs,
    nodeId: node.id,
    log,
    leaseMs: config.jobLeaseMs,
    durability: store.durability,
    handlers: { 'rekey-internal': rekeyInternalJob({ keyring, keks: repos.keks, deks: repos.deks, keyManagers: repos.keyManagers, batch: config.rekeyBatch }), [SWITCH_JOB]: switchJob(kekMoves), [MIGRATE_JOB]: migrateJob(kekMoves), 'rekey-master': rekeyMasterJob({ keyring, master, repo: repos.masterKeys, keyManagers: repos.keyManagers, batch: config.rekeyBatch }), [MASTER_PROVIDER_JOB]: masterProviderJob({ ...kekMoves, master, masterKeys: repos.masterKeys }) },
  });
  const keyStores = createKeyStoreService({ db, repo: keyStoreRepo, keyManagers: repos.keyManagers, svms: repos.svms, managers: keyManagerTypes, jobs, audit });
  const services: Services = { config, store, log, keyring, audit, auth, svms, onboard, deks, jobs, keyStores, certificates, master, externalKmip, repos, cluster: { uuid: clusterUuid, name: clusterName } };
  const server = await buildServer(services);
  const kmipObjects = createKmipObjectService({ db, deks, dekRepo: repos.deks, repo: createKmipRepo(db, store.sqlite), audit });
  const kmip =
    config.kmipTlsCert && config.kmipTlsKey && config.kmipClientCa
      ? createKmipServer(
          { log, audit, auth, certificates, svms, objects: kmipObjects, durability: store.durability },
          { host: config.host, port: config.kmipPort, cert: readFileSync(config.kmipTlsCert), key: readFileSync(config.kmipTlsKey), ca: readFileSync(config.kmipClientCa) },
        )
      : undefined;

  let closed = false;
  return {
    services,
    server,
    bootstrapSecret,
    unsynchronized: unsynchronized.filter((u) => !kmipLoad.loaded.includes(u)),
    kmip,
    async listen() {
      await store.durability.wait(); // what this start committed (the bootstrap token) is on disk before anyone is told
      const address = await server.listen({ host: config.host, port: config.port });
      if (kmip) await kmip.listen();
      jobs.start(); // resumes any job a crash or another node left behind
      return address;
    },
    async close() {
      if (closed) return;
      closed = true;
      await server.close(); // stop accepting, drain in-flight requests
      await kmip?.close(); // likewise for KMIP connections
      await jobs.stop(); // the running step finishes; its lease is released
      externalKmip.close(); // connections to external KMIP servers
      await audit.drain();
      await deks.close(); // the batch-unwrap threads
      keyring.seal();
      await store.close();
      log.flush?.();
    },
  };
}
