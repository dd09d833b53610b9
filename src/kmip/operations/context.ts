/** What every KMIP operation handler receives, and the one error type they throw. */
import type { ProtocolVersion } from '../message.js';
import { Tag } from '../tags.js';
import { ItemType, child, type Ttlv } from '../ttlv.js';
import { ResultReason } from '../enums.js';
import type { KmipObjectService } from '../kmip-object-service.js';
import type { SvmRow } from '../../store/svm-repo.js';

/** A refusal answered as Operation Failed with this Result Reason and message. */
export class KmipError extends Error {
  constructor(
    readonly reason: number,
    message: string,
    /** The object the refused operation was about, for the failure's audit record. */
    readonly objectId?: string,
  ) {
    super(message);
    this.name = 'KmipError';
  }
}

export interface KmipPrincipal {
  /** Audit actor, e.g. `certificate:<common name>:<certificate uuid>`. */
  actor: string;
  svm: SvmRow;
}

export interface OpContext {
  version: ProtocolVersion;
  /** KMIP 2.x encodings (Attributes, Attribute Reference) rather than 1.x ones. */
  v2: boolean;
  principal: KmipPrincipal;
  objects: KmipObjectService;
  requestId: string;
  /** The ID Placeholder: the Unique Identifier the previous batch item produced. */
  placeholder?: string;
  /**
   * Hands the server a read's audit record (Get, Encrypt, Decrypt) to wait for before the response
   * leaves, instead of waiting for it inside the item: consecutive reads of one batch then share a
   * group commit (one fsync) rather than taking one each. Absent: the handler waits itself.
   */
  deferAudit?: (recorded: Promise<void>) => void;
}

/** Response payload children; the server wraps them in a Response Payload. */
export type OperationHandler = (ctx: OpContext, payload: Ttlv | undefined) => Promise<Ttlv[]>;

export function field(payload: Ttlv | undefined, tag: number): Ttlv | undefined {
  return payload && payload.type === ItemType.Structure ? child(payload, tag) : undefined;
}

export function enumField(payload: Ttlv | undefined, tag: number, what: string): number | undefined {
  const f = field(payload, tag);
  if (!f) return undefined;
  if (f.type !== ItemType.Enumeration) throw new KmipError(ResultReason.InvalidField, `${what} must be an Enumeration`);
  return f.value;
}

export function intField(payload: Ttlv | undefined, tag: number, what: string): number | undefined {
  const f = field(payload, tag);
  if (!f) return undefined;
  if (f.type !== ItemType.Integer) throw new KmipError(ResultReason.InvalidField, `${what} must be an Integer`);
  return f.value;
}

export function bytesField(payload: Ttlv | undefined, tag: number, what: string): Buffer | undefined {
  const f = field(payload, tag);
  if (!f) return undefined;
  if (f.type !== ItemType.ByteString) throw new KmipError(ResultReason.InvalidField, `${what} must be a Byte String`);
  return f.value;
}

/** The Unique Identifier of the request, or the ID Placeholder when it is omitted. */
export function uniqueId(ctx: OpContext, payload: Ttlv | undefined): string {
  const f = field(payload, Tag.UniqueIdentifier);
  if (f) {
    if (f.type !== ItemType.TextString) throw new KmipError(ResultReason.InvalidField, 'Unique Identifier must be a Text String');
    return f.value;
  }
  if (ctx.placeholder) return ctx.placeholder;
  throw new KmipError(ResultReason.InvalidField, 'Unique Identifier is missing and no earlier batch item set the ID Placeholder');
}
