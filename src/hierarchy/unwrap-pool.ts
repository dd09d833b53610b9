/**
 * Worker threads for the AES-GCM part of batch unwraps. Opening a key costs a few microseconds of
 * node:crypto, which in a batch of thousands is most of the request; done on other cores, the
 * event loop keeps parsing, checking states and answering while the keys are opened.
 *
 * Like the rewrap pool: the workers run the compiled unwrap-worker.js from dist/ (next to this
 * file, else the tree's dist/src/hierarchy/ when tests run the sources); when no worker can be
 * started, or one fails, the same code runs in the calling thread, so an unwrap never depends on
 * the pool. Idle workers end after IDLE_MS and never keep the process alive.
 *
 * Invariants:
 * - The pool opens only what the caller gives it, in the caller's order; a key that does not open
 *   comes back as null.
 * - KEK copies are zeroed once posted (the worker zeroes its own after the chunk).
 */
import { Worker } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { unwrapChunk, type UnwrapChunk, type UnwrapChunkResult } from './unwrap-worker.js';

export interface UnwrapItem {
  dekId: string;
  kekVersion: number;
  blob: Buffer;
}

/** Below this many keys per worker a thread hop costs more than it saves. */
const MIN_CHUNK = 128;
const IDLE_MS = 5_000;
/** This thread's share of a batch, relative to one worker's (see open()). */
const MAIN_SHARE = 0.8;

function workerFile(): string | null {
  const here = dirname(fileURLToPath(import.meta.url));
  const sibling = join(here, 'unwrap-worker.js');
  if (existsSync(sibling)) return sibling;
  const built = resolve(here, '..', '..', 'dist', 'src', 'hierarchy', 'unwrap-worker.js');
  return existsSync(built) ? built : null;
}

type Answer = ({ ok: true } & UnwrapChunkResult) | { ok: false; reason: string };

interface Slot {
  worker: Worker;
  /** Answers come in the order the chunks were sent. */
  pending: { resolve(r: Answer): void; reject(e: Error): void }[];
}

export function createUnwrapPool(opts: { threads?: number } = {}) {
  // The event loop's own core is busy with the rest of the request: one worker per other core.
  const size = Math.max(0, opts.threads ?? Math.min(availableParallelism() - 1, 4));
  const file = workerFile();
  let slots: Slot[] = [];
  let next = 0;
  let idle: NodeJS.Timeout | null = null;
  let inflight = 0;
  let disabled = file === null || size === 0;
  let answered = false;

  function spawn(): Slot {
    const worker = new Worker(file!, { workerData: { keysmithUnwrap: true } });
    const slot: Slot = { worker, pending: [] };
    const fail = (e: Error) => {
      slots = slots.filter((s) => s !== slot);
      for (const p of slot.pending.splice(0)) p.reject(e);
    };
    worker.on('message', (r: Answer) => {
      answered = true;
      slot.pending.shift()?.resolve(r);
      if (slot.pending.length === 0) worker.unref();
    });
    worker.on('error', (e) => fail(new Error(`unwrap worker failed: ${e.message}`)));
    worker.on('exit', (code) => fail(new Error(`unwrap worker exited (code ${code})`)));
    worker.unref();
    return slot;
  }

  function run(slot: Slot, chunk: UnwrapChunk): Promise<UnwrapChunkResult> {
    return new Promise<Answer>((res, rej) => {
      slot.pending.push({ resolve: res, reject: rej });
      slot.worker.ref(); // a pending answer keeps the process alive
      // The packed arrays are the chunk's own: moved to the worker, not copied (the KEK copies are copied, then zeroed here).
      slot.worker.postMessage(chunk, [chunk.blobs.buffer as ArrayBuffer, chunk.offsets.buffer as ArrayBuffer, chunk.ids.buffer as ArrayBuffer, chunk.idOffsets.buffer as ArrayBuffer, chunk.versions.buffer as ArrayBuffer]);
    }).then((a) => {
      if (!a.ok) throw new Error(`unwrap worker: ${a.reason}`);
      return a;
    });
  }

  function armIdle() {
    if (idle) clearTimeout(idle);
    idle = setTimeout(() => {
      idle = null;
      if (inflight > 0) return armIdle();
      const gone = slots;
      slots = [];
      for (const s of gone) void s.worker.terminate();
    }, IDLE_MS);
    idle.unref();
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
      const parts = disabled ? 0 : Math.min(size, Math.floor(n / MIN_CHUNK));
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
      inflight += 1;
      try {
        while (slots.length < parts && !disabled) {
          try {
            slots.push(spawn());
          } catch {
            disabled = true;
          }
        }
        let sent: Promise<UnwrapChunkResult>[] | null = null;
        if (slots.length > 0) {
          sent = chunks.map((c) => run(slots[next++ % slots.length], c));
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
            if (!answered) disabled = true;
            results = bounds.map(([a, b]) => unwrapChunk(pack(svm, keks, items, a, b)));
          }
        }
        for (let p = 0; p < parts; p++) unpack(results[p], out, bounds[p][0]);
        return out;
      } finally {
        inflight -= 1;
        armIdle();
      }
    },

    /** Ends the workers now (tests, shutdown); the pool starts new ones if used again. */
    async close(): Promise<void> {
      if (idle) clearTimeout(idle);
      idle = null;
      const gone = slots;
      slots = [];
      await Promise.all(gone.map((s) => s.worker.terminate()));
    },
  };
}
export type UnwrapPool = ReturnType<typeof createUnwrapPool>;
