/**
 * Element JSON-RPC methods Keysmith serves: software encryption at rest (the master key) and async
 * results (Element's view of Keysmith's durable jobs; asyncHandle = the job's integer handle).
 */
import { fail } from '../errors.js';
import type { Services } from '../app.js';
import type { Principal } from '../auth/auth-service.js';
import type { JobRow } from '../store/job-repo.js';
import { keyInfo } from '../keymanagers/master-key-service.js';
import { ElementError, Params, kindOfCode } from './rpc.js';
import { elementName } from '../errors.js';
import { KEY_PROVIDER_METHODS, masterKeyInfo, rekeyMasterBackInternal, rekeyMasterOntoProvider } from './key-provider-methods.js';
import { MASTER_PROVIDER_JOB } from '../jobs/master-provider-job.js';
import { MIGRATE_JOB, SWITCH_JOB } from '../keymanagers/key-store-service.js';

export const REKEY_MASTER = 'rekey-master';

/** Element's resultType for each job type (Keysmith's own job types keep their names). */
const RESULT_TYPES: Record<string, string> = { [REKEY_MASTER]: 'RekeySoftwareEncryptionAtRestMasterKey', [MASTER_PROVIDER_JOB]: 'RekeySoftwareEncryptionAtRestMasterKey', 'rekey-internal': 'RekeyInternal' };
const resultType = (j: JobRow) => RESULT_TYPES[j.type] ?? j.type;

/** Element times: ISO 8601 in UTC, whole seconds. */
const elementTime = (t: string) => t.replace(/\.\d{3}Z$/, 'Z');

const complete = (j: JobRow) => j.state === 'success' || j.state === 'failure';

function jobError(j: JobRow) {
  return { code: 500, name: elementName(kindOfCode(j.code)), message: j.message };
}

function asyncResult(j: JobRow) {
  const base = { createTime: elementTime(j.created_at), lastUpdateTime: elementTime(j.updated_at), resultType: resultType(j) };
  if (!complete(j)) return { ...base, status: 'running', details: { state: j.state, message: j.message, progress: { done: j.progress_done, total: j.progress_total } } };
  if (j.state === 'failure') return { ...base, status: 'complete', error: jobError(j) };
  return { ...base, status: 'complete', result: j.result ? JSON.parse(j.result) : {} };
}

export interface Call {
  params: Params;
  principal: Principal;
  actor: { actor: string; requestId?: string };
}

type Method = (s: Services, c: Call) => Promise<Record<string, unknown>>;

function requireRead(p: Principal): void {
  if (p.role === 'cluster-admin' || (p.role === 'readonly' && p.svms.length === 0)) return;
  fail('permission_denied');
}

function requireAdmin(p: Principal): void {
  if (p.role !== 'cluster-admin') fail('permission_denied');
}

async function liveJob(s: Services, handle: number): Promise<JobRow> {
  const j = await s.repos.jobs.findByHandle(handle);
  if (!j || j.async_deleted) throw new ElementError('xDBNoSuchPath', `No async result with asyncHandle ${handle} exists (it may have been read without keepResult).`);
  return j;
}

export const METHODS: Record<string, Method> = {
  ...KEY_PROVIDER_METHODS,
  async RekeySoftwareEncryptionAtRestMasterKey(s, { params, principal, actor }) {
    requireAdmin(principal);
    const type = params.enumString('keyManagementType', ['Internal', 'External'] as const);
    const hasProvider = params.has('keyProviderID');
    const providerId = params.integer('keyProviderID', { min: 1 });
    if (type === 'External') {
      if (!hasProvider) throw new ElementError('xMissingParameter', 'keyProviderID is required when keyManagementType is External.');
      // A new root key on the provider's KMIP server becomes the master key (key-provider-methods.ts).
      return rekeyMasterOntoProvider(s, { params, principal, actor }, providerId!);
    }
    if (hasProvider) throw new ElementError('xInvalidParameter', 'keyProviderID is valid only with keyManagementType External.');
    if (s.keyring.isSealed()) fail('sealed');
    const km = await s.master.adminKeyManager();
    // The master key is on a KMIP key provider: Internal moves it back to the onboard key manager.
    if (km?.type === 'kmip') return rekeyMasterBackInternal(s, { params, principal, actor }, km);
    if (km) s.keyring.root(km); // a node without the root refuses up front (not_synchronized)
    const job = await s.store.db.transaction().execute(async (tx) => {
      if (await s.repos.jobs.findOpenOfType(REKEY_MASTER, tx)) fail('master_rekey_running');
      // A keystore switch or key migration moves KEKs between roots: the master key waits for it to end.
      for (const t of [SWITCH_JOB, MIGRATE_JOB]) if (await s.repos.jobs.findOpenOfType(t, tx)) fail('key_store_busy', 'A keystore switch or key migration is running; rekey the master key once it has ended.');
      // The admin SVM's keystore must be settled, as for any rekey: a failed or interrupted switch
      // (65537610) or a configuration still initializing or disabling refuses it.
      const admin = await s.repos.svms.findAdmin(tx);
      if (admin) await s.keyStores.rekeyGate(admin.uuid, undefined, tx);
      const current = await s.master.current(tx);
      const j = await s.jobs.submit({ type: REKEY_MASTER, svmUuid: null, params: { key_management_type: 'internal' }, createdBy: actor.actor }, tx);
      await s.audit.recordIn(tx, { ...actor, action: 'master_key.rekey', outcome: 'success', objectType: 'job', objectId: j.uuid, detail: { master_key: current.id } });
      return j;
    });
    s.jobs.kick();
    return { asyncHandle: job.handle };
  },

  async GetAsyncResult(s, { params, principal }) {
    requireRead(principal);
    const handle = params.integer('asyncHandle', { required: true, min: 1 })!;
    const keep = params.boolean('keepResult') ?? false;
    const j = await liveJob(s, handle);
    const out = asyncResult(j);
    // Element: without keepResult a completed result is gone once it has been returned.
    if (!keep && complete(j)) await s.repos.jobs.dropAsyncResult(j.uuid);
    return out;
  },

  async ListAsyncResults(s, { params, principal }) {
    requireRead(principal);
    const types = params.stringArray('asyncResultTypes');
    const wanted = types ? new Set(types.map((t) => t.toLowerCase())) : undefined;
    const asyncHandles = [];
    for (const j of await s.repos.jobs.list()) {
      if (j.async_deleted) continue;
      if (wanted && !wanted.has(resultType(j).toLowerCase())) continue;
      const done = complete(j);
      const item: Record<string, unknown> = { asyncResultID: j.handle, completed: done, createTime: elementTime(j.created_at), lastUpdateTime: elementTime(j.updated_at), resultType: resultType(j) };
      if (done) {
        item.success = j.state === 'success';
        item.data = j.state === 'success' ? (j.result ? JSON.parse(j.result) : {}) : jobError(j);
      } else item.data = { state: j.state, message: j.message, progress: { done: j.progress_done, total: j.progress_total } };
      asyncHandles.push(item);
    }
    return { asyncHandles };
  },

  async GetSoftwareEncryptionAtRestInfo(s, { principal }) {
    requireRead(principal);
    const current = await s.master.current();
    const out: Record<string, unknown> = { masterKeyInfo: await masterKeyInfo(s, current), state: 'enabled', version: 1 };
    // The current or most recent rekey, unless its result was deleted.
    const last = (await s.repos.jobs.list()).filter((j) => (j.type === REKEY_MASTER || j.type === MASTER_PROVIDER_JOB) && !j.async_deleted).pop();
    if (last) out.rekeyMasterKeyAsyncResultID = last.handle;
    return out;
  },
};

/** The method a name means, matched case-insensitively. */
export function findMethod(name: string): [string, Method] | undefined {
  const lower = name.toLowerCase();
  for (const [k, m] of Object.entries(METHODS)) if (k.toLowerCase() === lower) return [k, m];
  return undefined;
}
