/**
 * The rekey's worker pool (src/crypto/rewrap-pool.ts) on its own: a batch comes back whole, in
 * order, each key sealed under the target version with the data-key service's AAD and opening to
 * its original bytes, from the worker threads (the compiled dist/ build) as from the calling
 * thread; and a key that does not open fails the whole batch, naming the key, with nothing returned.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { open, readHeader, seal } from '../src/crypto/aead.js';
import { createRewrapPool } from '../src/crypto/rewrap-pool.js';
import { dekContext } from '../src/hierarchy/dek-service.js';
import { newId } from '../src/ids.js';

const BUILT = join(resolve(dirname(fileURLToPath(import.meta.url)), '..'), 'dist', 'src', 'crypto', 'rewrap-worker.js');
const SVM = '00000000-0000-4000-8000-0000000000aa';

function keys(n: number, versions: Map<number, Buffer>) {
  const vs = [...versions.keys()];
  return Array.from({ length: n }, (_, i) => {
    const id = newId('dek');
    const v = vs[i % vs.length];
    const plain = randomBytes(32);
    return { id, kek_version: v, wrapped: seal(versions.get(v)!, `kek_v${v}`, v, dekContext(SVM, id, v), plain), plain };
  });
}

describe('rewrap pool', () => {
  const pools: ReturnType<typeof createRewrapPool>[] = [];
  afterAll(async () => {
    for (const p of pools) await p.close();
  });

  it.each([
    ['worker threads', 2],
    ['one worker', 1],
  ])('%s: every key re-wrapped under the target, in order, opening to its original bytes', async (_name, threads) => {
    expect(existsSync(BUILT), 'build first (npx tsc -p .): workers run dist/').toBe(true);
    const pool = createRewrapPool({ threads });
    pools.push(pool);
    expect(pool.usesWorkers()).toBe(true);
    const sources = new Map([
      [1, randomBytes(32)],
      [2, randomBytes(32)],
    ]);
    const target = { id: 'kek_v3', version: 3, key: randomBytes(32) };
    const targetCopy = Buffer.from(target.key);
    const rows = keys(1500, sources);
    const { items } = await pool.rewrap({ svm: SVM, sources, target, rows });
    expect(items.map((i) => i.id)).toEqual(rows.map((r) => r.id));
    expect(items.map((i) => i.fromVersion)).toEqual(rows.map((r) => r.kek_version));
    for (const [i, it] of items.entries()) {
      expect(readHeader(it.wrapped)).toMatchObject({ wrapId: 'kek_v3', wrapVersion: 3 });
      expect(open(target.key, dekContext(SVM, it.id, 3), it.wrapped)?.equals(rows[i].plain), it.id).toBe(true);
      // Bound to its version: the same blob does not open as version 2.
      expect(open(target.key, dekContext(SVM, it.id, 2), it.wrapped)).toBeNull();
    }
    // The caller's keys are its own: the pool zeroes only its copies.
    expect(target.key.equals(targetCopy)).toBe(true);
  });

  it('a key that does not open fails the whole batch and names it', async () => {
    const pool = createRewrapPool({ threads: 2 });
    pools.push(pool);
    const sources = new Map([[1, randomBytes(32)]]);
    const rows = keys(400, sources);
    const bad = rows[321];
    bad.wrapped = Buffer.from(bad.wrapped);
    bad.wrapped[bad.wrapped.length - 1] ^= 1;
    await expect(pool.rewrap({ svm: SVM, sources, target: { id: 'kek_v2', version: 2, key: randomBytes(32) }, rows })).rejects.toThrow(bad.id);
    // A key under a version it was not given is refused the same way.
    const other = keys(100, new Map([[7, randomBytes(32)]]));
    await expect(pool.rewrap({ svm: SVM, sources, target: { id: 'kek_v2', version: 2, key: randomBytes(32) }, rows: [...rows.slice(0, 10), ...other] })).rejects.toThrow(other[0].id);
  });
});
