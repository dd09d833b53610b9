/**
 * Server configuration: parsed once, strictly, then frozen. Sources, lowest first: defaults, a
 * JSON config file, KEYSMITH_* environment variables, command-line flags. No secret has a default.
 */
import { readFileSync } from 'node:fs';
import { resolve, join } from 'node:path';

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly dataDir: string;
  /** `sqlite:<file>` or `postgres://…` */
  readonly store: string;
  readonly pgSchema?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  /** Start sealed: serve no key until an unseal call gives the passphrase. */
  readonly sealed: boolean;
  readonly logLevel: string;
  readonly nodeName: string;
  /** Sets the first admin token on an empty store (automation, like a dev-mode root token). */
  readonly bootstrapToken?: string;
  /** KDF cost for passphrase seals; only lowered by tests. */
  readonly kdfCost?: number;
  /** Keys re-wrapped per rekey step (one transaction each). */
  readonly rekeyBatch?: number;
  /** How long a node's claim on a job lasts without renewal; another node takes the job over after it. */
  readonly jobLeaseMs?: number;
  /** KMIP listener port (5696 by default; 0 picks a free one). The listener runs only when its TLS files are configured. */
  readonly kmipPort: number;
  /** KMIP TLS server certificate, its key, and the CA(s) that issue accepted client certificates (PEM files). */
  readonly kmipTlsCert?: string;
  readonly kmipTlsKey?: string;
  readonly kmipClientCa?: string;
  /**
   * Wait for the disk (fsync) before answering each read whose audit event was written, not only
   * for the event's commit to the WAL (SQLite; see audit-service.ts). Off by default.
   */
  readonly auditFsyncReads: boolean;
}

export type ConfigInput = Partial<Record<keyof Config, unknown>>;

const KEYS: (keyof Config)[] = ['host', 'port', 'dataDir', 'store', 'pgSchema', 'tlsCert', 'tlsKey', 'sealed', 'logLevel', 'nodeName', 'bootstrapToken', 'kdfCost', 'rekeyBatch', 'jobLeaseMs', 'kmipPort', 'kmipTlsCert', 'kmipTlsKey', 'kmipClientCa', 'auditFsyncReads'];

const ENV: Record<string, keyof Config> = {
  KEYSMITH_HOST: 'host',
  KEYSMITH_PORT: 'port',
  KEYSMITH_DATA_DIR: 'dataDir',
  KEYSMITH_STORE: 'store',
  KEYSMITH_PG_SCHEMA: 'pgSchema',
  KEYSMITH_TLS_CERT: 'tlsCert',
  KEYSMITH_TLS_KEY: 'tlsKey',
  KEYSMITH_SEALED: 'sealed',
  KEYSMITH_LOG_LEVEL: 'logLevel',
  KEYSMITH_NODE_NAME: 'nodeName',
  KEYSMITH_BOOTSTRAP_TOKEN: 'bootstrapToken',
  KEYSMITH_KMIP_PORT: 'kmipPort',
  KEYSMITH_KMIP_TLS_CERT: 'kmipTlsCert',
  KEYSMITH_KMIP_TLS_KEY: 'kmipTlsKey',
  KEYSMITH_KMIP_CLIENT_CA: 'kmipClientCa',
  KEYSMITH_AUDIT_FSYNC_READS: 'auditFsyncReads',
};

export class ConfigError extends Error {}

export function readConfigFile(path: string): ConfigInput {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`config file ${path} must hold a JSON object`);
  for (const k of Object.keys(raw)) if (!KEYS.includes(k as keyof Config)) throw new ConfigError(`config file ${path}: unknown setting "${k}"`);
  return raw as ConfigInput;
}

export function envConfig(env: NodeJS.ProcessEnv): ConfigInput {
  const out: ConfigInput = {};
  for (const [name, key] of Object.entries(ENV)) if (env[name] !== undefined && env[name] !== '') out[key] = env[name];
  return out;
}

function bool(v: unknown, name: string): boolean {
  if (typeof v === 'boolean') return v;
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new ConfigError(`${name} must be true or false`);
}

function str(v: unknown, name: string): string {
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(`${name} must be a non-empty string`);
  return v;
}

/** Merges the layers (later wins) and validates. */
export function parseConfig(...layers: ConfigInput[]): Config {
  const m: ConfigInput = Object.assign({}, ...layers.map((l) => Object.fromEntries(Object.entries(l).filter(([, v]) => v !== undefined))));
  const dataDir = resolve(str(m.dataDir ?? '.keysmith', 'dataDir'));
  const port = Number(m.port ?? 8443);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError('port must be an integer 0..65535');
  const store = str(m.store ?? `sqlite:${join(dataDir, 'keysmith.db')}`, 'store');
  if (!/^(sqlite:|postgres(ql)?:\/\/)/.test(store)) throw new ConfigError('store must be sqlite:<file> or a postgres:// URL');
  const tlsCert = m.tlsCert === undefined ? undefined : str(m.tlsCert, 'tlsCert');
  const tlsKey = m.tlsKey === undefined ? undefined : str(m.tlsKey, 'tlsKey');
  if ((tlsCert === undefined) !== (tlsKey === undefined)) throw new ConfigError('tlsCert and tlsKey must be given together');
  const bootstrapToken = m.bootstrapToken === undefined ? undefined : str(m.bootstrapToken, 'bootstrapToken');
  if (bootstrapToken !== undefined && bootstrapToken.length < 16) throw new ConfigError('the bootstrap token must be at least 16 characters');
  const kdfCost = m.kdfCost === undefined ? undefined : Number(m.kdfCost);
  if (kdfCost !== undefined && (!Number.isInteger(kdfCost) || kdfCost < 14 || kdfCost > 20)) throw new ConfigError('kdfCost must be 14..20');
  const rekeyBatch = m.rekeyBatch === undefined ? undefined : Number(m.rekeyBatch);
  if (rekeyBatch !== undefined && (!Number.isInteger(rekeyBatch) || rekeyBatch < 1 || rekeyBatch > 100_000)) throw new ConfigError('rekeyBatch must be 1..100000');
  const jobLeaseMs = m.jobLeaseMs === undefined ? undefined : Number(m.jobLeaseMs);
  if (jobLeaseMs !== undefined && (!Number.isInteger(jobLeaseMs) || jobLeaseMs < 500 || jobLeaseMs > 600_000)) throw new ConfigError('jobLeaseMs must be 500..600000');
  const kmipPort = Number(m.kmipPort ?? 5696);
  if (!Number.isInteger(kmipPort) || kmipPort < 0 || kmipPort > 65535) throw new ConfigError('kmipPort must be an integer 0..65535');
  const kmipTlsCert = m.kmipTlsCert === undefined ? undefined : str(m.kmipTlsCert, 'kmipTlsCert');
  const kmipTlsKey = m.kmipTlsKey === undefined ? undefined : str(m.kmipTlsKey, 'kmipTlsKey');
  const kmipClientCa = m.kmipClientCa === undefined ? undefined : str(m.kmipClientCa, 'kmipClientCa');
  const kmipSet = [kmipTlsCert, kmipTlsKey, kmipClientCa].filter((x) => x !== undefined).length;
  if (kmipSet !== 0 && kmipSet !== 3) throw new ConfigError('kmipTlsCert, kmipTlsKey and kmipClientCa must be given together');
  return Object.freeze({
    host: str(m.host ?? '127.0.0.1', 'host'),
    port,
    dataDir,
    store,
    pgSchema: m.pgSchema === undefined ? undefined : str(m.pgSchema, 'pgSchema'),
    tlsCert,
    tlsKey,
    sealed: m.sealed === undefined ? false : bool(m.sealed, 'sealed'),
    logLevel: str(m.logLevel ?? 'info', 'logLevel'),
    nodeName: str(m.nodeName ?? 'node1', 'nodeName'),
    bootstrapToken,
    kdfCost,
    rekeyBatch,
    jobLeaseMs,
    kmipPort,
    kmipTlsCert,
    kmipTlsKey,
    kmipClientCa,
    auditFsyncReads: m.auditFsyncReads === undefined ? false : bool(m.auditFsyncReads, 'auditFsyncReads'),
  });
}
