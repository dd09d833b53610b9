/** Tenants (ONTAP SVMs): the admin SVM exists from the first start; data SVMs come and go. */
import { fail } from '../errors.js';
import { uuid } from '../ids.js';
import type { AuditService } from '../audit/audit-service.js';
import type { Keyring } from './keyring.js';
import type { Db } from '../store/schema.js';
import type { SvmRepo, SvmRow } from '../store/svm-repo.js';
import type { KeyManagerRepo } from '../store/key-manager-repo.js';
import type { KekRepo } from '../store/kek-repo.js';
import type { DekRepo } from '../store/dek-repo.js';
import type { Actor } from '../keymanagers/onboard-service.js';

/** ONTAP's SVM name rule: a letter first, then letters, digits, '.', '-' or '_'; at most 47. */
export const SVM_NAME = /^[A-Za-z][A-Za-z0-9._-]{0,46}$/;

export function createSvmService(deps: {
  db: Db;
  svms: SvmRepo;
  keyManagers: Pick<KeyManagerRepo, 'findEnabledForSvm'>;
  keks: Pick<KekRepo, 'findActive' | 'removeForSvm'>;
  deks: Pick<DekRepo, 'countForSvm'>;
  audit: AuditService;
  keyring: Keyring;
}) {
  const { db, svms, audit } = deps;
  // SVMs are read on every data-plane call and change rarely: cache them by uuid and by name, for
  // a few seconds only, so a change made through another node sharing the store is seen soon.
  const TTL_MS = 5000;
  const cache = new Map<string, { row: SvmRow; until: number }>();
  const remember = (s: SvmRow) => {
    const e = { row: s, until: Date.now() + TTL_MS };
    cache.set(s.uuid, e);
    cache.set(`name:${s.name}`, e);
    return s;
  };
  const forgetAll = () => cache.clear();

  return {
    async ensureAdmin(name: string): Promise<SvmRow> {
      const existing = await svms.findAdmin();
      if (existing) return existing;
      const row: SvmRow = { uuid: uuid(), name, scope: 'cluster', created_at: new Date().toISOString() };
      await db.transaction().execute(async (tx) => {
        if (await svms.findAdmin(tx)) return;
        await svms.insert(row, tx);
        await audit.recordIn(tx, { actor: 'system', action: 'svm.create', outcome: 'success', objectType: 'svm', objectId: row.uuid, svmUuid: row.uuid, detail: { name, scope: 'cluster' } });
      });
      return (await svms.findAdmin())!;
    },

    admin: () => svms.findAdmin(),

    /** An SVM by uuid or name. */
    async resolve(ref: string): Promise<SvmRow | undefined> {
      const hit = cache.get(ref) ?? cache.get(`name:${ref}`);
      if (hit && hit.until > Date.now()) return hit.row;
      const row = (await svms.findByUuid(ref)) ?? (await svms.findByName(ref));
      return row ? remember(row) : undefined;
    },

    list: () => svms.list(),

    async create(name: string, who: Actor): Promise<SvmRow> {
      if (!SVM_NAME.test(name)) fail('invalid_value', 'SVM names start with a letter and hold at most 47 letters, digits, ".", "-" or "_".', 'name');
      const row: SvmRow = { uuid: uuid(), name, scope: 'svm', created_at: new Date().toISOString() };
      await db.transaction().execute(async (tx) => {
        if (await svms.findByName(name, tx)) fail('duplicate', `SVM ${name} already exists.`, 'name');
        await svms.insert(row, tx);
        await audit.recordIn(tx, { ...who, action: 'svm.create', outcome: 'success', objectType: 'svm', objectId: row.uuid, svmUuid: row.uuid, detail: { name } });
      });
      return row;
    },

    async remove(svm: SvmRow, who: Actor): Promise<void> {
      if (svm.scope === 'cluster') fail('admin_svm_immutable', undefined, 'uuid');
      await db.transaction().execute(async (tx) => {
        if ((await deps.deks.countForSvm(svm.uuid, tx)) > 0 || (await deps.keyManagers.findEnabledForSvm(svm.uuid, tx))) fail('svm_has_keys');
        await deps.keks.removeForSvm(svm.uuid, tx);
        await svms.remove(svm.uuid, tx);
        await audit.recordIn(tx, { ...who, action: 'svm.delete', outcome: 'success', objectType: 'svm', objectId: svm.uuid, svmUuid: svm.uuid, detail: { name: svm.name } });
      });
      deps.keyring.forgetTenant(svm.uuid);
      forgetAll();
    },

    /** Drop cached rows (after a restore replaced an SVM's identity). */
    forgetAll,
  };
}
export type SvmService = ReturnType<typeof createSvmService>;
