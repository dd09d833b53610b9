/**
 * The in-memory keyring of one node: unsealed root keys and unwrapped tenant KEKs.
 *
 * Invariants:
 * - Root keys are only ever in memory here or sealed (under the passphrase-derived key, or under a
 *   node's seal key). The node seal key lives in the data directory with mode 0600 and never
 *   enters the store, so a copy of the database alone opens nothing.
 * - An older root version some KEK may still be under (a master-key rekey running, paused or
 *   cancelled) is also sealed under the next version (root_seals row of node NEXT_ROOT_SEAL), so
 *   whoever opens the newest root with the passphrase opens every version still in use; that seal
 *   goes with the node seals of its version once no KEK is under it.
 * - A node that starts sealed loads no root key until `unseal` is given the passphrase.
 * - A KEK is opened with the AAD of its tenant, id and version: a KEK row moved to another tenant
 *   or version does not open.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { open, seal, type WrapContext } from '../crypto/aead.js';
import { KeysmithError } from '../errors.js';
import { newId } from '../ids.js';
import type { KeyManagerRepo, KeyManagerRow } from '../store/key-manager-repo.js';
import type { KekRepo, KekRow } from '../store/kek-repo.js';
import type { Conn } from '../store/schema.js';

export interface NodeIdentity {
  id: string;
  sealKey: Buffer;
}

/** Loads (or creates on first start) this node's id and seal key from the data directory. */
export function loadNodeIdentity(dataDir: string): NodeIdentity {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const idFile = join(dataDir, 'node.id');
  const keyFile = join(dataDir, 'node.key');
  // The id first: a crash between the two writes leaves an id without a key, which the next
  // start completes, never a key without an id.
  if (!existsSync(idFile)) writeFileSync(idFile, newId('node'), { mode: 0o600, flag: 'wx' });
  if (!existsSync(keyFile)) writeFileSync(keyFile, randomBytes(32), { mode: 0o600, flag: 'wx' });
  chmodSync(keyFile, 0o600);
  const sealKey = readFileSync(keyFile);
  if (sealKey.length !== 32) throw new Error(`node seal key ${keyFile} is not 32 bytes: refusing to start`);
  const id = readFileSync(idFile, 'utf8').trim();
  if (!/^node_[0-9a-z]+$/.test(id)) throw new Error(`node id file ${idFile} is malformed`);
  return { id, sealKey };
}

export const rootContext = (km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid' | 'root_version'>): WrapContext => ({
  purpose: 'root',
  tenant: km.svm_uuid,
  keyId: km.uuid,
  version: km.root_version,
});

export const nodeSealContext = (km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid' | 'root_version'>, nodeId: string): WrapContext => ({
  purpose: `node-seal:${nodeId}`,
  tenant: km.svm_uuid,
  keyId: km.uuid,
  version: km.root_version,
});

/** An older root version sealed under the next version of the same key manager. */
export const olderRootContext = (km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid' | 'root_version'>): WrapContext => ({
  purpose: 'older-root',
  tenant: km.svm_uuid,
  keyId: km.uuid,
  version: km.root_version,
});

/**
 * The `node_id` of the root_seals row that holds root version v sealed under version v + 1 (node ids
 * are `node_…`, so it names no node).
 */
export const NEXT_ROOT_SEAL = 'next-root';

export const backupKeyContext = (km: Pick<KeyManagerRow, 'uuid' | 'svm_uuid' | 'root_version'>): WrapContext => ({
  purpose: 'backup-key',
  tenant: km.svm_uuid,
  keyId: km.uuid,
  version: km.root_version,
});

export const kekContext = (k: Pick<KekRow, 'svm_uuid' | 'id' | 'version'>): WrapContext => ({
  purpose: 'kek',
  tenant: k.svm_uuid,
  keyId: k.id,
  version: k.version,
});

export function createKeyring(deps: {
  node: NodeIdentity;
  startSealed: boolean;
  keyManagers: Pick<KeyManagerRepo, 'list' | 'findByUuid' | 'findSeal'>;
  keks: Pick<KekRepo, 'findVersion'>;
}) {
  const { node } = deps;
  let sealed = deps.startSealed;
  const roots = new Map<string, Buffer>(); // `${kmUuid}:${rootVersion}` → root key
  // `${svmUuid}:${version}` → KEK and its row. A version's id and material never change once
  // written (only its state does, which no caller of kek() reads), so the row is cached with it.
  const keks = new Map<string, { key: Buffer; row: KekRow }>();

  const rootSlot = (kmUuid: string, v: number) => `${kmUuid}:${v}`;

  function sealForNode(km: KeyManagerRow, root: Buffer): Buffer {
    return seal(node.sealKey, node.id, 1, nodeSealContext(km, node.id), root);
  }

  /**
   * Opens the root versions below a key manager's current one that are still sealed: a master-key
   * rekey running, paused, cancelled or interrupted by a crash leaves KEKs under them until one
   * finishes (it removes their seals then). Each comes from this node's own seal, else from its
   * seal under the next version, so a node that holds the newest root (a synchronize, an unseal)
   * gets them all without seals of its own.
   */
  async function loadOlderRoots(km: KeyManagerRow): Promise<void> {
    for (let v = km.root_version - 1; v >= 1; v--) {
      if (roots.has(rootSlot(km.uuid, v))) continue;
      const old = { ...km, root_version: v };
      const own = await deps.keyManagers.findSeal(km.uuid, v, node.id);
      let r = own ? open(node.sealKey, nodeSealContext(old, node.id), own.blob) : null;
      const next = r ? undefined : roots.get(rootSlot(km.uuid, v + 1));
      const chained = next ? await deps.keyManagers.findSeal(km.uuid, v, NEXT_ROOT_SEAL) : undefined;
      if (next && chained) r = open(next, olderRootContext(old), chained.blob);
      if (r) roots.set(rootSlot(km.uuid, v), r);
      else if (!own && !chained) break;
    }
  }

  return {
    node,
    isSealed: () => sealed,

    /** At start: opens every root key this node holds a seal for (unless starting sealed). */
    async load(): Promise<{ loaded: number; unsynchronized: string[] }> {
      const unsynchronized: string[] = [];
      if (sealed) return { loaded: 0, unsynchronized };
      let loaded = 0;
      for (const km of await deps.keyManagers.list()) {
        const s = await deps.keyManagers.findSeal(km.uuid, km.root_version, node.id);
        const root = s ? open(node.sealKey, nodeSealContext(km, node.id), s.blob) : null;
        if (root) {
          roots.set(rootSlot(km.uuid, km.root_version), root);
          loaded += 1;
        } else unsynchronized.push(km.uuid);
        await loadOlderRoots(km);
      }
      return { loaded, unsynchronized };
    },

    loadOlderRoots,

    sealForNode,

    /** Makes a root key available on this node (after create, synchronize, unseal or restore). */
    putRoot(km: Pick<KeyManagerRow, 'uuid' | 'root_version'>, root: Buffer): void {
      roots.set(rootSlot(km.uuid, km.root_version), root);
    },

    hasRoot: (km: Pick<KeyManagerRow, 'uuid' | 'root_version'>) => roots.has(rootSlot(km.uuid, km.root_version)),

    /** Leaves the sealed state once the caller has opened root keys with the passphrase. */
    markUnsealed(): void {
      sealed = false;
    },

    /** Drops every key from memory; nothing is served until unsealed again. */
    seal(): void {
      sealed = true;
      for (const k of roots.values()) k.fill(0);
      for (const k of keks.values()) k.key.fill(0);
      roots.clear();
      keks.clear();
    },

    forgetKeyManager(kmUuid: string): void {
      for (const slot of [...roots.keys()]) if (slot.startsWith(`${kmUuid}:`)) roots.delete(slot);
      keks.clear();
    },

    /** Drops root versions older than `below` (decommissioned by a master-key rekey). */
    forgetRootsBelow(kmUuid: string, below: number): void {
      for (const [slot, k] of [...roots.entries()]) {
        const [u, v] = slot.split(':');
        if (u === kmUuid && Number(v) < below) {
          k.fill(0);
          roots.delete(slot);
        }
      }
    },

    forgetTenant(svmUuid: string): void {
      for (const slot of [...keks.keys()]) if (slot.startsWith(`${svmUuid}:`)) keks.delete(slot);
    },

    /** The root key of a key manager, or a refusal saying why it is not on this node. */
    root(km: Pick<KeyManagerRow, 'uuid' | 'root_version'>): Buffer {
      if (sealed) throw new KeysmithError('sealed');
      const r = roots.get(rootSlot(km.uuid, km.root_version));
      if (!r) throw new KeysmithError('not_synchronized');
      return r;
    },

    /** Wraps new KEK material under a key manager's root. */
    wrapKek(km: KeyManagerRow, kek: Pick<KekRow, 'svm_uuid' | 'id' | 'version'>, material: Buffer): Buffer {
      return seal(this.root(km), km.uuid, km.root_version, kekContext(kek), material);
    },

    /** The KEK of a tenant at a version, opened through its key manager's root and cached. */
    async kek(svmUuid: string, version: number, tx?: Conn): Promise<{ key: Buffer; row: KekRow } | null> {
      if (sealed) throw new KeysmithError('sealed');
      const slot = `${svmUuid}:${version}`;
      const cached = keks.get(slot);
      if (cached) return cached;
      const row = await deps.keks.findVersion(svmUuid, version, tx);
      if (!row) return null;
      const km = await deps.keyManagers.findByUuid(row.key_manager_uuid, tx);
      if (!km) return null;
      const key = open(this.root({ uuid: km.uuid, root_version: row.root_version }), kekContext(row), row.wrapped);
      if (!key) throw new Error(`KEK ${row.id} of tenant ${svmUuid} does not open under its root key`);
      keks.set(slot, { key, row });
      return { key, row };
    },

    /** Cached KEK only: the hot path of unwrap checks this before touching the store. */
    cachedKek: (svmUuid: string, version: number): Buffer | undefined => (sealed ? undefined : keks.get(`${svmUuid}:${version}`)?.key),
  };
}
export type Keyring = ReturnType<typeof createKeyring>;
