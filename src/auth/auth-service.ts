/**
 * Principals: API tokens (bearer) and local users (HTTP Basic, as Element clients send).
 *
 * Invariants:
 * - A token is stored only as its SHA-256; the secret is shown once, at creation.
 * - Passwords are stored as argon2id hashes and checked on libuv's thread pool, off the event loop.
 * - Repeated failures for one user name back off exponentially; a locked-out name is refused
 *   without even checking the password.
 * - Revocation takes effect on this node at once (its cache entry is dropped) and on other nodes
 *   within the cache lifetime (a few seconds).
 * - revision() changes whenever this node creates, revokes or removes a principal, so holders of a
 *   principal verified earlier (open KMIP connections) verify again before relying on it.
 */
import { hash, randomBytes } from 'node:crypto';
import argon2 from 'argon2';
import { KeysmithError, fail } from '../errors.js';
import { newId } from '../ids.js';
import { sha256 } from '../crypto/kdf.js';
import type { PrincipalRepo, TokenRow, UserRow } from '../store/principal-repo.js';
import type { Conn } from '../store/schema.js';

export const ROLES = ['cluster-admin', 'svm-admin', 'readonly', 'application'] as const;
export type Role = (typeof ROLES)[number];

export interface Principal {
  id: string;
  kind: 'token' | 'user';
  name: string;
  role: Role;
  /** SVM uuids this principal is bound to; empty for cluster-wide roles. */
  svms: string[];
}

const CACHE_MS = 5000;
const MAX_FAILURES = 5;

export function hashToken(secret: string): string {
  // The same SHA-256 hex as sha256(secret).toString('hex'), one-shot: it runs on every request.
  return hash('sha256', secret, 'hex');
}

export function createAuthService(deps: { repo: PrincipalRepo; now?: () => number }) {
  const { repo } = deps;
  const now = deps.now ?? Date.now;
  const tokenCache = new Map<string, { p: Principal; expires: number; tokenExpires: number | null }>();
  const basicCache = new Map<string, { p: Principal; expires: number }>();
  const failures = new Map<string, { count: number; until: number }>();
  // Bumped when a change of a principal is written, before its transaction commits: a check that reads
  // the store in between (PostgreSQL) still sees the old row, and is only bounded by its holder's TTL.
  let revision = 0;

  function principalOfToken(t: TokenRow): Principal {
    return { id: t.id, kind: 'token', name: t.name, role: t.role as Role, svms: JSON.parse(t.svms) as string[] };
  }
  function principalOfUser(u: UserRow): Principal {
    return { id: u.id, kind: 'user', name: u.name, role: u.role as Role, svms: JSON.parse(u.svms) as string[] };
  }

  /** A token's principal from the cache, or undefined when it must be looked up (or refused). */
  function cachedToken(hash: string, t0: number): Principal | undefined {
    const c = tokenCache.get(hash);
    return c && c.expires > t0 && (c.tokenExpires === null || c.tokenExpires > t0) ? c.p : undefined;
  }

  async function byToken(secret: string): Promise<Principal> {
    const hash = hashToken(secret);
    const t0 = now();
    const hit = cachedToken(hash, t0);
    if (hit) return hit;
    const row = await repo.findTokenByHash(hash);
    if (!row) fail('not_authenticated', 'The token is not valid.');
    if (row.revoked_at || (row.expires_at && Date.parse(row.expires_at) <= t0)) {
      tokenCache.delete(hash);
      fail('token_expired');
    }
    const p = principalOfToken(row);
    tokenCache.set(hash, { p, expires: t0 + CACHE_MS, tokenExpires: row.expires_at ? Date.parse(row.expires_at) : null });
    return p;
  }

  async function byPassword(name: string, password: string): Promise<Principal> {
    const key = sha256(`${name}\0${password}`).toString('hex');
    const t0 = now();
    const c = basicCache.get(key);
    if (c && c.expires > t0) return c.p;
    const f = failures.get(name);
    if (f && f.until > t0) fail('too_many_failures');
    const user = await repo.findUserByName(name);
    // Verify against a dummy hash when the user is unknown, so timing does not tell names apart.
    const ok = await argon2.verify(user?.password_hash ?? DUMMY_HASH, password).catch(() => false);
    if (!user || !ok) {
      const count = (failures.get(name)?.count ?? 0) + 1; // re-read: concurrent guesses must all count
      // The lock runs from now, not from before the (slow) hash check, or a slow check would shorten it to nothing.
      failures.set(name, { count, until: count >= MAX_FAILURES ? now() + Math.min(2 ** (count - MAX_FAILURES) * 1000, 300_000) : 0 });
      fail('not_authenticated', 'The user name or password is not valid.');
    }
    failures.delete(name);
    const p = principalOfUser(user);
    basicCache.set(key, { p, expires: t0 + CACHE_MS });
    return p;
  }

  return {
    /**
     * A counter bumped whenever this node creates, revokes or removes a token or user: a principal
     * verified while it had another value must be verified again. Changes made on other nodes are not
     * counted; holders bound their trust in time as well.
     */
    revision: () => revision,

    /**
     * The principal of a bearer token this node has checked within the cache lifetime, without a
     * promise (it runs on every request); undefined for anything else, which `authenticate` then
     * settles (lookup, Basic, refusal). The same checks as `authenticate`'s cached path.
     */
    cachedBearer(header: string | undefined): Principal | undefined {
      if (!header || header.length < 8) return undefined;
      const sp = header.indexOf(' ');
      if (sp !== 6 || header.slice(0, 6).toLowerCase() !== 'bearer') return undefined;
      const value = header.slice(7).trim();
      return value ? cachedToken(hashToken(value), now()) : undefined;
    },

    /** Authenticates an Authorization header value; throws a catalog error when it does not. */
    async authenticate(header: string | undefined): Promise<Principal> {
      if (!header) fail('not_authenticated');
      const sp = header.indexOf(' ');
      const scheme = sp > 0 ? header.slice(0, sp).toLowerCase() : '';
      const value = sp > 0 ? header.slice(sp + 1).trim() : '';
      if (scheme === 'bearer' && value) return byToken(value);
      if (scheme === 'basic' && value) {
        const decoded = Buffer.from(value, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon <= 0 || decoded.includes('\0')) fail('not_authenticated', 'Malformed Basic credentials.');
        return byPassword(decoded.slice(0, colon), decoded.slice(colon + 1));
      }
      fail('not_authenticated');
    },

    async createToken(
      input: { name: string; role: Role; svms: string[]; expiresAt?: string | null; createdBy?: string | null; secret?: string },
      tx?: Conn,
    ): Promise<{ row: TokenRow; secret: string }> {
      const secret = input.secret ?? `ks_${randomBytes(32).toString('base64url')}`;
      const row: TokenRow = {
        id: newId('tok'),
        name: input.name,
        hash: hashToken(secret),
        role: input.role,
        svms: JSON.stringify(input.svms),
        created_by: input.createdBy ?? null,
        created_at: new Date(now()).toISOString(),
        expires_at: input.expiresAt ?? null,
        revoked_at: null,
      };
      revision += 1;
      await repo.insertToken(row, tx);
      return { row, secret };
    },

    async revokeToken(id: string, tx?: Conn): Promise<TokenRow> {
      const row = await repo.findToken(id, tx);
      if (!row) fail('not_found', `Token ${id} does not exist.`, 'id');
      revision += 1;
      await repo.revokeToken(id, new Date(now()).toISOString(), tx);
      tokenCache.delete(row.hash);
      return row;
    },

    async createUser(input: { name: string; password: string; role: Role; svms: string[] }, tx?: Conn): Promise<UserRow> {
      if (await repo.findUserByName(input.name, tx)) throw new KeysmithError('duplicate', `User ${input.name} already exists.`, 'name');
      const row: UserRow = {
        id: newId('usr'),
        name: input.name,
        password_hash: await argon2.hash(input.password, { type: argon2.argon2id }),
        role: input.role,
        svms: JSON.stringify(input.svms),
        created_at: new Date(now()).toISOString(),
      };
      revision += 1;
      await repo.insertUser(row, tx);
      return row;
    },

    async removeUser(id: string, tx?: Conn): Promise<UserRow> {
      const row = await repo.findUser(id, tx);
      if (!row) fail('not_found', `User ${id} does not exist.`, 'id');
      revision += 1;
      await repo.removeUser(id, tx);
      for (const [k, v] of basicCache) if (v.p.id === id) basicCache.delete(k);
      return row;
    },

    /**
     * Called once the transaction that revoked a token or removed a user has committed: a check made
     * between the change and its commit (PostgreSQL) read the old row and may have cached it, or
     * been remembered by an open KMIP connection; both are dropped again here.
     */
    settled(change: { tokenHash?: string; userId?: string }): void {
      revision += 1;
      if (change.tokenHash) tokenCache.delete(change.tokenHash);
      if (change.userId) for (const [k, v] of basicCache) if (v.p.id === change.userId) basicCache.delete(k);
    },

    principalOfToken,
    principalOfUser,
  };
}
export type AuthService = ReturnType<typeof createAuthService>;

// argon2id hash of a random, discarded password: only ever used to spend the same time on unknown names.
const DUMMY_HASH = '$argon2id$v=19$m=65536,t=3,p=4$P0JjGk9maGJorOiIET8AAw$Jn+Yiw9cEKGvGXvE6YcsCD8Y2+W6syNxwU0LYI/BpSg';
