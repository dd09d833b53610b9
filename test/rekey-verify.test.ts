/**
 * The finish phase of rekey-internal walks the tenant in slices (VERIFY_BATCHES batches' worth of
 * keys per step) instead of one count over every key, and a key found still under an old KEK
 * version sends the job back to re-wrapping. The job's handler is driven step by step here, on the
 * real store of a running server, so a stray key can be put back between two steps.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rekeyInternalJob, VERIFY_BATCHES } from '../src/jobs/rekey-job.js';
import { STORES, dataKeys, expectAllUnwrap, startWithOkm, type TestServer } from './helpers.js';

describe.each(STORES)('rekey-internal finish phase on %s', (store) => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startWithOkm({ store });
  });
  afterAll(() => s?.close());

  it('checks the tenant slice by slice and re-wraps a key found under an old version before it decommissions', async () => {
    const svc = s.app.services;
    const admin = await svc.svms.admin();
    const keys = await dataKeys(s, admin.name, 25);
    const db = svc.store.db as any;
    const before = new Map<string, { kek_version: number; wrapped: Buffer }>();
    for (const r of await db.selectFrom('deks').select(['id', 'kek_version', 'wrapped']).where('svm_uuid', '=', admin.uuid).execute()) before.set(r.id, r);

    const batch = 2;
    const slice = batch * VERIFY_BATCHES; // 20 keys per finish step: 25 keys take two
    const handler = rekeyInternalJob({ keyring: svc.keyring, keks: svc.repos.keks, deks: svc.repos.deks, keyManagers: svc.repos.keyManagers, batch });
    const job = { uuid: 'verify-test-job', svm_uuid: admin.uuid } as any;
    let cursor: any = null;
    const phases: string[] = [];
    let result: any;
    async function step(): Promise<boolean> {
      await handler.prepare?.(job, cursor);
      const out = await svc.store.db.transaction().execute((tx) => handler.step(job, cursor, tx as any));
      cursor = out.cursor;
      if (out.done) result = out.result;
      else phases.push(`${cursor?.phase}${cursor?.phase === 'finish' && cursor.after ? '+' : ''}`);
      return out.done;
    }

    while (cursor?.phase !== 'finish') expect(await step()).toBe(false);
    const to: number = cursor.to;
    // A key behind where the first slice ends goes back under its old version (its original blob).
    const ids = [...before.keys()].sort();
    const stray = ids[slice + 2];
    const old = before.get(stray)!;
    expect(old.kek_version).toBeLessThan(to);
    await db.updateTable('deks').set({ kek_version: old.kek_version, wrapped: old.wrapped }).where('id', '=', stray).execute();

    expect(await step()).toBe(false); // slice 1: clean, the walk goes on
    expect(cursor).toMatchObject({ phase: 'finish', after: ids[slice - 1] });
    expect(await step()).toBe(false); // slice 2: the stray key, back to re-wrapping from the start
    expect(cursor).toMatchObject({ phase: 'rewrap', to, after: '' });
    for (let i = 0; i < 100 && !(await step()); i++);
    expect(result).toMatchObject({ new_version: to });
    // Each of the two walks stopped once after its first slice (25 keys, 20 per slice).
    expect(phases.filter((p) => p === 'finish+').length).toBe(2);

    const rows = await db.selectFrom('deks').select(['id', 'kek_version']).where('svm_uuid', '=', admin.uuid).execute();
    expect(rows.length).toBe(before.size);
    expect(rows.every((r: { kek_version: number }) => r.kek_version === to)).toBe(true);
    const keks = await db.selectFrom('keks').select(['version', 'state']).where('svm_uuid', '=', admin.uuid).execute();
    expect(keks.filter((k: { version: number; state: string }) => k.version < to).every((k: { state: string }) => k.state === 'decommissioned')).toBe(true);
    await expectAllUnwrap(s, admin.name, keys);
  });
});
