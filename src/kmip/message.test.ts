/**
 * Request/response message units. Expected bytes come from the independent builder.
 */
import { describe, expect, it } from 'vitest';
import { BatchErrorContinuationOption, CredentialType, Operation, ResultReason, ResultStatus } from './enums.js';
import { buildRequest, buildResponse, KmipMessageError, parseRequest, parseResponse, type RequestMessage } from './message.js';
import { Tag } from './tags.js';
import { bytes, T, type Bytes } from './testing/test-buffers.js';
import { decodeTtlv, encodeTtlv, KmipDecodeError, ItemType } from './ttlv.js';

const version = (major: number, minor: number): Bytes => T.struct(Tag.ProtocolVersion, T.int(Tag.ProtocolVersionMajor, major), T.int(Tag.ProtocolVersionMinor, minor));

function fullRequestBytes(batchCount = 2): Bytes {
  return T.struct(
    Tag.RequestMessage,
    T.struct(
      Tag.RequestHeader,
      version(1, 2),
      T.int(Tag.MaximumResponseSize, 280000),
      T.bool(Tag.AsynchronousIndicator, false),
      T.struct(
        Tag.Authentication,
        T.struct(
          Tag.Credential,
          T.enumeration(Tag.CredentialType, 1),
          T.struct(Tag.CredentialValue, T.text(Tag.Username, 'ontap'), T.text(Tag.Password, 'pw-not-logged')),
        ),
      ),
      T.enumeration(Tag.BatchErrorContinuationOption, 2),
      T.bool(Tag.BatchOrderOption, true),
      T.dateTime(Tag.TimeStamp, 1_700_000_000),
      T.int(Tag.BatchCount, batchCount),
    ),
    T.struct(Tag.BatchItem, T.enumeration(Tag.Operation, 0x1e), T.bytes(Tag.UniqueBatchItemID, [0x51, 0x4c, 0x4b, 0x43, 0, 0, 0, 1]), T.struct(Tag.RequestPayload)),
    T.struct(
      Tag.BatchItem,
      T.enumeration(Tag.Operation, 0x0a),
      T.bytes(Tag.UniqueBatchItemID, [0x51, 0x4c, 0x4b, 0x43, 0, 0, 0, 2]),
      T.struct(Tag.RequestPayload, T.text(Tag.UniqueIdentifier, 'key-1')),
    ),
  );
}

describe('request messages', () => {
  it('parses every modelled header field and both batch items', () => {
    const m = parseRequest(decodeTtlv(bytes(fullRequestBytes())));
    expect(m.header).toEqual({
      protocolVersion: { major: 1, minor: 2 },
      maximumResponseSize: 280000,
      asynchronousIndicator: false,
      authentication: { username: 'ontap', password: 'pw-not-logged' },
      batchErrorContinuationOption: BatchErrorContinuationOption.Stop,
      batchOrderOption: true,
      timeStamp: 1_700_000_000n,
      batchCount: 2,
    });
    expect(m.items.map((i) => i.operation)).toEqual([Operation.DiscoverVersions, Operation.Get]);
    expect(m.items[0].uniqueBatchItemId).toEqual(Buffer.from('QLKC\0\0\0\x01', 'latin1'));
    expect(m.items[1].payload?.tag).toBe(Tag.RequestPayload);
  });

  it('buildRequest writes the same bytes back', () => {
    const b = bytes(fullRequestBytes());
    expect(encodeTtlv(buildRequest(parseRequest(decodeTtlv(b)))).toString('hex')).toBe(b.toString('hex'));
  });

  it('refuses a Batch Count that does not match the items', () => {
    for (const n of [1, 3]) {
      expect(() => parseRequest(decodeTtlv(bytes(fullRequestBytes(n))))).toThrow(/Batch Count/);
    }
    expect(() => parseRequest(decodeTtlv(bytes(fullRequestBytes(0))))).toThrow(KmipDecodeError);
  });

  it('carries the protocol version in errors after the header was read', () => {
    try {
      parseRequest(decodeTtlv(bytes(fullRequestBytes(5))));
      throw new Error('parsed');
    } catch (e) {
      expect(e).toBeInstanceOf(KmipMessageError);
      expect((e as KmipMessageError).protocolVersion).toEqual({ major: 1, minor: 2 });
    }
  });

  const header = (...fields: Bytes[]): Bytes => T.struct(Tag.RequestHeader, version(1, 4), ...fields);
  const item = (...fields: Bytes[]): Bytes => T.struct(Tag.BatchItem, ...fields);
  const msg = (...parts: Bytes[]): Buffer => bytes(T.struct(Tag.RequestMessage, ...parts));
  const ok = item(T.enumeration(Tag.Operation, 0x18), T.struct(Tag.RequestPayload));

  it('accepts a minimal request and header fields it does not model', () => {
    const m = parseRequest(
      decodeTtlv(msg(header(T.text(Tag.ClientCorrelationValue, 'c'), T.enumeration(Tag.AttestationType, 1), T.enumeration(Tag.AttestationType, 2), T.int(Tag.BatchCount, 1)), ok)),
    );
    expect(m.header).toEqual({ protocolVersion: { major: 1, minor: 4 }, batchCount: 1 });
    expect(m.items).toEqual([{ operation: 0x18, payload: { tag: Tag.RequestPayload, type: ItemType.Structure, value: [] } }]);
  });

  it('maps other credentials to `other`', () => {
    const device = T.struct(Tag.Authentication, T.struct(Tag.Credential, T.enumeration(Tag.CredentialType, CredentialType.Device), T.struct(Tag.CredentialValue, T.text(Tag.DeviceSerialNumber, 'x'))));
    const noPassword = T.struct(Tag.Authentication, T.struct(Tag.Credential, T.enumeration(Tag.CredentialType, 1), T.struct(Tag.CredentialValue, T.text(Tag.Username, 'u'))));
    for (const auth of [device, noPassword]) {
      const m = parseRequest(decodeTtlv(msg(header(auth, T.int(Tag.BatchCount, 1)), ok)));
      expect(m.header.authentication).toHaveProperty('other');
    }
  });

  const bad: Array<[string, Buffer]> = [
    ['wrong outer tag', bytes(T.struct(Tag.ResponseMessage, header(T.int(Tag.BatchCount, 1)), ok))],
    ['empty message', msg()],
    ['no header', msg(ok)],
    ['no protocol version', msg(T.struct(Tag.RequestHeader, T.int(Tag.BatchCount, 1)), ok)],
    ['no batch count', msg(header(), ok)],
    ['batch count of wrong type', msg(header(T.long(Tag.BatchCount, 1)), ok)],
    ['duplicate batch count', msg(header(T.int(Tag.BatchCount, 1), T.int(Tag.BatchCount, 1)), ok)],
    ['protocol version missing minor', msg(T.struct(Tag.RequestHeader, T.struct(Tag.ProtocolVersion, T.int(Tag.ProtocolVersionMajor, 1)), T.int(Tag.BatchCount, 1)), ok)],
    ['negative maximum response size', msg(header(T.int(Tag.MaximumResponseSize, -1), T.int(Tag.BatchCount, 1)), ok)],
    ['unknown header field', msg(header(T.int(0x420001, 1), T.int(Tag.BatchCount, 1)), ok)],
    ['batch item without operation', msg(header(T.int(Tag.BatchCount, 1)), item(T.struct(Tag.RequestPayload)))],
    ['operation of wrong type', msg(header(T.int(Tag.BatchCount, 1)), item(T.int(Tag.Operation, 1)))],
    ['payload that is not a structure', msg(header(T.int(Tag.BatchCount, 1)), item(T.enumeration(Tag.Operation, 1), T.text(Tag.RequestPayload, 'x')))],
    ['batch item id of wrong type', msg(header(T.int(Tag.BatchCount, 1)), item(T.enumeration(Tag.Operation, 1), T.text(Tag.UniqueBatchItemID, 'x')))],
    ['unexpected item in message', msg(header(T.int(Tag.BatchCount, 1)), ok, T.int(Tag.Operation, 1))],
    ['username of wrong type', msg(header(T.struct(Tag.Authentication, T.struct(Tag.Credential, T.enumeration(Tag.CredentialType, 1), T.struct(Tag.CredentialValue, T.bytes(Tag.Username, [1]), T.text(Tag.Password, 'p')))), T.int(Tag.BatchCount, 1)), ok)],
  ];
  for (const [name, b] of bad) {
    it(`refuses: ${name}`, () => {
      expect(() => parseRequest(decodeTtlv(b))).toThrow(KmipDecodeError);
    });
  }

  it('buildRequest lays out a header the way the builder does', () => {
    const m: RequestMessage = {
      header: { protocolVersion: { major: 2, minor: 0 }, authentication: { username: 'u', password: 'p' }, batchCount: 1 },
      items: [{ operation: Operation.Query, payload: { tag: Tag.RequestPayload, type: ItemType.Structure, value: [] } }],
    };
    const expected = T.struct(
      Tag.RequestMessage,
      T.struct(
        Tag.RequestHeader,
        version(2, 0),
        T.struct(Tag.Authentication, T.struct(Tag.Credential, T.enumeration(Tag.CredentialType, 1), T.struct(Tag.CredentialValue, T.text(Tag.Username, 'u'), T.text(Tag.Password, 'p')))),
        T.int(Tag.BatchCount, 1),
      ),
      T.struct(Tag.BatchItem, T.enumeration(Tag.Operation, Operation.Query), T.struct(Tag.RequestPayload)),
    );
    expect(encodeTtlv(buildRequest(m)).toString('hex')).toBe(bytes(expected).toString('hex'));
  });
});

describe('response messages', () => {
  const responseBytes = (batchCount = 2): Bytes =>
    T.struct(
      Tag.ResponseMessage,
      T.struct(Tag.ResponseHeader, version(1, 2), T.dateTime(Tag.TimeStamp, 1_700_000_001), T.int(Tag.BatchCount, batchCount)),
      T.struct(
        Tag.BatchItem,
        T.enumeration(Tag.Operation, Operation.Get),
        T.bytes(Tag.UniqueBatchItemID, [1]),
        T.enumeration(Tag.ResultStatus, ResultStatus.Success),
        T.struct(Tag.ResponsePayload, T.text(Tag.UniqueIdentifier, '1')),
      ),
      T.struct(
        Tag.BatchItem,
        T.enumeration(Tag.Operation, Operation.Get),
        T.bytes(Tag.UniqueBatchItemID, [2]),
        T.enumeration(Tag.ResultStatus, ResultStatus.OperationFailed),
        T.enumeration(Tag.ResultReason, ResultReason.ItemNotFound),
        T.text(Tag.ResultMessage, 'Not found'),
      ),
    );

  it('parses and rebuilds byte-exactly', () => {
    const b = bytes(responseBytes());
    const m = parseResponse(decodeTtlv(b));
    expect(m.protocolVersion).toEqual({ major: 1, minor: 2 });
    expect(m.timeStamp).toBe(1_700_000_001n);
    expect(m.items[1]).toEqual({
      operation: Operation.Get,
      uniqueBatchItemId: Buffer.from([2]),
      resultStatus: ResultStatus.OperationFailed,
      resultReason: ResultReason.ItemNotFound,
      resultMessage: 'Not found',
    });
    expect(encodeTtlv(buildResponse(m)).toString('hex')).toBe(b.toString('hex'));
  });

  it('refuses a Batch Count that does not match, and a missing Result Status', () => {
    expect(() => parseResponse(decodeTtlv(bytes(responseBytes(1))))).toThrow(/Batch Count/);
    const noStatus = T.struct(
      Tag.ResponseMessage,
      T.struct(Tag.ResponseHeader, version(1, 0), T.dateTime(Tag.TimeStamp, 1), T.int(Tag.BatchCount, 1)),
      T.struct(Tag.BatchItem, T.enumeration(Tag.Operation, 1)),
    );
    expect(() => parseResponse(decodeTtlv(bytes(noStatus)))).toThrow(/Result Status/);
    const noTime = T.struct(Tag.ResponseMessage, T.struct(Tag.ResponseHeader, version(1, 0), T.int(Tag.BatchCount, 0)));
    expect(() => parseResponse(decodeTtlv(bytes(noTime)))).toThrow(/Time Stamp/);
  });
});
