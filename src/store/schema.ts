/** Row types of Keysmith's store, shared by SQLite and PostgreSQL. Times are ISO-8601 text. */
import type { Generated, Kysely, Transaction } from 'kysely';

export interface MetaTable {
  key: string;
  value: string;
}

export interface SvmTable {
  uuid: string;
  name: string;
  scope: 'cluster' | 'svm';
  created_at: string;
}

export interface KeyManagerTable {
  uuid: string;
  svm_uuid: string;
  /** 'kmip' added by 0006-external-kmip. */
  type: 'okm' | 'kmip';
  enabled: number;
  state: string;
  /** scrypt parameters (JSON) of the passphrase seal. */
  kdf: string;
  root_id: string;
  root_version: number;
  /** The root key sealed under the passphrase-derived key. */
  passphrase_seal: Buffer;
  /** The passphrase-derived key sealed under the root, so a backup can be sealed for the passphrase without it. */
  backup_seal: Buffer;
  created_at: string;
  updated_at: string;
}

export interface RootSealTable {
  key_manager_uuid: string;
  root_version: number;
  node_id: string;
  blob: Buffer;
  created_at: string;
}

export interface KekTable {
  id: string;
  svm_uuid: string;
  version: number;
  key_manager_uuid: string;
  root_version: number;
  wrapped: Buffer;
  /** active: wraps new keys; retiring: a rekey is moving its keys away; decommissioned: wraps nothing, still opens wrapped forms clients hold. */
  state: 'active' | 'retiring' | 'decommissioned';
  created_at: string;
}

export interface DekTable {
  id: string;
  svm_uuid: string;
  name: string | null;
  algorithm: string;
  length: number;
  state: string;
  kek_version: number;
  wrapped: Buffer | null;
  created_at: string;
  updated_at: string;
  activated_at: string | null;
  deactivated_at: string | null;
  compromised_at: string | null;
  destroyed_at: string | null;
  /** KMIP Object Type name (e.g. 'SecretData'); absent or NULL for a Symmetric Key. Added by 0003-kmip. */
  object_type?: string | null;
}

export interface UserTable {
  id: string;
  name: string;
  password_hash: string;
  role: string;
  svms: string;
  created_at: string;
}

export interface TokenTable {
  id: string;
  name: string;
  hash: string;
  role: string;
  svms: string;
  created_by: string | null;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

export interface AuditEventTable {
  seq: number;
  id: string;
  time: string;
  request_id: string | null;
  actor: string;
  action: string;
  object_type: string | null;
  object_id: string | null;
  svm_uuid: string | null;
  outcome: string;
  detail: string | null;
  prev_hash: string;
  hash: string;
}

export interface AuditHeadTable {
  id: number;
  seq: number;
  hash: string;
}

export interface NodeTable {
  id: string;
  name: string;
  started_at: string;
  last_seen: string;
}

export interface JobTable {
  uuid: string;
  /** Element's integer asyncHandle. */
  handle: number;
  type: string;
  description: string;
  state: 'queued' | 'running' | 'paused' | 'success' | 'failure';
  code: number;
  message: string;
  svm_uuid: string | null;
  params: string;
  cursor: string | null;
  result: string | null;
  progress_done: number;
  progress_total: number;
  created_by: string;
  created_at: string;
  start_time: string | null;
  end_time: string | null;
  updated_at: string;
  lease_owner: string | null;
  lease_until: number | null;
  /** 1 once Element's GetAsyncResult (without keepResult) has handed the result out. Added by 0004-master-key. */
  async_deleted?: number;
}

/** Versions of the Element master key (the admin SVM's root). Added by 0004-master-key. */
export interface MasterKeyTable {
  /** Element's keyID (a UUID). */
  id: string;
  version: number;
  /** Null: the cluster's internal master key; else the admin onboard key manager whose root version this is. */
  key_manager_uuid: string | null;
  root_version: number | null;
  state: 'active' | 'decommissioned';
  created_at: string;
  decommissioned_at: string | null;
}

/** The internal master key sealed under each node's seal key. Added by 0004-master-key. */
export interface MasterKeySealTable {
  master_key_id: string;
  node_id: string;
  blob: Buffer;
  created_at: string;
}

/** Installed certificates (ONTAP /api/security/certificates). Added by 0003-kmip. */
export interface CertificateTable {
  uuid: string;
  svm_uuid: string;
  name: string;
  type: string;
  public_certificate: string;
  /** SHA-256 of the DER, lower-case hex. */
  fingerprint: string;
  common_name: string | null;
  serial_number: string;
  ca: string | null;
  expiry_time: string;
  key_size: number | null;
  /** The private key sealed under the admin tenant's KEK; never returned. */
  private_key: Buffer | null;
  created_at: string;
}

/** Attributes KMIP clients set on an object (a DEK row). Added by 0003-kmip. */
export interface KmipAttributeTable {
  object_id: string;
  svm_uuid: string;
  name: string;
  idx: number;
  /** Searchable text form of the value. */
  value: string;
  /** The value's exact TTLV encoding. */
  raw: Buffer;
}

/** How to reach the KMIP server of a key manager of type 'kmip'. Added by 0006-external-kmip. */
export interface KmipConfigTable {
  key_manager_uuid: string;
  /** JSON: [{ host, port, timeout, username?, secondary: [{ host, port }] }]. */
  servers: string;
  client_certificate_uuid: string;
  client_certificate_pem: string;
  /** JSON arrays of uuids and of PEMs, in the same order. */
  server_ca_uuids: string;
  server_ca_pems: string;
  /** The Element key provider this configuration was made for, if any. */
  key_provider_id: number | null;
  created_at: string;
  updated_at: string;
  /**
   * Key-check value of the root (hex HMAC-SHA256, see kmip-key-manager.ts rootCheck): a fetched root
   * is used only if it matches. NULL for configurations made before 0009-kmip-root-check until their
   * root is proven. Added by 0009-kmip-root-check.
   */
  root_kcv?: string | null;
  /** Raised by every update of the row: nodes rebuild their cached settings when it moves. Added by 0010-kmip-config-revision. */
  revision?: number;
}

/** A node's sealed copy of what it needs to connect to a KMIP server. Added by 0006-external-kmip. */
export interface KmipNodeSecretTable {
  key_manager_uuid: string;
  node_id: string;
  blob: Buffer;
  created_at: string;
}

/** Element KMIP key providers and key servers. Added by 0006-external-kmip. */
export interface KmipKeyProviderTable {
  id: number;
  name: string;
  created_at: string;
}

export interface KmipKeyServerTable {
  id: number;
  name: string;
  /** JSON array of host names or addresses (a clustered key server has several). */
  hostnames: string;
  port: number;
  ca_pem: string;
  client_certificate_pem: string;
  key_provider_id: number | null;
  created_at: string;
}

export interface DB {
  meta: MetaTable;
  svms: SvmTable;
  key_managers: KeyManagerTable;
  root_seals: RootSealTable;
  keks: KekTable;
  deks: DekTable;
  users: UserTable;
  tokens: TokenTable;
  audit_events: AuditEventTable;
  audit_head: AuditHeadTable;
  nodes: NodeTable;
  jobs: JobTable;
  certificates: CertificateTable;
  kmip_attributes: KmipAttributeTable;
  master_keys: MasterKeyTable;
  master_key_seals: MasterKeySealTable;
  kmip_configs: KmipConfigTable;
  kmip_node_secrets: KmipNodeSecretTable;
  kmip_key_providers: KmipKeyProviderTable;
  kmip_key_servers: KmipKeyServerTable;
}

export type Db = Kysely<DB>;
export type Tx = Transaction<DB>;
/** Every data-access method takes an optional transaction; without one it uses the pool. */
export type Conn = Db | Tx;
