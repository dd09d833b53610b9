/**
 * Element's JSON-RPC envelope: a request `{"method","params","id"}` (method names are matched
 * case-insensitively, as Element's own examples send them in lower case), a response
 * `{"result", "id"}` or `{"error":{"code","name","message"},"id"}`. Element gives every
 * system-generated error code 500 and tells errors apart by `name`; parameters a method does not
 * know are not an error but are reported back under `unusedParameters`.
 *
 * Element's own names used here: xUnknownAPIMethod (no such method), xUnknownRPCMethod (the body is
 * not a JSON-RPC request), xInvalidParameterType, xInvalidParameter, xUnrecognizedEnumString,
 * xDBNoSuchPath (an async result that does not exist, as GetAsyncResult answers), xPermissionDenied.
 * xMissingParameter and xUnauthorized are Keysmith's choice where no Element name was found.
 */
import { ERRORS, KeysmithError, elementName, type ErrorName } from '../errors.js';

export class ElementError extends Error {
  constructor(
    readonly elementName: string,
    message: string,
  ) {
    super(message);
  }
}

export type RpcId = string | number | null;

export interface ElementErrorBody {
  error: { code: number; name: string; message: string };
  id: RpcId;
}

/** The error body for anything thrown while serving a call; database and crypto details never leave. */
export function errorBody(e: unknown, id: RpcId): { status: number; body: ElementErrorBody } {
  if (e instanceof ElementError) return { status: 200, body: { error: { code: 500, name: e.elementName, message: e.message }, id } };
  if (e instanceof KeysmithError) {
    const status = e.status === 401 || e.status === 429 ? e.status : 200;
    return { status, body: { error: { code: status === 200 ? 500 : status, name: elementName(e.kind), message: e.message }, id } };
  }
  return { status: 200, body: { error: { code: 500, name: elementName('internal'), message: ERRORS.internal.message }, id } };
}

/** The catalog name behind a job's failure code (for an async result's error). */
export function kindOfCode(code: number): ErrorName {
  for (const [k, v] of Object.entries(ERRORS)) if (v.code === String(code)) return k as ErrorName;
  return 'internal';
}

/** Reads a request envelope; refuses anything that is not one. */
export function parseEnvelope(body: unknown): { method: string; params: Record<string, unknown>; id: RpcId } {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new ElementError('xUnknownRPCMethod', 'The request body must be a JSON-RPC object with "method", "params" and "id".');
  const b = body as Record<string, unknown>;
  const id = typeof b.id === 'string' || typeof b.id === 'number' ? b.id : null;
  if (typeof b.method !== 'string' || b.method.length === 0 || b.method.length > 128) throw new ElementError('xUnknownRPCMethod', 'The request has no method name.');
  if (b.params !== undefined && b.params !== null && (typeof b.params !== 'object' || Array.isArray(b.params))) throw new ElementError('xInvalidParameterType', 'params must be an object.');
  return { method: b.method, params: (b.params ?? {}) as Record<string, unknown>, id };
}

/** Reads a method's parameters against what it knows; the rest is reported as unused. */
export class Params {
  private readonly used = new Set<string>();
  constructor(private readonly p: Record<string, unknown>) {}

  private take(name: string): unknown {
    this.used.add(name);
    return this.p[name];
  }

  integer(name: string, opts: { required?: boolean; min?: number } = {}): number | undefined {
    const v = this.take(name);
    if (v === undefined || v === null) {
      if (opts.required) throw new ElementError('xMissingParameter', `Missing required parameter: ${name}.`);
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new ElementError('xInvalidParameterType', `${name} must be an integer.`);
    if (opts.min !== undefined && v < opts.min) throw new ElementError('xInvalidParameter', `${name} must be at least ${opts.min}.`);
    return v;
  }

  boolean(name: string): boolean | undefined {
    const v = this.take(name);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') throw new ElementError('xInvalidParameterType', `${name} must be a boolean.`);
    return v;
  }

  /** A string from a fixed set, matched case-insensitively; returns the set's spelling. */
  enumString<T extends string>(name: string, values: readonly T[]): T | undefined {
    const v = this.take(name);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw new ElementError('xInvalidParameterType', `${name} must be a string.`);
    const hit = values.find((x) => x.toLowerCase() === v.toLowerCase());
    if (!hit) throw new ElementError('xUnrecognizedEnumString', `${name} must be one of: ${values.join(', ')}.`);
    return hit;
  }

  string(name: string, opts: { required?: boolean; maxLength?: number } = {}): string | undefined {
    const v = this.take(name);
    if (v === undefined || v === null) {
      if (opts.required) throw new ElementError('xMissingParameter', `Missing required parameter: ${name}.`);
      return undefined;
    }
    if (typeof v !== 'string') throw new ElementError('xInvalidParameterType', `${name} must be a string.`);
    if (opts.maxLength !== undefined && v.length > opts.maxLength) throw new ElementError('xInvalidParameter', `${name} is longer than ${opts.maxLength} characters.`);
    return v;
  }

  stringArray(name: string): string[] | undefined {
    const v = this.take(name);
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new ElementError('xInvalidParameterType', `${name} must be an array of strings.`);
    return v as string[];
  }

  has(name: string): boolean {
    return this.p[name] !== undefined && this.p[name] !== null;
  }

  /** Element's warning for parameters the method did not use, or undefined. */
  unused(): Record<string, unknown> | undefined {
    const rest = Object.keys(this.p).filter((k) => !this.used.has(k));
    if (rest.length === 0) return undefined;
    return Object.fromEntries(rest.map((k) => [k, { name: k, message: 'Unused parameter.' }]));
  }
}
