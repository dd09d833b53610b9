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
import { createAuditRepo } from './store/audit-repo.js';
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
  repos: {
    svms: ReturnType<typeof createSvmRepo>;
    keyManagers: ReturnType<typeof createKeyManagerRepo>;
    keks: ReturnType<typeof createKekRepo>;
    deks: ReturnType<typeof createDekRepo>;
    principals: ReturnType<typeof createPrincipalRepo>;
    meta: ReturnType<typeof createMetaRepo>;
    jobs: ReturnType<typeof createJobRepo>;
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
  };
  const audit = createAuditService({ db, repo: createAuditRepo(db, store.dialect) });
  const auth = createAuthService({ repo: repos.principals });
  const keyring = createKeyring({ node, startSealed: config.sealed, keyManagers: repos.keyManagers, keks: repos.keks });
  const onboard = createOnboardService({ db, svms: repos.svms, keyManagers: repos.keyManagers, keks: repos.keks, deks: repos.deks, keyring, audit, kdfCost: config.kdfCost });
  const deks = createDekService({ db, deks: repos.deks, keks: repos.keks, keyManagers: repos.keyManagers, svms: repos.svms, keyring, audit });
  const svms = createSvmService({ db, svms: repos.svms, keyManagers: repos.keyManagers, keks: repos.keks, deks: repos.deks, audit, keyring });

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
  const jobs = createJobRunner({
    db,
    repo: repos.jobs,
    nodeId: node.id,
    log,
    leaseMs: config.jobLeaseMs,
    handlers: { 'rekey-internal': rekeyInternalJob({ keyring, keks: repos.keks, deks: repos.deks, keyManagers: repos.keyManagers, batch: config.rekeyBatch }) },
  });
  const services: Services = { config, store, log, keyring, audit, auth, svms, onboard, deks, jobs, repos, cluster: { uuid: clusterUuid, name: clusterName } };
  const server = await buildServer(services);

  let closed = false;
  return {
    services,
    server,
    bootstrapSecret,
    unsynchronized,
    async listen() {
      const address = await server.listen({ host: config.host, port: config.port });
      jobs.start(); // resumes any job a crash or another node left behind
      return address;
    },
    async close() {
      if (closed) return;
      closed = true;
      await server.close(); // stop accepting, drain in-flight requests
      await jobs.stop(); // the running step finishes; its lease is released
      await audit.drain();
      keyring.seal();
      await store.close();
      log.flush?.();
    },
  };
}
