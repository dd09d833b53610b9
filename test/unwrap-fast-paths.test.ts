/**
 * The fast paths of unwrap, over real HTTP on SQLite and PostgreSQL: a batch large enough to be
 * opened on the unwrap pool's worker threads (its counters show the workers answered part of it; a
 * small batch and single unwraps leave them alone) gives the same answers as the single-key path (and
 * refuses destroyed, tampered and malformed entries one by one); the key-state cache never lets a
 * key unwrap once its destroy or deactivation call has returned; and concurrent unwraps, committed
 * as group commits with their fsync off the event loop, are each audited before their answer and
 * leave a chain that verifies.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { STORES, noteSecret, startWithOkm, type TestServer } from './helpers.js';
import { unwrapPoolStats } from '../src/hierarchy/unwrap-pool.js';

// The pool's workers run the compiled worker (they cannot load TypeScript), one per core beside the event loop's.
const BUILT = join(resolve(dirname(fileURLToPath(import.meta.url)), '..'), 'dist', 'src', 'hierarchy', 'unwrap-worker.js');

describe.each(STORES)('unwrap fast paths on %s', (store) => {
  let s: TestServer;
  const svm = 'vs_fast';
  const keys: { key_id: string; plaintext: string; wrapped: string }[] = [];

  beforeAll(async () => {
    s = await startWithOkm({ store });
    expect((await s.call('POST', '/api/svm/svms', { name: svm })).status).toBeLessThan(300);
    for (let i = 0; i < 300; i += 20) {
      const made = await Promise.all(Array.from({ length: 20 }, () => s.call('POST', `/api/v1/svms/${svm}/data-keys`, {})));
      for (const m of made) {
        expect(m.status).toBe(201);
        noteSecret(m.body.plaintext);
        keys.push(m.body);
      }
    }
  });
  afterAll(async () => {
    await s?.close();
  });

  const unwrap = (wrapped: string) => s.call('POST', `/api/v1/svms/${svm}/unwrap`, { wrapped });
  const batch = (wrapped: string[]) => s.call('POST', `/api/v1/svms/${svm}/unwrap-batch`, { wrapped });
  const setState = (id: string, action: string) => s.call('POST', `/api/v1/svms/${svm}/keys/${id}/state`, { action });

  it('a batch opened on worker threads answers exactly like single unwraps, entry by entry', async () => {
    expect(existsSync(BUILT), 'build first (npx tsc -p .): the unwrap workers run dist/').toBe(true);
    expect(availableParallelism(), 'the pool needs a core beside the event loop').toBeGreaterThanOrEqual(2);
    const [doomed, tampered, ...good] = keys.slice(0, 280);
    expect((await setState(doomed.key_id, 'deactivate')).status).toBe(200);
    expect((await setState(doomed.key_id, 'destroy')).status).toBe(200);
    const raw = Buffer.from(tampered.wrapped, 'base64');
    raw[raw.length - 1] ^= 1;
    const wrapped = [doomed.wrapped, raw.toString('base64'), ...good.map((k) => k.wrapped), 'AAAA', good[0].wrapped];
    const before = { ...unwrapPoolStats };
    const r = await batch(wrapped);
    expect(r.status).toBe(200);
    // Proof the pool ran: worker threads answered a chunk of this batch (the 280 keys that may be
    // opened; the rest stays in the request's thread), not the calling thread alone.
    expect(unwrapPoolStats.workerChunks - before.workerChunks).toBeGreaterThanOrEqual(1);
    expect(unwrapPoolStats.workerKeys - before.workerKeys).toBeGreaterThanOrEqual(128);
    expect(unwrapPoolStats.workerKeys - before.workerKeys).toBeLessThan(280);
    expect(r.body.num_records).toBe(wrapped.length);
    const rec = r.body.records;
    expect(rec[0]).toMatchObject({ key_id: doomed.key_id, error: { code: '65600010' } });
    expect(rec[1]).toMatchObject({ key_id: tampered.key_id, error: { code: '65600012' } });
    good.forEach((k, i) => expect(rec[2 + i]).toEqual({ key_id: k.key_id, plaintext: k.plaintext }));
    expect(rec[2 + good.length]).toMatchObject({ key_id: null, error: { code: '65600012' } });
    expect(rec[3 + good.length]).toEqual({ key_id: good[0].key_id, plaintext: good[0].plaintext });
    expect(JSON.stringify(r.body)).not.toContain(doomed.plaintext);
    expect(JSON.stringify(r.body)).not.toContain(tampered.plaintext);
    // The single-key path agrees, and never touches the pool; nor does a batch too small to be worth a thread hop.
    const idle = { ...unwrapPoolStats };
    expect((await unwrap(good[5].wrapped)).body.plaintext).toBe(good[5].plaintext);
    expect((await unwrap(doomed.wrapped)).status).toBe(409);
    const small = await batch(good.slice(0, 100).map((k) => k.wrapped));
    expect(small.body.records.map((x: { plaintext?: string }) => x.plaintext)).toEqual(good.slice(0, 100).map((k) => k.plaintext));
    expect(unwrapPoolStats).toEqual(idle);
  });

  it('a key stops unwrapping the moment its deactivation-then-destroy or compromise returns, however warm the cache', async () => {
    const [a, b] = keys.slice(285, 287);
    // Warm the state cache through both paths, with concurrent unwraps in flight around the change.
    for (let i = 0; i < 3; i++) {
      expect((await unwrap(a.wrapped)).body.plaintext).toBe(a.plaintext);
      expect((await batch([a.wrapped, b.wrapped])).body.records[1].plaintext).toBe(b.plaintext);
    }
    const inflight = Array.from({ length: 20 }, () => unwrap(a.wrapped));
    expect((await setState(a.key_id, 'compromise')).status).toBe(200);
    await Promise.all(inflight);
    const after = await unwrap(a.wrapped);
    expect(after.status).toBe(409);
    expect(after.body.error.code).toBe('65600010');
    expect((await batch([a.wrapped])).body.records[0].error.code).toBe('65600010');

    expect((await setState(b.key_id, 'deactivate')).status).toBe(200);
    // Deactivated keys still unwrap (existing data), destroyed ones never.
    expect((await unwrap(b.wrapped)).body.plaintext).toBe(b.plaintext);
    expect((await setState(b.key_id, 'destroy')).status).toBe(200);
    expect((await unwrap(b.wrapped)).status).toBe(409);
    expect((await batch([b.wrapped, b.wrapped])).body.records.map((x: { error?: { code: string } }) => x.error?.code)).toEqual(['65600010', '65600010']);
  });

  it('50 concurrent unwraps: each one audited before its answer, and the chain verifies', async () => {
    const some = keys.slice(200, 250);
    const db = s.app.services.store.db;
    const answers = await Promise.all(
      some.map(async (k) => {
        const r = await unwrap(k.wrapped);
        // Read right after this answer, before anything else is awaited: the event is there.
        const ev = await db.selectFrom('audit_events').select(['object_id', 'outcome']).where('object_id', '=', k.key_id).where('action', '=', 'key.unwrap').execute();
        return { r, ev };
      }),
    );
    for (const [i, { r, ev }] of answers.entries()) {
      expect(r.body.plaintext).toBe(some[i].plaintext);
      expect(ev).toEqual([{ object_id: some[i].key_id, outcome: 'success' }]);
    }
    const ids = new Set((await db.selectFrom('audit_events').select('object_id').where('action', '=', 'key.unwrap').execute()).map((e) => e.object_id));
    for (const k of some) expect(ids.has(k.key_id)).toBe(true);
    const v = await s.call('GET', '/api/v1/audit/verify');
    expect(v.status).toBe(200);
    expect(v.body.ok).toBe(true);
  });
});
