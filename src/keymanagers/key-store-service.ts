/**
 * Keystore configurations (ONTAP /security/key-stores) and the two operations that move a
 * tenant's KEKs from one root to another: switching an SVM's enabled configuration, and migrating a
 * data SVM's keys between the admin SVM's key manager and its own.
 *
 * Invariants:
 * - An SVM has at most one enabled configuration (also enforced by a unique index, 0005).
 * - Only KEKs move; their material never changes, so every DEK wrapped under them (and every
 *   wrapped form a client holds) opens to the same bytes before, during and after a move.
 * - A KEK is re-wrapped by the destination, checked to open there to the same bytes, and only then
 *   replaces the old wrapping, in the job step's transaction, guarded by the wrapping it was read
 *   with. A crash leaves each KEK under the old root or the new one, never neither.
 * - While a switch is unfinished (running, failed or interrupted) the SVM's configuration is in state
 *   'switching' and rekeys are refused (65537610); enabling the same configuration again completes it.
 * - Nothing here logs, audits or returns key material.
 */
import { fail } from '../errors.js';
import type { AuditService } from '../audit/audit-service.js';
import type { Keyring } from '../hierarchy/keyring.js';
import type { Db, Tx } from '../store/schema.js';
import type { KekRow } from '../store/kek-repo.js';
import type { KeyManagerRepo, KeyManagerRow } from '../store/key-manager-repo.js';
import type { KeyStoreRepo } from '../store/key-store-repo.js';
import type { SvmRepo, SvmRow } from '../store/svm-repo.js';
import type { JobRow } from '../store/job-repo.js';
import type { JobRunner } from '../jobs/job-runner.js';
import type { KeyManager, KeyManagers, KeyStoreType } from './key-manager.js';
import type { Actor } from './onboard-service.js';

export const SWITCH_JOB = 'key-store-switch';
export const MIGRATE_JOB = 'key-manager-migrate';
const REKEY_JOB = 'rekey-internal';
/** The Element master-key rekey re-wraps every KEK under the admin SVM's onboard root. */
const MASTER_REKEY_JOB = 'rekey-master';

/** The key manager type of a configuration, or an error (a bug or a type this build does not have). */
export function managerFor(managers: KeyManagers, config: KeyManagerRow): KeyManager {
  const m = managers[config.type as KeyStoreType];
  if (!m) throw new Error(`key manager ${config.uuid} is of type ${config.type}, which this node does not have`);
  return m;
}

/**
 * Re-wraps KEK rows under a target configuration, inside tx (a job step). Each row is opened through
 * the configuration that wrapped it, wrapped by the target, checked to open there to the same bytes,
 * then written guarded by the wrapping it was read with. Returns how many rows moved.
 */
export async function moveKeks(
  deps: { keyManagers: Pick<KeyManagerRepo, 'findByUuid'>; repo: Pick<KeyStoreRepo, 'moveKek'>; managers: KeyManagers; keyring: Pick<Keyring, 'forgetTenant'> },
  rows: KekRow[],
  target: KeyManagerRow,
  tx: Tx,
): Promise<number> {
  const to = managerFor(deps.managers, target);
  const sources = new Map<string, KeyManagerRow>();
  let moved = 0;
  for (const k of rows) {
    let src = sources.get(k.key_manager_uuid);
    if (!src) {
      src = await deps.keyManagers.findByUuid(k.key_manager_uuid, tx);
      if (!src) throw new Error(`KEK ${k.id} of ${k.svm_uuid} names key manager ${k.key_manager_uuid}, which does not exist`);
      sources.set(src.uuid, src);
    }
    const material = await managerFor(deps.managers, src).unwrapKek(src, k);
    // A KEK that does not open is left exactly as it is: moving must never lose one.
    if (!material) throw new Error(`KEK ${k.id} of ${k.svm_uuid} does not open under key manager ${src.uuid}`);
    try {
      const { wrapped, rootVersion } = await to.wrapKek(target, k, material);
      const back = await to.unwrapKek(target, { ...k, key_manager_uuid: target.uuid, root_version: rootVersion, wrapped });
      const same = !!back && back.equals(material);
      back?.fill(0);
      if (!same) throw new Error(`KEK ${k.id} of ${k.svm_uuid} does not open under key manager ${target.uuid} once re-wrapped`);
      if (await deps.repo.moveKek(k, { key_manager_uuid: target.uuid, root_version: rootVersion, wrapped }, tx)) moved += 1;
    } finally {
      material.fill(0);
    }
    // The cached row names the old key manager; its material is unchanged, so dropping it only costs a re-read.
    deps.keyring.forgetTenant(k.svm_uuid);
  }
  return moved;
}

export function createKeyStoreService(deps: {
  db: Db;
  repo: KeyStoreRepo;
  keyManagers: Pick<KeyManagerRepo, 'findByUuid' | 'list'>;
  svms: Pick<SvmRepo, 'findByUuid' | 'findAdmin'>;
  managers: KeyManagers;
  jobs: Pick<JobRunner, 'submit'>;
  audit: AuditService;
}) {
  const { db, repo, audit } = deps;
  const now = () => new Date().toISOString();

  /** The refusal for a rekey of this SVM (addressed to `config`), if one applies now. */
  async function rekeyGate(svmUuid: string, config?: KeyManagerRow, tx?: Tx): Promise<void> {
    // Inside the transaction that submits a rekey: serialized with a switch or migration starting at once.
    if (tx) await repo.lockConfigs(svmUuid, tx);
    const configs = await repo.configsForSvm(svmUuid, tx);
    if (configs.some((c) => c.state === 'switching')) fail('key_store_switching');
    const enabled = configs.find((c) => c.enabled === 1);
    if (enabled?.state === 'initializing') fail('key_store_initializing');
    if (enabled?.state === 'disabling') fail('key_store_disabling');
    if (config && config.enabled !== 1) fail('key_manager_missing', 'This keystore configuration is not enabled: rekey through the SVM’s enabled configuration.');
    if ((await repo.openJobs([MIGRATE_JOB], svmUuid, tx)).length > 0) fail('key_store_busy', 'A migration of this SVM’s keys is running; wait for it to end.');
    const own = configs.map((c) => c.uuid);
    if ((await repo.countKeksOfSvmBorrowed(svmUuid, own, tx)) > 0) fail('rekey_needs_migrate');
  }

  /** ONTAP's keystore record of a configuration. */
  function view(config: KeyManagerRow, svm: SvmRow) {
    const m = deps.managers[config.type as KeyStoreType];
    const ref = m ? m.describe(config) : { name: 'default', href: `/api/security/key-managers/${config.uuid}` };
    return {
      uuid: config.uuid,
      type: config.type,
      location: m?.location ?? 'external',
      enabled: config.enabled === 1,
      // ONTAP leaves the state out for a configuration that is not enabled.
      ...(config.state !== 'disabled' ? { state: config.state } : {}),
      scope: svm.scope,
      ...(svm.scope === 'svm' ? { svm: { uuid: svm.uuid, name: svm.name, _links: { self: { href: `/api/svm/svms/${svm.uuid}` } } } } : {}),
      configuration: { name: ref.name, uuid: config.uuid, _links: { self: { href: ref.href } } },
      _links: { self: { href: `/api/security/key-stores/${config.uuid}` } },
    };
  }

  return {
    rekeyGate,
    view,

    /** Every configuration with its SVM, oldest first. */
    async list(): Promise<{ config: KeyManagerRow; svm: SvmRow }[]> {
      const out: { config: KeyManagerRow; svm: SvmRow }[] = [];
      for (const config of await deps.keyManagers.list()) {
        const svm = await deps.svms.findByUuid(config.svm_uuid);
        if (svm) out.push({ config, svm });
      }
      return out;
    },

    /**
     * PATCH enabled=true: makes `config` the SVM's enabled configuration and starts (or, after a
     * failed or interrupted switch, restarts) the job that re-wraps the KEKs under it. Null when the
     * configuration is already enabled and active (nothing to do).
     */
    async enable(config: KeyManagerRow, svm: SvmRow, who: Actor): Promise<JobRow | null> {
      const target = managerFor(deps.managers, config);
      if (config.state === 'initializing') fail('key_store_initializing', 'The keystore configuration is being initialized; it can be enabled once that ends.', 'uuid');
      if (config.state === 'disabling') fail('key_store_disabling', 'The keystore configuration is being disabled and cannot be enabled now.', 'uuid');
      const configs = await repo.configsForSvm(svm.uuid);
      const unfinished = configs.find((c) => c.state === 'switching' && c.uuid !== config.uuid);
      if (unfinished) fail('key_store_switching', `A switch of this SVM to keystore configuration ${unfinished.uuid} is unfinished: run PATCH on that configuration again to complete it.`, 'uuid');
      if (config.enabled === 1 && config.state === 'active') return null;
      // Both roots must be reachable from this node before anything changes.
      await target.ready(config);
      for (const c of configs) if (c.uuid !== config.uuid && (await repo.countKeksWrappedBy([c.uuid])) > 0) await managerFor(deps.managers, c).ready(c);

      return db.transaction().execute(async (tx) => {
        await repo.lockConfigs(svm.uuid, tx);
        const fresh = await repo.configsForSvm(svm.uuid, tx);
        const me = fresh.find((c) => c.uuid === config.uuid);
        if (!me) fail('not_found', undefined, 'uuid');
        const other = fresh.find((c) => c.state === 'switching' && c.uuid !== config.uuid);
        if (other) fail('key_store_switching', `A switch of this SVM to keystore configuration ${other.uuid} is unfinished: run PATCH on that configuration again to complete it.`, 'uuid');
        if (me.enabled === 1 && me.state === 'active') return null;
        // Re-running the PATCH while its job is unfinished answers with that job (resumed, if it was paused).
        const running = (await repo.openJobs([SWITCH_JOB], svm.uuid, tx))[0];
        if (running) {
          await repo.requeuePaused(running.uuid, now(), tx);
          return repo.findJob(running.uuid, tx);
        }
        if ((await repo.openJobs([REKEY_JOB, MIGRATE_JOB], svm.uuid, tx)).length > 0) fail('key_store_busy');
        // The admin SVM's configurations also wrap the KEKs of data SVMs that have no key manager of their own.
        if (svm.scope === 'cluster' && (await repo.openJobs([MIGRATE_JOB, MASTER_REKEY_JOB], null, tx)).length > 0) fail('key_store_busy', 'A master-key rekey, or a migration of keys between the admin SVM and a data SVM, is running; wait for it to end.');
        const t = now();
        // The old configuration first: the store allows one enabled configuration per SVM at any instant.
        for (const c of fresh) if (c.uuid !== config.uuid && (c.enabled === 1 || c.state !== 'disabled')) await repo.setEnabledState(c.uuid, 0, 'disabled', t, tx);
        await repo.setEnabledState(config.uuid, 1, 'switching', t, tx);
        const sources = fresh.filter((c) => c.uuid !== config.uuid).map((c) => c.uuid);
        const total = await repo.countKeksWrappedBy(sources, tx);
        const job = await deps.jobs.submit({ type: SWITCH_JOB, svmUuid: svm.uuid, params: { svm_uuid: svm.uuid, svm_name: svm.name, to: config.uuid, type: config.type }, createdBy: who.actor, total }, tx);
        await audit.recordIn(tx, { ...who, action: 'key_store.enable', outcome: 'success', objectType: 'key_store', objectId: config.uuid, svmUuid: svm.uuid, detail: { job: job.uuid, from: sources, keks: total } });
        return job;
      });
    },

    /**
     * POST /security/key-managers/{source.uuid}/migrate: moves a data SVM's KEKs between the admin
     * SVM's key manager and the data SVM's own one (either way), as a job.
     */
    async migrate(source: KeyManagerRow, sourceSvm: SvmRow, dest: KeyManagerRow, destSvm: SvmRow, who: Actor): Promise<JobRow> {
      if (source.uuid === dest.uuid || sourceSvm.scope === destSvm.scope || source.enabled !== 1 || dest.enabled !== 1) fail('migrate_pair', undefined, 'uuid');
      const data = sourceSvm.scope === 'svm' ? sourceSvm : destSvm;
      const admin = sourceSvm.scope === 'cluster' ? sourceSvm : destSvm;
      for (const s of [data, admin]) if ((await repo.configsForSvm(s.uuid)).some((c) => c.state === 'switching')) fail('key_store_switching', `The keystore configuration of SVM ${s.name} is being switched; complete that first.`);
      if ((await repo.countKeksOfSvmUnder(data.uuid, source.uuid)) === 0) fail('migrate_nothing');
      await managerFor(deps.managers, source).ready(source);
      await managerFor(deps.managers, dest).ready(dest);
      return db.transaction().execute(async (tx) => {
        // The admin SVM first, then the data SVM: every transaction that locks both does it in this order.
        await repo.lockConfigs(admin.uuid, tx);
        await repo.lockConfigs(data.uuid, tx);
        for (const s of [data, admin]) if ((await repo.configsForSvm(s.uuid, tx)).some((c) => c.state === 'switching')) fail('key_store_switching', `The keystore configuration of SVM ${s.name} is being switched; complete that first.`);
        // Re-running the same migration while its job is unfinished answers with that job (resumed, if it was paused).
        const same = (await repo.openJobs([MIGRATE_JOB], data.uuid, tx)).find((j) => {
          const p = JSON.parse(j.params) as { source?: string; destination?: string };
          return p.source === source.uuid && p.destination === dest.uuid;
        });
        if (same) {
          await repo.requeuePaused(same.uuid, now(), tx);
          return repo.findJob(same.uuid, tx);
        }
        if ((await repo.openJobs([REKEY_JOB, MIGRATE_JOB, SWITCH_JOB], data.uuid, tx)).length > 0) fail('key_store_busy');
        if ((await repo.openJobs([SWITCH_JOB, MASTER_REKEY_JOB], admin.uuid, tx)).length > 0 || (await repo.openJobs([MASTER_REKEY_JOB], null, tx)).length > 0) {
          fail('key_store_busy', 'The admin SVM’s keystore is being switched or its master key rekeyed; wait for it to end.');
        }
        const total = await repo.countKeksOfSvmUnder(data.uuid, source.uuid, tx);
        if (total === 0) fail('migrate_nothing');
        const job = await deps.jobs.submit({ type: MIGRATE_JOB, svmUuid: data.uuid, params: { svm_uuid: data.uuid, svm_name: data.name, source: source.uuid, destination: dest.uuid }, createdBy: who.actor, total }, tx);
        await audit.recordIn(tx, { ...who, action: 'key_manager.migrate', outcome: 'success', objectType: 'job', objectId: job.uuid, svmUuid: data.uuid, detail: { source: source.uuid, destination: dest.uuid, keks: total } });
        return job;
      });
    },
  };
}
export type KeyStoreService = ReturnType<typeof createKeyStoreService>;
