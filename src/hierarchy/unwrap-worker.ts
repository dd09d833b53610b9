/**
 * The CPU part of a batch unwrap: open each wrapped DEK under the KEK version it names, with
 * aead.ts (node:crypto AES-256-GCM) and the data-key service's AAD binding (dekContext). Runs in a
 * worker thread (unwrap-pool.ts starts this file, as compiled to dist/) or in the calling thread.
 *
 * Keys travel packed both ways (the blobs of a chunk concatenated with offsets; the plaintexts
 * likewise), so a thousand keys cross the thread boundary as one copy and one transfer.
 *
 * Invariants:
 * - The caller has already decided which keys may be unwrapped (state, tenant); this file only
 *   opens what it is given, and a key that does not open comes back as "failed", never as bytes.
 * - The KEK copies given to a chunk are zeroed when the chunk is done; plaintexts exist only in
 *   the packed answer, which is transferred to the caller (this thread keeps no copy).
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { open } from '../crypto/aead.js';
import { dekContext } from './dek-service.js';

export interface UnwrapChunk {
  svm: string;
  /** KEK material by version: every version a key of the chunk names. */
  keks: [number, Uint8Array][];
  /** The keys' ids, latin1, concatenated; id i is ids[idOffsets[i] .. idOffsets[i+1]) (one buffer crosses threads faster than many strings). */
  ids: Uint8Array;
  idOffsets: Uint32Array;
  versions: Int32Array;
  /** The wrapped blobs, concatenated; blob i is blobs[offsets[i] .. offsets[i+1]). */
  blobs: Uint8Array;
  offsets: Uint32Array;
}

/** Plaintext i is plain[offsets[i] .. offsets[i+1]); failed[i] is 1 when key i did not open. */
export interface UnwrapChunkResult {
  plain: Uint8Array;
  offsets: Uint32Array;
  failed: Uint8Array;
}

const asBuffer = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

export function unwrapChunk(c: UnwrapChunk): UnwrapChunkResult {
  const keks = new Map<number, Buffer>(c.keks.map(([v, k]) => [v, asBuffer(k)]));
  const blobs = asBuffer(c.blobs);
  const ids = asBuffer(c.ids);
  const n = c.versions.length;
  const out: (Buffer | null)[] = new Array(n);
  const offsets = new Uint32Array(n + 1);
  const failed = new Uint8Array(n);
  try {
    for (let i = 0; i < n; i++) {
      const key = keks.get(c.versions[i]);
      const id = ids.toString('latin1', c.idOffsets[i], c.idOffsets[i + 1]);
      const plain = key ? open(key, dekContext(c.svm, id, c.versions[i]), blobs.subarray(c.offsets[i], c.offsets[i + 1])) : null;
      out[i] = plain;
      if (!plain) failed[i] = 1;
      offsets[i + 1] = offsets[i] + (plain ? plain.length : 0);
    }
  } finally {
    for (const k of keks.values()) k.fill(0);
  }
  const packed = new Uint8Array(offsets[n]);
  for (let i = 0; i < n; i++) {
    const p = out[i];
    if (p) {
      packed.set(p, offsets[i]);
      p.fill(0);
    }
  }
  return { plain: packed, offsets, failed };
}

// As a worker: one chunk per message, answered in order; the answer is transferred, not copied.
if (!isMainThread && parentPort && (workerData as { keysmithUnwrap?: boolean } | null)?.keysmithUnwrap) {
  const port = parentPort;
  port.on('message', (c: UnwrapChunk) => {
    try {
      const r = unwrapChunk(c);
      port.postMessage({ ok: true, ...r }, [r.plain.buffer as ArrayBuffer, r.offsets.buffer as ArrayBuffer, r.failed.buffer as ArrayBuffer]);
    } catch (e) {
      port.postMessage({ ok: false, reason: (e as Error).message });
    }
  });
}
