/**
 * Worker threads for the CPU part of a rekey (open + seal of every DEK). One thread is
 * crypto-bound at a few tens of thousands of keys per second; the pool spreads each batch over
 * one worker per core while the main thread reads, writes and commits batches and serves requests.
 *
 * The workers run the compiled rewrap-worker.js from dist/ (a worker thread cannot load
 * TypeScript): next to this file when it runs from dist/, else the tree's dist/src/crypto/ (tests
 * run the sources). When no worker can be started, the pool re-wraps in the calling thread with
 * the same code, so a rekey never depends on the pool.
 *
 * Invariants:
 * - A batch either comes back whole, every key re-wrapped, or is rejected: a key that does not
 *   open, or a worker that dies, fails the whole batch and the caller writes nothing of it.
 * - Workers are threads of this process: a crash or kill -9 takes them with it, and what they
 *   hold (plaintext keys, KEK copies) lives only in memory and is zeroed after each chunk.
 * - Idle workers end after a few seconds and keep the process alive only while they owe an answer (thread-pool.ts).
 */
import { availableParallelism } from 'node:os';
import { compiledWorker, createThreadPool } from './thread-pool.js';
import { rewrapChunk, type RewrapChunk, type RewrapChunkResult } from './rewrap-worker.js';

export interface RewrapInput {
  svm: string;
  /** KEK material by version for every version the rows name (the pool copies it; the caller keeps its own). */
  sources: Map<number, Buffer>;
  target: { id: string; version: number; key: Buffer };
  rows: { id: string; kek_version: number; wrapped: Buffer }[];
}

export interface RewrapOutput {
  /** Same order as the input rows; each wrapped blob is a view into one shared buffer. */
  items: { id: string; fromVersion: number; wrapped: Buffer }[];
}

/** Fewer rows than this per worker are not worth a thread hop. */
const MIN_CHUNK = 64;
const YOUNG_MB = 8;

export function createRewrapPool(opts: { threads?: number } = {}) {
  const size = Math.max(1, opts.threads ?? Math.min(availableParallelism(), 4));
  const pool = createThreadPool<RewrapChunk, RewrapChunkResult>({
    name: 'rewrap',
    file: compiledWorker(import.meta.url, 'rewrap-worker.js', 'crypto'),
    size,
    workerData: { keysmithRewrap: true },
    // A small young generation: a worker's garbage is short-lived (a chunk's buffers), and V8 would
    // otherwise grow each worker's semi-spaces over a long rekey, so memory would grow with its length.
    resourceLimits: { maxYoungGenerationSizeMb: YOUNG_MB },
  });

  function pack(input: RewrapInput, from: number, to: number): RewrapChunk {
    const rows = input.rows.slice(from, to);
    const offsets = new Uint32Array(rows.length + 1);
    for (let i = 0; i < rows.length; i++) offsets[i + 1] = offsets[i] + rows[i].wrapped.length;
    const blobs = new Uint8Array(offsets[rows.length]);
    const versions = new Int32Array(rows.length);
    const used = new Set<number>();
    for (let i = 0; i < rows.length; i++) {
      blobs.set(rows[i].wrapped, offsets[i]);
      versions[i] = rows[i].kek_version;
      used.add(rows[i].kek_version);
    }
    // Copies: the chunk zeroes the keys it is given once done, and the caller's stay in its keyring.
    const sources: [number, Uint8Array][] = [];
    for (const v of used) {
      const k = input.sources.get(v);
      if (k) sources.push([v, new Uint8Array(k)]);
    }
    return { svm: input.svm, sources, target: { id: input.target.id, version: input.target.version, key: new Uint8Array(input.target.key) }, ids: rows.map((r) => r.id), versions, blobs, offsets };
  }

  function zeroKeys(c: RewrapChunk) {
    for (const [, k] of c.sources) k.fill(0);
    c.target.key.fill(0);
  }

  return {
    threads: size,
    usesWorkers: () => pool.usable(),

    /** Re-wraps every row under the target; rejects (writing nothing) if any key does not open. */
    async rewrap(input: RewrapInput): Promise<RewrapOutput> {
      const n = input.rows.length;
      if (n === 0) return { items: [] };
      const parts = pool.usable() ? Math.max(1, Math.min(size, Math.floor(n / MIN_CHUNK))) : 1;
      const bounds: [number, number][] = [];
      for (let i = 0; i < parts; i++) bounds.push([Math.floor((i * n) / parts), Math.floor(((i + 1) * n) / parts)]);
      const chunks = bounds.map(([a, b]) => pack(input, a, b));
      const results: RewrapChunkResult[] = !pool.usable()
        ? chunks.map((c) => rewrapChunk(c))
        : await pool.hold(async () => {
            try {
              if (pool.ensure(parts) === 0) return chunks.map((c) => rewrapChunk(c)); // no threads here: the same work in this thread
              try {
                return await Promise.all(chunks.map((c) => pool.send(c)));
              } catch {
                // A worker died (or never started: a missing or stale build). The batch is redone
                // here, whole; workers that never answered once are not tried again.
                pool.failed();
                return chunks.map((c) => rewrapChunk(c));
              }
            } finally {
              // postMessage has copied the keys; the originals of the chunks go now.
              for (const c of chunks) zeroKeys(c);
            }
          });
      const items: RewrapOutput['items'] = new Array(n);
      for (let p = 0; p < parts; p++) {
        const r = results[p];
        const [a] = bounds[p];
        if (!r.ok) {
          const row = r.index >= 0 ? input.rows[a + r.index] : undefined;
          throw new Error(row ? `key ${row.id} ${r.reason}` : `rewrap failed: ${r.reason}`);
        }
        const buf = Buffer.from(r.blobs.buffer, r.blobs.byteOffset, r.blobs.byteLength);
        for (let i = 0; i + a < bounds[p][1]; i++) {
          const row = input.rows[a + i];
          items[a + i] = { id: row.id, fromVersion: row.kek_version, wrapped: buf.subarray(r.offsets[i], r.offsets[i + 1]) };
        }
      }
      return { items };
    },

    /** Ends the workers now (tests, shutdown); the pool starts new ones if used again. */
    close: () => pool.close(),
  };
}
export type RewrapPool = ReturnType<typeof createRewrapPool>;
