/**
 * The CPU part of a rekey: open each wrapped DEK under the KEK version it names and seal it again
 * under the target version, with aead.ts (node:crypto AES-256-GCM) and the same AAD binding as
 * the data-key service (dekContext). Runs in a worker thread (rewrap-pool.ts starts this file, as
 * compiled to dist/) or, when no worker can be started, in the calling thread.
 *
 * Rows travel packed: the blobs of a chunk concatenated in one buffer with offsets, so a thousand
 * keys cross the thread boundary as one copy (or one transfer) instead of a thousand small ones.
 *
 * Invariants:
 * - A key that does not open is reported by index and nothing of the chunk is returned: the caller
 *   must never write a half-done chunk, nor lose a key.
 * - Plaintext keys and the KEKs given to a chunk are zeroed as soon as the chunk is done.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { open, seal } from './aead.js';
import { dekContext } from '../hierarchy/dek-service.js';

export interface RewrapChunk {
  svm: string;
  /** KEK material by version: every version a row of the chunk names. */
  sources: [number, Uint8Array][];
  target: { id: string; version: number; key: Uint8Array };
  ids: string[];
  versions: Int32Array;
  /** The wrapped blobs, concatenated; blob i is blobs[offsets[i] .. offsets[i+1]). */
  blobs: Uint8Array;
  offsets: Uint32Array;
}

export type RewrapChunkResult = { ok: true; blobs: Uint8Array; offsets: Uint32Array } | { ok: false; index: number; reason: string };

const asBuffer = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

export function rewrapChunk(c: RewrapChunk): RewrapChunkResult {
  const sources = new Map<number, Buffer>(c.sources.map(([v, k]) => [v, asBuffer(k)]));
  const target = asBuffer(c.target.key);
  const blobs = asBuffer(c.blobs);
  const n = c.ids.length;
  const out: Buffer[] = new Array(n);
  try {
    for (let i = 0; i < n; i++) {
      const from = c.versions[i];
      const key = sources.get(from);
      if (!key) return { ok: false, index: i, reason: `no material for KEK version ${from}` };
      const plain = open(key, dekContext(c.svm, c.ids[i], from), blobs.subarray(c.offsets[i], c.offsets[i + 1]));
      if (!plain) return { ok: false, index: i, reason: `does not open under KEK version ${from}` };
      out[i] = seal(target, c.target.id, c.target.version, dekContext(c.svm, c.ids[i], c.target.version), plain);
      plain.fill(0);
    }
  } finally {
    for (const k of sources.values()) k.fill(0);
    target.fill(0);
  }
  const offsets = new Uint32Array(n + 1);
  for (let i = 0; i < n; i++) offsets[i + 1] = offsets[i] + out[i].length;
  const packed = new Uint8Array(offsets[n]);
  for (let i = 0; i < n; i++) packed.set(out[i], offsets[i]);
  return { ok: true, blobs: packed, offsets };
}

// As a worker: one chunk per message, answered in order; the packed result is transferred, not copied.
if (!isMainThread && parentPort && (workerData as { keysmithRewrap?: boolean } | null)?.keysmithRewrap) {
  const port = parentPort;
  port.on('message', (c: RewrapChunk) => {
    let r: RewrapChunkResult;
    try {
      r = rewrapChunk(c);
    } catch (e) {
      r = { ok: false, index: -1, reason: (e as Error).message };
    }
    if (r.ok) port.postMessage(r, [r.blobs.buffer as ArrayBuffer, r.offsets.buffer as ArrayBuffer]);
    else port.postMessage(r);
  });
}
