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
  type: 'okm';
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
}

export type Db = Kysely<DB>;
export type Tx = Transaction<DB>;
/** Every data-access method takes an optional transaction; without one it uses the pool. */
export type Conn = Db | Tx;
