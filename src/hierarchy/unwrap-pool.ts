/**
 * Worker threads for the AES-GCM part of batch unwraps. Opening a key costs a few microseconds of
 * node:crypto, which in a batch of thousands is most of the request; done on other cores, the
 * event loop keeps parsing, checking states and answering while the keys are opened.
 *
 * Like the rewrap pool: the workers run the compiled unwrap-worker.js from dist/ (next to this
 * file, else the tree's dist/src/hierarchy/ when tests run the sources); when no worker can be
 * started, or one fails, the same code runs in the calling thread, so an unwrap never depends on
 * the pool. Idle workers end after a few seconds and never keep the process alive (thread-pool.ts).
 *
 * Invariants:
 * - The pool opens only what the caller gives it, in the caller's order; a key that does not open
 *   comes back as null.
 * - KEK copies are zeroed once posted (the worker zeroes its own after the chunk).
 */
import { availableParallelism } from 'node:os';
import { compiledWorker, createThreadPool } from '../crypto/thread-pool.js';
import { unwrapChunk, type UnwrapChunk, type UnwrapChunkResult } from './unwrap-worker.js';

export interface UnwrapItem {
  dekId: string;
  kekVersion: number;
  blob: Buffer;
}

/** Below this many keys per worker a thread hop costs more than it saves. */
const MIN_CHUNK = 128;
/** This thread's share of a batch, relative to one worker's (see open()). */
const MAIN_SHARE = 0.8;

type Answer = ({ ok: true } & UnwrapChunkResult) | { ok: false; reason: string };

/** Chunks and keys worker threads have answered, for the whole process: lets a test prove a batch ran on them. */
export const unwrapPoolStats = { workerChunks: 0, workerKeys: 0 };

export function createUnwrapPool(opts: { threads?: number } = {}) {
  // The event loop's own core is busy with the rest of the request: one worker per other core.
  const size = Math.max(0, opts.threads ?? Math.min(availableParallelism() - 1, 4));
  const pool = createThreadPool<UnwrapChunk, Answer>({
    name: 'unwrap',
    file: compiledWorker(import.meta.url, 'unwrap-worker.js', 'hierarchy'),
    size,
    workerData: { keysmithUnwrap: true },
  });

  async function run(chunk: UnwrapChunk): Promise<UnwrapChunkResult> {
    // The packed arrays are the chunk's own: moved to the worker, not copied (the KEK copies are copied, then zeroed by the caller).
    const a = await pool.send(chunk, [chunk.blobs.buffer as ArrayBuffer, chunk.offsets.buffer as ArrayBuffer, chunk.ids.buffer as ArrayBuffer, chunk.idOffsets.buffer as ArrayBuffer, chunk.versions.buffer as ArrayBuffer]);
    if (!a.ok) throw new Error(`unwrap worker: ${a.reason}`);
    unwrapPoolStats.workerChunks += 1;
    unwrapPoolStats.workerKeys += a.failed.length;
    return a;
  }

  function pack(svm: string, keks: Map<number, Buffer>, items: UnwrapItem[], from: number, to: number): UnwrapChunk {
    const n = to - from;
    const offsets = new Uint32Array(n + 1);
    const idOffsets = new Uint32Array(n + 1);
    for (let i = 0; i < n; i++) {
      offsets[i + 1] = offsets[i] + items[from + i].blob.length;
      idOffsets[i + 1] = idOffsets[i] + items[from + i].dekId.length;
    }
    const blobs = new Uint8Array(offsets[n]);
    const ids = Buffer.allocUnsafeSlow(idOffsets[n]);
    const versions = new Int32Array(n);
    const used = new Set<number>();
    for (let i = 0; i < n; i++) {
      const it = items[from + i];
      blobs.set(it.blob, offsets[i]);
      ids.write(it.dekId, idOffsets[i], 'latin1');
      versions[i] = it.kekVersion;
      used.add(it.kekVersion);
    }
    const copies: [number, Uint8Array][] = [];
    for (const v of used) {
      const k = keks.get(v);
      if (k) copies.push([v, new Uint8Array(k)]);
    }
    return { svm, keks: copies, ids, idOffsets, versions, blobs, offsets };
  }

  function unpack(r: UnwrapChunkResult, out: (Buffer | null)[], at: number): void {
    const plain = Buffer.from(r.plain.buffer, r.plain.byteOffset, r.plain.byteLength);
    for (let i = 0; i < r.failed.length; i++) out[at + i] = r.failed[i] ? null : plain.subarray(r.offsets[i], r.offsets[i + 1]);
  }

  return {
    /** Opens every item under its KEK version (from `keks`); null where one does not open. Same order as `items`. */
    async open(svm: string, keks: Map<number, Buffer>, items: UnwrapItem[]): Promise<(Buffer | null)[]> {
      const n = items.length;
      const out: (Buffer | null)[] = new Array(n);
      const parts = pool.usable() ? Math.min(size, Math.floor(n / MIN_CHUNK)) : 0;
      if (parts === 0) {
        unpack(unwrapChunk(pack(svm, keks, items, 0, n)), out, 0);
        return out;
      }
      // This thread opens a share too while the workers run (it would otherwise wait for them),
      // a little less than theirs since it also parses, checks and answers the request.
      const mine = Math.floor((n * MAIN_SHARE) / (parts + 1));
      const theirs = n - mine;
      const bounds: [number, number][] = [];
      for (let i = 0; i < parts; i++) bounds.push([Math.floor((i * theirs) / parts), Math.floor(((i + 1) * theirs) / parts)]);
      const chunks = bounds.map(([a, b]) => pack(svm, keks, items, a, b));
      return pool.hold(async () => {
        let sent: Promise<UnwrapChunkResult>[] | null = null;
        if (pool.ensure(parts) > 0) {
          sent = chunks.map((c) => run(c));
          // postMessage has copied the keys: the chunks' own copies go now.
          for (const c of chunks) for (const [, k] of c.keks) k.fill(0);
        }
        if (mine > 0) unpack(unwrapChunk(pack(svm, keks, items, theirs, n)), out, theirs);
        let results: UnwrapChunkResult[];
        if (!sent) results = chunks.map(unwrapChunk);
        else {
          try {
            results = await Promise.all(sent);
          } catch {
            // A worker died or never started (a missing or stale build): redo its part here, whole.
            pool.failed();
            results = bounds.map(([a, b]) => unwrapChunk(pack(svm, keks, items, a, b)));
          }
        }
        for (let p = 0; p < parts; p++) unpack(results[p], out, bounds[p][0]);
        return out;
      });
    },

    /** Ends the workers now (tests, shutdown); the pool starts new ones if used again. */
    close: () => pool.close(),
  };
}
export type UnwrapPool = ReturnType<typeof createUnwrapPool>;
