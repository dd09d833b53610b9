/**
 * The CLI's HTTP client: where the server is and which token to send (flags, then environment,
 * then a client config file), and one `request()` that turns every failure into a CliError with a
 * message a person can act on — the server's error code and message, or why the server could not
 * be reached. No stack trace ever reaches the terminal.
 *
 * Plain node:http / node:https, so a self-signed server certificate can be trusted with `--ca`
 * (or, knowingly, not checked with `--insecure`) without an extra dependency.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** A failure to report to the user: `keysmith: <message>`, then exit with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** The server refused: its ONTAP-shaped error body, kept whole for `--json` callers. */
export class ApiError extends CliError {
  constructor(
    readonly status: number,
    readonly code: string | undefined,
    readonly apiMessage: string,
    readonly target?: string,
  ) {
    super(`${code !== undefined ? `error ${code}: ` : `HTTP ${status}: `}${apiMessage}${target ? ` (field ${target})` : ''}`);
  }
}

export interface ClientFlags {
  url?: string;
  token?: string;
  config?: string;
  ca?: string;
  insecure?: boolean;
}

export interface Target {
  /** Base URL without a trailing slash. */
  url: string;
  token?: string;
  ca?: Buffer;
  insecure: boolean;
  /** Where the token would be looked for, to say so when there is none. */
  configPath: string;
}

export const DEFAULT_URL = 'http://127.0.0.1:8443';

interface ClientFile {
  url?: string;
  token?: string;
  insecure?: boolean;
  ca?: string;
}

const FILE_KEYS = ['url', 'token', 'insecure', 'ca'];

export function defaultConfigPath(env: NodeJS.ProcessEnv, home = homedir()): string {
  return join(env.XDG_CONFIG_HOME || join(home, '.config'), 'keysmith', 'client.json');
}

function readClientFile(path: string, explicit: boolean, warn: (m: string) => void): ClientFile {
  if (!existsSync(path)) {
    if (explicit) throw new CliError(`client config file ${path} does not exist`);
    return {};
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new CliError(`cannot read client config file ${path}: ${(e as Error).message}`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new CliError(`client config file ${path} must hold a JSON object`);
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!FILE_KEYS.includes(k)) throw new CliError(`client config file ${path}: unknown setting "${k}" (known: ${FILE_KEYS.join(', ')})`);
  for (const k of ['url', 'token', 'ca']) if (o[k] !== undefined && (typeof o[k] !== 'string' || o[k] === '')) throw new CliError(`client config file ${path}: "${k}" must be a non-empty string`);
  if (o.insecure !== undefined && typeof o.insecure !== 'boolean') throw new CliError(`client config file ${path}: "insecure" must be true or false`);
  if (o.token !== undefined) {
    try {
      if ((statSync(path).mode & 0o077) !== 0) warn(`client config file ${path} holds a token but other users may read it: chmod 600 it`);
    } catch {
      /* not a regular file: nothing to warn about */
    }
  }
  return o as ClientFile;
}

function envFlag(v: string | undefined, name: string): boolean | undefined {
  if (v === undefined || v === '') return undefined;
  if (v === '1' || v === 'true') return true;
  if (v === '0' || v === 'false') return false;
  throw new CliError(`${name} must be true or false`);
}

/** Flags win over the environment, which wins over the config file. */
export function resolveTarget(flags: ClientFlags, env: NodeJS.ProcessEnv = process.env, warn: (m: string) => void = () => {}): Target {
  const explicitPath = flags.config ?? (env.KEYSMITH_CLIENT_CONFIG || undefined);
  const configPath = explicitPath ?? defaultConfigPath(env);
  const file = readClientFile(configPath, explicitPath !== undefined, warn);
  const rawUrl = flags.url ?? (env.KEYSMITH_URL || undefined) ?? file.url ?? DEFAULT_URL;
  let parsed: URL;
  try {
    parsed = new URL(rawUrl);
  } catch {
    throw new CliError(`the server URL "${rawUrl}" is not a URL (expected e.g. https://keysmith.example:8443)`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new CliError(`the server URL must be http:// or https://, not ${parsed.protocol}`);
  if (parsed.search || parsed.hash) throw new CliError('the server URL must not carry a query or fragment');
  const token = flags.token ?? (env.KEYSMITH_TOKEN || undefined) ?? file.token;
  const caPath = flags.ca ?? (env.KEYSMITH_CA || undefined) ?? file.ca;
  let ca: Buffer | undefined;
  if (caPath !== undefined) {
    try {
      ca = readFileSync(caPath);
    } catch (e) {
      throw new CliError(`cannot read CA certificate ${caPath}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  const insecure = flags.insecure ?? envFlag(env.KEYSMITH_INSECURE, 'KEYSMITH_INSECURE') ?? file.insecure ?? false;
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(parsed.hostname);
  if (token && parsed.protocol === 'http:' && !loopback) warn(`sending the API token to ${parsed.host} over plain http: anyone on the path can read it (use https)`);
  return { url: parsed.href.replace(/\/+$/, ''), token, ca, insecure, configPath };
}

export type Query = Record<string, string | number | boolean | undefined>;

export interface Client {
  readonly target: Target;
  request<T = any>(method: string, path: string, opts?: { body?: unknown; query?: Query; auth?: boolean }): Promise<T>;
}

const TLS_TRUST_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
]);

function networkError(base: string, e: NodeJS.ErrnoException): CliError {
  const code = e.code ?? '';
  if (TLS_TRUST_CODES.has(code)) {
    return new CliError(`cannot verify the certificate of ${base}: ${e.message} (trust it with --ca <file>, or skip the check with --insecure)`);
  }
  if (code === 'ECONNREFUSED') return new CliError(`cannot reach ${base}: connection refused (is \`keysmith serve\` running there?)`);
  if (code === 'ENOTFOUND') return new CliError(`cannot reach ${base}: host not found`);
  if (code === 'EPROTO' || /wrong version number|packet length too long/i.test(e.message)) {
    return new CliError(`cannot talk to ${base}: TLS handshake failed (does the server speak ${base.startsWith('https') ? 'http' : 'https'}?)`);
  }
  return new CliError(`cannot reach ${base}: ${e.message}`);
}

const TIMEOUT_MS = 150_000; // above ONTAP's 120 s return_timeout

export function createClient(target: Target): Client {
  return {
    target,
    request(method, path, opts = {}) {
      const auth = opts.auth ?? true;
      if (auth && !target.token) {
        return Promise.reject(new CliError(`no API token: give --token, set KEYSMITH_TOKEN, or put "token" in ${target.configPath}`));
      }
      let url = target.url + path;
      const q = Object.entries(opts.query ?? {}).filter(([, v]) => v !== undefined) as [string, string | number | boolean][];
      if (q.length > 0) url += '?' + new URLSearchParams(q.map(([k, v]) => [k, String(v)])).toString();
      const body = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
      const headers: Record<string, string> = { accept: 'application/json', 'user-agent': 'keysmith-cli' };
      if (auth && target.token) headers.authorization = `Bearer ${target.token}`;
      if (body) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = String(body.length);
      }
      const https = url.startsWith('https:');
      return new Promise((resolve, reject) => {
        const onResponse = (res: IncomingMessage) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (e) => reject(networkError(target.url, e)));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            let isJson = false;
            try {
              parsed = text ? JSON.parse(text) : {};
              isJson = true;
            } catch {
              parsed = text;
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) {
              if (!isJson) return reject(new CliError(`the server at ${target.url} answered ${method} ${path} with something other than JSON (is this a Keysmith server?)`));
              return resolve(parsed as never);
            }
            const e = isJson ? (parsed as { error?: { code?: unknown; message?: unknown; target?: unknown } }).error : undefined;
            if (e && typeof e.message === 'string') {
              return reject(new ApiError(status, typeof e.code === 'string' ? e.code : undefined, e.message, typeof e.target === 'string' ? e.target : undefined));
            }
            const snippet = typeof parsed === 'string' ? parsed.replace(/\s+/g, ' ').trim().slice(0, 200) : '';
            reject(new ApiError(status, undefined, `${res.statusMessage ?? 'error'} from ${target.url}${snippet ? `: ${snippet}` : ''}`));
          });
        };
        const common = { method, headers, agent: false as const, timeout: TIMEOUT_MS };
        const req = https ? httpsRequest(url, { ...common, ca: target.ca, rejectUnauthorized: !target.insecure }, onResponse) : httpRequest(url, common, onResponse);
        req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${TIMEOUT_MS / 1000} s`), { code: 'ETIMEDOUT' })));
        req.on('error', (e) => reject(networkError(target.url, e as NodeJS.ErrnoException)));
        req.end(body);
      });
    },
  };
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const looksLikeUuid = (s: string) => UUID_RE.test(s);

export interface SvmRef {
  uuid: string;
  name: string;
}

/** A data SVM by name or uuid, through the ONTAP list (the only way from a name to a uuid). */
export async function findSvm(client: Client, ref: string): Promise<SvmRef> {
  const query = looksLikeUuid(ref) ? { uuid: ref } : { name: ref };
  const r = await client.request<{ records: SvmRef[] }>('GET', '/api/svm/svms', { query });
  const hit = r.records[0];
  if (!hit) throw new CliError(`SVM "${ref}" does not exist (or this token may not see it)`);
  return hit;
}
