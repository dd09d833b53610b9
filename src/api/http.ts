/** Helpers shared by the routes: who is calling, what they may touch, ONTAP field selection. */
import type { FastifyRequest } from 'fastify';
import { KeysmithError, fail } from '../errors.js';
import type { Principal } from '../auth/auth-service.js';
import type { SvmRow } from '../store/svm-repo.js';
import type { Services } from '../app.js';

export function principal(req: FastifyRequest): Principal {
  if (!req.principal) fail('not_authenticated');
  return req.principal;
}

export function actor(req: FastifyRequest) {
  const p = principal(req);
  return { actor: `${p.kind}:${p.name}:${p.id}`, requestId: req.id };
}

/**
 * What a principal may do with an SVM:
 * - read: see ONTAP-shaped resources of it (key managers, the SVM itself, key metadata);
 * - manage: change them (key managers, passphrases, backups, key lifecycle);
 * - data: use keys (create, generate, unwrap).
 */
export type Access = 'read' | 'manage' | 'data';

const ALLOWED: Record<Principal['role'], Access[]> = {
  'cluster-admin': ['read', 'manage', 'data'],
  'svm-admin': ['read', 'manage', 'data'],
  readonly: ['read'],
  application: ['data'],
};

function bound(p: Principal, svm: SvmRow): boolean {
  if (p.role === 'cluster-admin') return true;
  if (p.role === 'readonly' && p.svms.length === 0) return true;
  return p.svms.includes(svm.uuid);
}

/** True when the principal may see the SVM at all (otherwise it is answered as not found). */
export function canSee(p: Principal, svm: SvmRow): boolean {
  return bound(p, svm) && ALLOWED[p.role].length > 0;
}

/**
 * Checks access to an SVM's objects. Another tenant's object is answered 404, exactly as if it did
 * not exist; a known object with the wrong role is answered 403.
 */
export function authorize(req: FastifyRequest, svm: SvmRow | undefined, access: Access, what = 'entry'): SvmRow {
  const p = principal(req);
  if (!svm || !bound(p, svm)) throw new KeysmithError('not_found', `${what} doesn't exist`);
  if (!ALLOWED[p.role].includes(access)) fail('permission_denied');
  return svm;
}

/** For cluster-level operations (SVMs, users, tokens, the cluster key manager). */
export function requireClusterAdmin(req: FastifyRequest): void {
  if (principal(req).role !== 'cluster-admin') fail('permission_denied');
}

/** For cluster-level reads. */
export function requireClusterRead(req: FastifyRequest): void {
  const p = principal(req);
  if (p.role === 'cluster-admin' || (p.role === 'readonly' && p.svms.length === 0)) return;
  fail('permission_denied');
}

/** Any ONTAP-shaped read at all (application principals have none). */
export function requireOntapRead(req: FastifyRequest): void {
  if (!ALLOWED[principal(req).role].includes('read')) fail('permission_denied');
}

export async function svmFor(s: Services, ref: string): Promise<SvmRow | undefined> {
  return s.svms.resolve(ref);
}

/**
 * ONTAP's `fields` query: `*` for all ordinary fields, `**` to add the expensive ones, or a comma
 * list of (dotted) names. Key fields (uuid, name, _links) always come back.
 */
export function selectFields(record: Record<string, unknown>, fields: string | undefined, opts: { always: string[]; defaults: string[]; expensive: string[] }): Record<string, unknown> {
  const want = new Set<string>(opts.always);
  if (!fields) for (const f of opts.defaults) want.add(f);
  else
    for (const f of fields.split(',').map((x) => x.trim()).filter(Boolean)) {
      if (f === '*') {
        for (const k of Object.keys(record)) if (!opts.expensive.includes(k)) want.add(k);
      } else if (f === '**') {
        for (const k of Object.keys(record)) want.add(k);
      } else want.add(f);
    }
  const out: Record<string, unknown> = {};
  for (const f of want) {
    const parts = f.split('.');
    let src: unknown = record;
    for (const p of parts) src = src && typeof src === 'object' ? (src as Record<string, unknown>)[p] : undefined;
    if (src === undefined) continue;
    let dst = out;
    for (let i = 0; i < parts.length - 1; i++) {
      dst[parts[i]] = (dst[parts[i]] as Record<string, unknown>) ?? {};
      dst = dst[parts[i]] as Record<string, unknown>;
    }
    dst[parts[parts.length - 1]] = src;
  }
  return out;
}

/**
 * The querystring schema of an ONTAP collection GET: the parameters every collection takes
 * (`fields`, `max_records`, `return_records`, `return_timeout`, `uuid`) plus its own filters.
 * Values stay strings (no coercion): each route validates them with maxRecords, returnTimeout, bool.
 */
export function collectionQuery(filters: Record<string, object> = {}) {
  return {
    type: 'object',
    additionalProperties: false,
    properties: { fields: { type: 'string' }, max_records: { type: 'string' }, return_records: { type: 'string' }, return_timeout: { type: 'string' }, uuid: { type: 'string' }, ...filters },
  } as const;
}

/** Validates the ONTAP `max_records` query value. */
export function maxRecords(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,9}$/.test(v) || Number(v) < 1) fail('invalid_value', 'max_records must be a positive integer.', 'max_records');
  return Number(v);
}

export function bool(v: string | undefined, name: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (v === 'true') return true;
  if (v === 'false') return false;
  fail('invalid_value', `${name} must be true or false.`, name);
}

/** ONTAP's return_timeout: 0..120 seconds. */
export function returnTimeout(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,3}$/.test(v) || Number(v) > 120) fail('invalid_value', 'return_timeout must be an integer from 0 to 120.', 'return_timeout');
  return Number(v);
}

export const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: {
        code: { type: 'string' },
        message: { type: 'string' },
        target: { type: 'string' },
        arguments: { type: 'array', items: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } },
      },
    },
  },
} as const;
