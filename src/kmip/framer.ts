/**
 * Collects whole TTLV messages from a byte stream (TLS gives arbitrary chunk boundaries).
 *
 * Framing only: a message is the 8-byte item header plus the length it declares. Decoding the
 * message is decodeTtlv's job. Invariants:
 * - A declared length is checked against `maxMessageBytes` as soon as the 8 header bytes are
 *   here, before any buffer for the body is allocated, so a peer cannot make us reserve memory
 *   by announcing a huge message. Bytes held never exceed one maximum message plus one chunk.
 * - After a KmipFrameError the stream cannot be resynchronised (the next header is unknown): the
 *   framer stays failed and the connection must be closed.
 */
import { HEADER_BYTES } from './ttlv.js';

/** The stream cannot be framed: announced message too large, or not a Structure. Close the connection. */
export class KmipFrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KmipFrameError';
  }
}

const STRUCTURE = 0x01;

export interface TtlvFramerOptions {
  /** Largest whole message accepted, header included. */
  maxMessageBytes: number;
}

export class TtlvFramer {
  private readonly max: number;
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Total size (header + body) of the message being collected, once its header is known. */
  private need = -1;
  private failed: KmipFrameError | undefined;

  constructor(opts: TtlvFramerOptions) {
    if (!Number.isInteger(opts.maxMessageBytes) || opts.maxMessageBytes < HEADER_BYTES) {
      throw new RangeError('maxMessageBytes must be an integer of at least 8');
    }
    this.max = opts.maxMessageBytes;
  }

  /** Bytes received but not yet returned as part of a whole message. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Feeds bytes; returns the whole messages they complete, in order. */
  push(chunk: Buffer): Buffer[] {
    if (this.failed) throw this.failed;
    const out: Buffer[] = [];
    if (chunk.length === 0) return out;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.need < 0) {
        if (this.buffered < HEADER_BYTES) break;
        const header = this.peek(HEADER_BYTES);
        if (header[3] !== STRUCTURE) {
          this.fail(`message is not a Structure (item type 0x${header[3].toString(16).padStart(2, '0')})`);
        }
        const declared = header.readUInt32BE(4);
        if (declared > this.max - HEADER_BYTES) {
          this.fail(`message declares ${declared} bytes; the maximum is ${this.max - HEADER_BYTES}`);
        }
        this.need = HEADER_BYTES + declared;
      }
      if (this.buffered < this.need) break;
      out.push(this.take(this.need));
      this.need = -1;
    }
    return out;
  }

  private fail(message: string): never {
    this.failed = new KmipFrameError(message);
    this.chunks = [];
    this.buffered = 0;
    throw this.failed;
  }

  /** The first `n` buffered bytes, without consuming them (n <= buffered). */
  private peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) return first;
    return Buffer.concat(this.chunks, n);
  }

  /** Removes and returns the first `n` buffered bytes (n <= buffered). */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    let msg: Buffer;
    if (first.length >= n) {
      // Common case: the whole message sits in one chunk; hand out a view, no copy.
      msg = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      msg = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0];
        const want = n - off;
        if (c.length <= want) {
          c.copy(msg, off);
          off += c.length;
          this.chunks.shift();
        } else {
          c.copy(msg, off, 0, want);
          off += want;
          this.chunks[0] = c.subarray(want);
        }
      }
    }
    this.buffered -= n;
    return msg;
  }
}
