/**
 * KMIP request and response messages (KMIP 1.0–1.4 §7, 2.x §8): header fields, batches, and the
 * mirror pairs parseRequest/buildRequest and parseResponse/buildResponse.
 *
 * The parsers check shape, not meaning: the right outer tag, a header first, each known field with
 * its item type and at most once, Batch Count equal to the number of Batch Items, payloads that are
 * Structures. Anything else is a KmipDecodeError (a server answers Invalid Message). Header fields
 * this layer does not model (correlation values, attestation, tickets, message extensions, vendor
 * extension tags 0x54xxxx) are accepted and ignored, so real clients that send them still work.
 * A Unique Batch Item ID is not demanded for batches of more than one item: responses come back in
 * request order anyway, and refusing would only break clients that omit it.
 *
 * When a header was read before the failure, the error carries its protocol version so that the
 * server can answer in the client's version.
 */
import { Tag } from './tags.js';
import { child, ItemType, KmipDecodeError, ttlv, type Ttlv } from './ttlv.js';
import { CredentialType } from './enums.js';

export interface ProtocolVersion {
  major: number;
  minor: number;
}

export type Authentication = { username: string; password: string } | { other: Ttlv };

export interface RequestHeader {
  protocolVersion: ProtocolVersion;
  maximumResponseSize?: number;
  asynchronousIndicator?: boolean;
  /** Username/Password credential (1.x Credential Type 1); any other Authentication as `other`. */
  authentication?: Authentication;
  batchErrorContinuationOption?: number;
  batchOrderOption?: boolean;
  /** Seconds since the epoch. */
  timeStamp?: bigint;
  batchCount: number;
}

export interface RequestBatchItem {
  operation: number;
  uniqueBatchItemId?: Buffer;
  /** The Request Payload structure (tag RequestPayload). */
  payload?: Ttlv;
}

export interface RequestMessage {
  header: RequestHeader;
  items: RequestBatchItem[];
}

export interface ResponseBatchItem {
  operation?: number;
  uniqueBatchItemId?: Buffer;
  resultStatus: number;
  resultReason?: number;
  resultMessage?: string;
  /** The Response Payload structure (tag ResponsePayload). */
  payload?: Ttlv;
}

export interface ResponseMessage {
  protocolVersion: ProtocolVersion;
  /** Seconds since the epoch. */
  timeStamp: bigint;
  items: ResponseBatchItem[];
}

/** A KmipDecodeError raised after the header's Protocol Version was read. */
export class KmipMessageError extends KmipDecodeError {
  constructor(
    message: string,
    readonly protocolVersion?: ProtocolVersion,
  ) {
    super(message);
    this.name = 'KmipMessageError';
  }
}

// ---------------------------------------------------------------------------------------------
// Shape checks

function tagHex(tag: number): string {
  return `0x${tag.toString(16).padStart(6, '0')}`;
}

class Reader {
  version: ProtocolVersion | undefined;

  fail(message: string): never {
    throw new KmipMessageError(message, this.version);
  }

  structure(t: Ttlv, tag: number, what: string): Ttlv[] {
    if (t.tag !== tag) this.fail(`expected ${what} (${tagHex(tag)}), found ${tagHex(t.tag)}`);
    if (t.type !== ItemType.Structure) this.fail(`${what} is not a Structure`);
    return t.value;
  }

  typed(t: Ttlv, type: ItemType.Integer | ItemType.Enumeration, what: string): number;
  typed(t: Ttlv, type: ItemType.Boolean, what: string): boolean;
  typed(t: Ttlv, type: ItemType.TextString, what: string): string;
  typed(t: Ttlv, type: ItemType.ByteString, what: string): Buffer;
  typed(t: Ttlv, type: ItemType.DateTime, what: string): bigint;
  typed(t: Ttlv, type: ItemType, what: string): unknown {
    if (t.type !== type) this.fail(`${what} has the wrong item type`);
    return t.value;
  }

  once(seen: Set<number>, t: Ttlv, what: string): void {
    if (seen.has(t.tag)) this.fail(`${what} appears more than once`);
    seen.add(t.tag);
  }

  protocolVersion(t: Ttlv): ProtocolVersion {
    const parts = this.structure(t, Tag.ProtocolVersion, 'Protocol Version');
    let major: number | undefined;
    let minor: number | undefined;
    for (const c of parts) {
      if (c.tag === Tag.ProtocolVersionMajor && major === undefined) major = this.typed(c, ItemType.Integer, 'Protocol Version Major');
      else if (c.tag === Tag.ProtocolVersionMinor && minor === undefined) minor = this.typed(c, ItemType.Integer, 'Protocol Version Minor');
      else this.fail(`unexpected ${tagHex(c.tag)} in Protocol Version`);
    }
    if (major === undefined || minor === undefined) this.fail('Protocol Version needs Major and Minor');
    if (major < 0 || minor < 0) this.fail('Protocol Version is negative');
    return { major, minor };
  }
}

/** Header fields a client may send that this layer accepts without modelling them. */
const IGNORED_REQUEST_HEADER_TAGS = new Set<number>([
  Tag.ClientCorrelationValue,
  Tag.ServerCorrelationValue,
  Tag.AttestationCapableIndicator,
  Tag.AttestationType,
  Tag.Ticket,
]);

function isExtension(tag: number): boolean {
  return tag >= 0x540000 && tag <= 0x54ffff;
}

function parseAuthentication(r: Reader, t: Ttlv): Authentication {
  const parts = r.structure(t, Tag.Authentication, 'Authentication');
  // 1.x: exactly one Credential. 2.x allows several; those and other credential types go to `other`.
  if (parts.length !== 1) return { other: t };
  const cred = r.structure(parts[0], Tag.Credential, 'Credential');
  const type = child(parts[0], Tag.CredentialType);
  const value = child(parts[0], Tag.CredentialValue);
  if (!type || !value || cred.length !== 2) r.fail('Credential needs exactly a Credential Type and a Credential Value');
  const credType = r.typed(type, ItemType.Enumeration, 'Credential Type');
  if (credType !== CredentialType.UsernameAndPassword) return { other: t };
  const fields = r.structure(value, Tag.CredentialValue, 'Credential Value');
  let username: string | undefined;
  let password: string | undefined;
  for (const f of fields) {
    if (f.tag === Tag.Username && username === undefined) username = r.typed(f, ItemType.TextString, 'Username');
    else if (f.tag === Tag.Password && password === undefined) password = r.typed(f, ItemType.TextString, 'Password');
    else r.fail(`unexpected ${tagHex(f.tag)} in Username and Password credential`);
  }
  if (username === undefined) r.fail('Username and Password credential has no Username');
  // A credential without a password is legal KMIP but cannot authenticate here: leave it to the caller.
  if (password === undefined) return { other: t };
  return { username, password };
}

export function parseRequest(t: Ttlv): RequestMessage {
  const r: Reader = new Reader();
  const parts = r.structure(t, Tag.RequestMessage, 'Request Message');
  if (parts.length === 0) r.fail('Request Message is empty');
  const headerParts = r.structure(parts[0], Tag.RequestHeader, 'Request Header');
  // Read the version first so that every later error can carry it.
  const pv = headerParts.find((c) => c.tag === Tag.ProtocolVersion);
  if (!pv) r.fail('Request Header has no Protocol Version');
  r.version = r.protocolVersion(pv);

  const header: Partial<RequestHeader> & { protocolVersion: ProtocolVersion } = { protocolVersion: r.version };
  const seen = new Set<number>();
  for (const c of headerParts) {
    r.once(seen, c, tagHex(c.tag));
    switch (c.tag) {
      case Tag.ProtocolVersion:
        break;
      case Tag.MaximumResponseSize:
        header.maximumResponseSize = r.typed(c, ItemType.Integer, 'Maximum Response Size');
        if (header.maximumResponseSize <= 0) r.fail('Maximum Response Size must be positive');
        break;
      case Tag.AsynchronousIndicator:
        header.asynchronousIndicator = r.typed(c, ItemType.Boolean, 'Asynchronous Indicator');
        break;
      case Tag.Authentication:
        header.authentication = parseAuthentication(r, c);
        break;
      case Tag.BatchErrorContinuationOption:
        header.batchErrorContinuationOption = r.typed(c, ItemType.Enumeration, 'Batch Error Continuation Option');
        break;
      case Tag.BatchOrderOption:
        header.batchOrderOption = r.typed(c, ItemType.Boolean, 'Batch Order Option');
        break;
      case Tag.TimeStamp:
        header.timeStamp = r.typed(c, ItemType.DateTime, 'Time Stamp');
        break;
      case Tag.BatchCount:
        header.batchCount = r.typed(c, ItemType.Integer, 'Batch Count');
        break;
      default:
        if (!IGNORED_REQUEST_HEADER_TAGS.has(c.tag) && !isExtension(c.tag)) r.fail(`unexpected ${tagHex(c.tag)} in Request Header`);
        // Attestation Type may repeat.
        if (c.tag === Tag.AttestationType) seen.delete(c.tag);
    }
  }
  if (header.batchCount === undefined) r.fail('Request Header has no Batch Count');
  if (header.batchCount < 1) r.fail('Batch Count must be at least 1');

  const items: RequestBatchItem[] = [];
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i];
    if (p.tag !== Tag.BatchItem) {
      if (isExtension(p.tag)) continue;
      r.fail(`unexpected ${tagHex(p.tag)} in Request Message`);
    }
    items.push(parseRequestItem(r, p));
  }
  if (items.length !== header.batchCount) r.fail(`Batch Count is ${header.batchCount} but the message has ${items.length} Batch Items`);
  return { header: header as RequestHeader, items };
}

function parseRequestItem(r: Reader, t: Ttlv): RequestBatchItem {
  const fields = r.structure(t, Tag.BatchItem, 'Batch Item');
  const item: Partial<RequestBatchItem> = {};
  const seen = new Set<number>();
  for (const f of fields) {
    r.once(seen, f, tagHex(f.tag));
    switch (f.tag) {
      case Tag.Operation:
        item.operation = r.typed(f, ItemType.Enumeration, 'Operation');
        break;
      case Tag.UniqueBatchItemID:
        item.uniqueBatchItemId = r.typed(f, ItemType.ByteString, 'Unique Batch Item ID');
        break;
      case Tag.RequestPayload:
        r.structure(f, Tag.RequestPayload, 'Request Payload');
        item.payload = f;
        break;
      case Tag.Ephemeral:
        r.typed(f, ItemType.Boolean, 'Ephemeral');
        break;
      case Tag.MessageExtension:
        r.structure(f, Tag.MessageExtension, 'Message Extension');
        break;
      default:
        if (!isExtension(f.tag)) r.fail(`unexpected ${tagHex(f.tag)} in Batch Item`);
    }
  }
  if (item.operation === undefined) r.fail('Batch Item has no Operation');
  return item as RequestBatchItem;
}

export function parseResponse(t: Ttlv): ResponseMessage {
  const r: Reader = new Reader();
  const parts = r.structure(t, Tag.ResponseMessage, 'Response Message');
  if (parts.length === 0) r.fail('Response Message is empty');
  const headerParts = r.structure(parts[0], Tag.ResponseHeader, 'Response Header');
  let timeStamp: bigint | undefined;
  let batchCount: number | undefined;
  const seen = new Set<number>();
  for (const c of headerParts) {
    r.once(seen, c, tagHex(c.tag));
    switch (c.tag) {
      case Tag.ProtocolVersion:
        r.version = r.protocolVersion(c);
        break;
      case Tag.TimeStamp:
        timeStamp = r.typed(c, ItemType.DateTime, 'Time Stamp');
        break;
      case Tag.BatchCount:
        batchCount = r.typed(c, ItemType.Integer, 'Batch Count');
        break;
      default:
        // Nonce, Server Hashed Password, Attestation Type, correlation values: not used by this client.
        if (c.tag === Tag.AttestationType) seen.delete(c.tag);
    }
  }
  if (!r.version) r.fail('Response Header has no Protocol Version');
  if (timeStamp === undefined) r.fail('Response Header has no Time Stamp');
  if (batchCount === undefined) r.fail('Response Header has no Batch Count');
  const items: ResponseBatchItem[] = [];
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i];
    if (p.tag !== Tag.BatchItem) {
      if (isExtension(p.tag)) continue;
      r.fail(`unexpected ${tagHex(p.tag)} in Response Message`);
    }
    items.push(parseResponseItem(r, p));
  }
  if (items.length !== batchCount) r.fail(`Batch Count is ${batchCount} but the message has ${items.length} Batch Items`);
  return { protocolVersion: r.version, timeStamp, items };
}

function parseResponseItem(r: Reader, t: Ttlv): ResponseBatchItem {
  const fields = r.structure(t, Tag.BatchItem, 'Batch Item');
  const item: Partial<ResponseBatchItem> = {};
  const seen = new Set<number>();
  for (const f of fields) {
    r.once(seen, f, tagHex(f.tag));
    switch (f.tag) {
      case Tag.Operation:
        item.operation = r.typed(f, ItemType.Enumeration, 'Operation');
        break;
      case Tag.UniqueBatchItemID:
        item.uniqueBatchItemId = r.typed(f, ItemType.ByteString, 'Unique Batch Item ID');
        break;
      case Tag.ResultStatus:
        item.resultStatus = r.typed(f, ItemType.Enumeration, 'Result Status');
        break;
      case Tag.ResultReason:
        item.resultReason = r.typed(f, ItemType.Enumeration, 'Result Reason');
        break;
      case Tag.ResultMessage:
        item.resultMessage = r.typed(f, ItemType.TextString, 'Result Message');
        break;
      case Tag.ResponsePayload:
        r.structure(f, Tag.ResponsePayload, 'Response Payload');
        item.payload = f;
        break;
      default:
      // Asynchronous Correlation Value, Message Extension, vendor extensions: not used by this client.
    }
  }
  if (item.resultStatus === undefined) r.fail('Batch Item has no Result Status');
  return item as ResponseBatchItem;
}

// ---------------------------------------------------------------------------------------------
// Builders

function versionItem(v: ProtocolVersion): Ttlv {
  return ttlv.struct(Tag.ProtocolVersion, [ttlv.int(Tag.ProtocolVersionMajor, v.major), ttlv.int(Tag.ProtocolVersionMinor, v.minor)]);
}

function authenticationItem(a: Authentication): Ttlv {
  if ('other' in a) return a.other;
  return ttlv.struct(Tag.Authentication, [
    ttlv.struct(Tag.Credential, [
      ttlv.enumeration(Tag.CredentialType, CredentialType.UsernameAndPassword),
      ttlv.struct(Tag.CredentialValue, [ttlv.text(Tag.Username, a.username), ttlv.text(Tag.Password, a.password)]),
    ]),
  ]);
}

export function buildRequest(m: RequestMessage): Ttlv {
  const h = m.header;
  const header: Ttlv[] = [versionItem(h.protocolVersion)];
  if (h.maximumResponseSize !== undefined) header.push(ttlv.int(Tag.MaximumResponseSize, h.maximumResponseSize));
  if (h.asynchronousIndicator !== undefined) header.push(ttlv.bool(Tag.AsynchronousIndicator, h.asynchronousIndicator));
  if (h.authentication !== undefined) header.push(authenticationItem(h.authentication));
  if (h.batchErrorContinuationOption !== undefined) header.push(ttlv.enumeration(Tag.BatchErrorContinuationOption, h.batchErrorContinuationOption));
  if (h.batchOrderOption !== undefined) header.push(ttlv.bool(Tag.BatchOrderOption, h.batchOrderOption));
  if (h.timeStamp !== undefined) header.push(ttlv.dateTime(Tag.TimeStamp, h.timeStamp));
  header.push(ttlv.int(Tag.BatchCount, h.batchCount));
  const out: Ttlv[] = [ttlv.struct(Tag.RequestHeader, header)];
  for (const it of m.items) {
    const fields: Ttlv[] = [ttlv.enumeration(Tag.Operation, it.operation)];
    if (it.uniqueBatchItemId !== undefined) fields.push(ttlv.bytes(Tag.UniqueBatchItemID, it.uniqueBatchItemId));
    if (it.payload !== undefined) fields.push(it.payload);
    out.push(ttlv.struct(Tag.BatchItem, fields));
  }
  return ttlv.struct(Tag.RequestMessage, out);
}

export function buildResponse(m: ResponseMessage): Ttlv {
  const header = ttlv.struct(Tag.ResponseHeader, [
    versionItem(m.protocolVersion),
    ttlv.dateTime(Tag.TimeStamp, m.timeStamp),
    ttlv.int(Tag.BatchCount, m.items.length),
  ]);
  const out: Ttlv[] = [header];
  for (const it of m.items) {
    const fields: Ttlv[] = [];
    if (it.operation !== undefined) fields.push(ttlv.enumeration(Tag.Operation, it.operation));
    if (it.uniqueBatchItemId !== undefined) fields.push(ttlv.bytes(Tag.UniqueBatchItemID, it.uniqueBatchItemId));
    fields.push(ttlv.enumeration(Tag.ResultStatus, it.resultStatus));
    if (it.resultReason !== undefined) fields.push(ttlv.enumeration(Tag.ResultReason, it.resultReason));
    if (it.resultMessage !== undefined) fields.push(ttlv.text(Tag.ResultMessage, it.resultMessage));
    if (it.payload !== undefined) fields.push(it.payload);
    out.push(ttlv.struct(Tag.BatchItem, fields));
  }
  return ttlv.struct(Tag.ResponseMessage, out);
}

/** Compares protocol versions: negative when a < b. */
export function compareVersions(a: ProtocolVersion, b: ProtocolVersion): number {
  return a.major - b.major || a.minor - b.minor;
}
