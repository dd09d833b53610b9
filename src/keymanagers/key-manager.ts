/**
 * The one interface every key manager type fills in (STYLE point 8): the onboard key manager
 * (okm.ts) today, KMIP and the cloud KMSs next. A type only has to say how a KEK is wrapped and
 * unwrapped under a configuration's root, how the configuration describes itself, and whether this
 * node can use it now; switching an SVM between configurations and migrating a data SVM's keys
 * (key-store-service.ts, jobs/switch-job.ts, jobs/migrate-job.ts) are written against this interface
 * only, so they work for a new type as soon as it is registered.
 *
 * Invariants a type must keep:
 * - wrapKek binds the blob to the KEK's tenant, id and version (a blob moved to another KEK fails
 *   to unwrap) and records which root version wrapped it (returned as rootVersion, stored on the row).
 * - unwrapKek returns null when the blob does not open (altered, or another root), and throws the
 *   catalog's refusal (sealed, not_synchronized, an unreachable server) when this node cannot ask.
 * - Neither ever logs or returns key material anywhere but to its caller.
 *
 * Adding a type: implement this interface in keymanagers/<type>.ts, register it in app.ts
 * (keyManagerTypes), and create its configurations as key_managers rows of that type (enabled, or
 * inactive beside the enabled one). Switching and migration then work unchanged. The data path
 * still opens and creates KEKs through the keyring, which knows onboard roots only: keyring.kek()
 * (opening a KEK on a cache miss) and the callers of keyring.wrapKek (a tenant's first KEK in
 * dek-service, a rekey's new KEK version) must ask the configuration's KeyManager for a type that
 * is not 'okm'.
 */
import type { KeyManagerRow } from '../store/key-manager-repo.js';
import type { KekRow } from '../store/kek-repo.js';

/** ONTAP's keystore types (security_keystore.type). */
export const KEY_STORE_TYPES = ['okm', 'kmip', 'akv', 'gcp', 'aws', 'ikp', 'barbican'] as const;
export type KeyStoreType = (typeof KEY_STORE_TYPES)[number];

/**
 * ONTAP's keystore states (security_keystore.state). A disabled configuration has no state in
 * ONTAP's answers; Keysmith stores 'disabled' for it and leaves the field out when it answers.
 */
export const KEY_STORE_STATES = ['active', 'mixed', 'svm_kek_rekey', 'blocked', 'switching', 'initializing', 'disabling'] as const;
export type KeyStoreState = (typeof KEY_STORE_STATES)[number] | 'disabled';

export type KekIdentity = Pick<KekRow, 'svm_uuid' | 'id' | 'version'>;

export interface KeyManager {
  readonly type: KeyStoreType;
  /** ONTAP's location: the onboard key database or an external one. */
  readonly location: 'onboard' | 'external';
  /** Wraps KEK material under the configuration's current root. */
  wrapKek(config: KeyManagerRow, kek: KekIdentity, material: Buffer): Promise<{ wrapped: Buffer; rootVersion: number }>;
  /** Opens a KEK row this configuration wrapped (at the row's root_version); null when it does not open. */
  unwrapKek(config: KeyManagerRow, kek: KekRow): Promise<Buffer | null>;
  /** Throws the refusal that says why this node cannot use the configuration now; returns when it can. */
  ready(config: KeyManagerRow): Promise<void>;
  /** ONTAP's configuration reference: its name and where it is managed. */
  describe(config: KeyManagerRow): { name: string; href: string };
  /** ONTAP's status: code 0 when this node can use the configuration, else the refusal's code and message. */
  health(config: KeyManagerRow): Promise<{ code: number; message: string }>;
}

/** The registered types; a configuration of a type not registered here cannot be used. */
export type KeyManagers = Partial<Record<KeyStoreType, KeyManager>>;
