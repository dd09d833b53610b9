/**
 * The Element master key (software encryption at rest): the root of the admin SVM's key hierarchy.
 *
 * Model (the smallest one that keeps both contracts):
 * - Element has software encryption at rest with internal key management from the first start, so
 *   the first start creates an *internal master key*: 32 random bytes sealed under this node's seal
 *   key (master_key_seals), never under anything in the store. ONTAP's view is unchanged: no key
 *   manager is listed until one is created, and no key can be created before that
 *   (key_manager_missing), so the internal master key wraps nothing yet and rekeying it only
 *   replaces it (a new version, the old one decommissioned and its seals erased).
 * - Once the admin SVM has an enabled onboard key manager, the master key *is* that key manager's
 *   root: it wraps the KEKs of the admin SVM and of every data SVM without its own key manager. The
 *   internal master key is then decommissioned, as Element's is when key management changes. Each
 *   root version gets a master_keys row for Element's keyID and times.
 * - A master-key rekey is the durable job `rekey-master` (jobs/rekey-master-job.ts): a new root
 *   version sealed under this node's seal and under the passphrase (through the backup seal, so no
 *   passphrase is needed), every KEK of the key manager re-wrapped under it (O(KEKs), like
 *   rekey-external), then the old root version decommissioned: its seals erased, its row marked.
 *
 * Invariants:
 * - Master key material is never stored unsealed, logged or returned; Element sees only its id,
 *   type and creation time.
 * - A root version is erased only after no KEK is wrapped under it (counted under a table lock on
 *   PostgreSQL), so a rekey interrupted at any instant leaves every KEK and DEK readable.
 * - Other nodes hold seals of the old root version only: after a master-key rekey they are
 *   unsynchronized until `synchronize` with the passphrase, as a node that joins. Synchronize opens
 *   the newest root and, through each older version's seal under the next one (kept until no KEK is
 *   under it), every version a paused or cancelled rekey still leaves KEKs under.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, seal, type WrapContext } from '../crypto/aead.js';
import { uuid } from '../ids.js';
import type { Keyring } from '../hierarchy/keyring.js';
import type { KeyManagerRepo, KeyManagerRow } from '../store/key-manager-repo.js';
import type { MasterKeyRepo, MasterKeyRow } from '../store/master-key-repo.js';
import type { Conn, Db } from '../store/schema.js';
import type { SvmRepo } from '../store/svm-repo.js';

/** Element's EncryptionKeyInfo. */
export interface EncryptionKeyInfo {
  keyCreatedTime: string;
  keyID: string;
  keyManagementType: 'internal' | 'external';
  keyProviderID?: number;
}

export const internalMasterContext = (id: string, nodeId: string): WrapContext => ({ purpose: `master-key:${nodeId}`, tenant: 'cluster', keyId: id, version: 1 });

/** Element's keyID for a root version of a key manager: a UUID derived from it, so concurrent nodes agree on it. */
export function rootKeyId(kmUuid: string, rootVersion: number): string {
  const h = createHash('sha256').update(`keysmith-master-key|${kmUuid}|${rootVersion}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${((parseInt(h[16], 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

export function keyInfo(row: MasterKeyRow): EncryptionKeyInfo {
  return { keyCreatedTime: row.created_at.replace(/\.\d{3}Z$/, 'Z'), keyID: row.id, keyManagementType: 'internal' };
}

export function createMasterKeyService(deps: {
  db: Db;
  repo: MasterKeyRepo;
  keyManagers: Pick<KeyManagerRepo, 'findEnabledForSvm'>;
  svms: Pick<SvmRepo, 'findAdmin'>;
  keyring: Pick<Keyring, 'node'>;
  now?: () => Date;
}) {
  const { db, repo, keyring } = deps;
  const now = () => (deps.now ?? (() => new Date()))().toISOString();

  async function adminKeyManager(tx: Conn = db): Promise<KeyManagerRow | undefined> {
    const admin = await deps.svms.findAdmin(tx);
    return admin ? deps.keyManagers.findEnabledForSvm(admin.uuid, tx) : undefined;
  }

  /** Creates an internal master key version sealed under this node's seal. */
  async function newInternal(tx: Conn, at: string): Promise<MasterKeyRow> {
    const version = (await repo.maxVersion(tx)) + 1;
    const row: MasterKeyRow = { id: uuid(), version, key_manager_uuid: null, root_version: null, state: 'active', created_at: at, decommissioned_at: null };
    await repo.insertIfAbsent(row, tx);
    if (!(await repo.find(row.id, tx))) {
      // Another node sharing the store made this version first: it is the master key (it wraps
      // nothing, so this node needs no copy of it).
      const other = await repo.activeInternal(tx);
      if (other) return other;
      throw new Error('master key version could not be recorded');
    }
    const material = randomBytes(32);
    await repo.insertSeal({ master_key_id: row.id, node_id: keyring.node.id, blob: seal(keyring.node.sealKey, keyring.node.id, 1, internalMasterContext(row.id, keyring.node.id), material), created_at: at }, tx);
    material.fill(0);
    return row;
  }

  /** The row for a key manager's root version, written on first sight (concurrent nodes derive the same id). */
  async function rootRow(km: KeyManagerRow, rootVersion: number, createdAt: string, tx: Conn): Promise<MasterKeyRow> {
    const id = rootKeyId(km.uuid, rootVersion);
    const found = await repo.find(id, tx);
    if (found) return found;
    for (let attempt = 0; attempt < 3; attempt++) {
      await repo.insertIfAbsent({ id, version: (await repo.maxVersion(tx)) + 1, key_manager_uuid: km.uuid, root_version: rootVersion, state: 'active', created_at: createdAt, decommissioned_at: null }, tx);
      const row = await repo.find(id, tx);
      if (row) return row;
    }
    throw new Error('master key version could not be recorded');
  }

  return {
    adminKeyManager,
    rootRow,
    newInternal,

    /**
     * The current master key, recorded if this is the first time it is seen: the admin key
     * manager's root when there is one (retiring the internal key), else the internal key (created
     * on the first start).
     */
    async current(tx?: Conn): Promise<MasterKeyRow> {
      const run = async (t: Conn) => {
        const km = await adminKeyManager(t);
        if (km) {
          const row = await rootRow(km, km.root_version, km.root_version === 1 ? km.created_at : km.updated_at, t);
          await repo.retireInternal(now(), t);
          return row;
        }
        return (await repo.activeInternal(t)) ?? newInternal(t, now());
      };
      if (tx) return run(tx);
      return db.transaction().execute(run);
    },

    /** Whether this node can open the internal master key (tests and health checks; never returns the key). */
    async internalOpens(row: MasterKeyRow): Promise<boolean> {
      const s = await repo.findSeal(row.id, keyring.node.id);
      const k = s ? open(keyring.node.sealKey, internalMasterContext(row.id, keyring.node.id), s.blob) : null;
      k?.fill(0);
      return !!k;
    },
  };
}
export type MasterKeyService = ReturnType<typeof createMasterKeyService>;
