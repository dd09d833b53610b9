/**
 * Commit durability on SQLite (src/store/durability.ts): commits are counted by the store's driver,
 * `wait()` resolves only after an fsync that started after them, commits made while one fsync runs
 * share the next, reads' audit groups are not waited for unless asked, and a failed fsync fails the
 * waiters and turns the connection back to synchronous = FULL.
 */
import { fsync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { openStore, type Store } from '../src/store/db.js';
import { walDurability } from '../src/store/durability.js';
import { createAuditService } from '../src/audit/audit-service.js';
import { createAuditRepo, directAppender } from '../src/store/audit-repo.js';
import { PG_URL, STORES, dropPgSchema, noteSecret, startServer, startWithOkm } from './helpers.js';

const dirs: string[] = [];
const stores: Store[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'keysmith-durability-'));
  dirs.push(d);
  return d;
}
async function sqliteStore(): Promise<Store> {
  const s = await openStore({ url: `sqlite:${join(tempDir(), 'k.db')}` });
  stores.push(s);
  return s;
}
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('walDurability', () => {
  it('resolves nothing until a commit is counted, then only after an fsync that started after it', async () => {
    const wal = join(tempDir(), 'x-wal');
    writeFileSync(wal, 'frames');
    // The fsyncs, held until the test lets each one finish.
    const held: (() => void)[] = [];
    const d = walDurability(
      wal,
      () => {
        throw new Error('no failure expected');
      },
      (fd, done) => held.push(() => fsync(fd, done)),
    );
    const settled = (p: Promise<void> | undefined) => {
      const box = { done: false };
      void p?.then(() => (box.done = true));
      return box;
    };
    expect(d.wait()).toBeUndefined();
    expect(held).toHaveLength(0);
    d.committed();
    const first = d.wait();
    expect(first).toBeInstanceOf(Promise);
    expect(held).toHaveLength(1);
    const firstDone = settled(first);
    // A commit made while that fsync runs is not covered by it: it waits for the next one.
    d.committed();
    const second = d.wait();
    expect(second).not.toBe(first);
    // A third commit joins the second's fsync (group commit): the same promise, no third fsync.
    d.committed();
    expect(d.wait()).toBe(second);
    const secondDone = settled(second);
    await new Promise((r) => setTimeout(r, 20));
    expect(firstDone.done).toBe(false); // no answer before its fsync returns
    expect(held).toHaveLength(1); // one fsync at a time
    held.shift()!();
    await first;
    expect(secondDone.done).toBe(false);
    await new Promise((r) => setImmediate(r));
    expect(held).toHaveLength(1); // the second fsync started when the first returned
    held.shift()!();
    await second;
    expect(d.wait()).toBeUndefined();
    d.close();
  });

  it('fails every waiter when the fsync fails, reports it once, and stops waiting afterwards', async () => {
    const failures: unknown[] = [];
    const d = walDurability(join(tempDir(), 'missing-wal'), (e) => failures.push(e));
    d.committed();
    const w = d.wait();
    expect(w).toBeInstanceOf(Promise);
    await expect(w).rejects.toThrow(/ENOENT/);
    expect(failures).toHaveLength(1);
    // From now on SQLite syncs each commit itself (the store's onFailure switched it to FULL).
    d.committed();
    expect(d.wait()).toBeUndefined();
    d.close();
  });
});

describe('the SQLite store', () => {
  it('commits transactions that queue for the connection as one group, rolling back only the one that fails', async () => {
    const s = await sqliteStore();
    await s.durability.wait();
    const commits: string[] = [];
    const raw = s.sqlite!;
    // Eight transactions at once: each waits a turn inside, so the others queue behind it.
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) =>
        s.db.transaction().execute(async (tx) => {
          await tx.insertInto('meta').values({ key: `g${i}`, value: String(i) }).execute();
          await new Promise((r) => setImmediate(r));
          commits.push(raw.inTransaction ? 'open' : 'closed');
          if (i === 3) throw new Error('member 3 fails');
        }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
    expect(commits.every((c) => c === 'open')).toBe(true);
    // The group is still open (committed once this turn of the event loop is over); answers wait for it.
    expect(raw.inTransaction).toBe(true);
    const synced = s.durability.wait();
    expect(synced).toBeInstanceOf(Promise);
    await synced;
    expect(raw.inTransaction).toBe(false);
    const keys = (await s.db.selectFrom('meta').select('key').where('key', 'like', 'g%').orderBy('key').execute()).map((r) => r.key);
    expect(keys).toEqual(['g0', 'g1', 'g2', 'g4', 'g5', 'g6', 'g7']);
    await s.durability.wait();
    expect(s.durability.wait()).toBeUndefined();
  });


  it('runs under synchronous = NORMAL and counts writes and commits, not reads', async () => {
    const s = await sqliteStore();
    const mode = (await sql<{ synchronous: number }>`PRAGMA synchronous`.execute(s.db)).rows[0].synchronous;
    expect(mode).toBe(1); // NORMAL
    await s.durability.wait();
    expect(s.durability.wait()).toBeUndefined();

    await s.db.selectFrom('svms').selectAll().execute();
    expect(s.durability.wait()).toBeUndefined();

    // A write outside a transaction is a commit.
    await s.db.insertInto('meta').values({ key: 'a', value: '1' }).execute();
    const afterWrite = s.durability.wait();
    expect(afterWrite).toBeInstanceOf(Promise);
    await afterWrite;
    expect(s.durability.wait()).toBeUndefined();

    // A transaction with writes holds every answer until it commits and its fsync returns.
    let inside: Promise<void> | undefined;
    let settled = false;
    await s.db.transaction().execute(async (tx) => {
      await tx.insertInto('meta').values({ key: 'b', value: '2' }).execute();
      inside = s.durability.wait();
      expect(inside).toBeInstanceOf(Promise);
      void inside!.then(() => (settled = true));
      await new Promise((r) => setTimeout(r, 20));
      expect(settled).toBe(false);
    });
    await inside;
    expect(s.durability.wait()).toBeUndefined();

    // Commits made inside uncounted() (reads' audit events) are not waited for.
    await s.db.connection().execute((c) => s.durability.uncounted(() => c.transaction().execute((tx) => tx.insertInto('meta').values({ key: 'u', value: '1' }).execute())));
    expect(s.durability.wait()).toBeUndefined();

    // A rolled-back transaction leaves nothing behind (at most an fsync of an empty group).
    await expect(
      s.db.transaction().execute(async (tx) => {
        await tx.insertInto('meta').values({ key: 'c', value: '3' }).execute();
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    await s.durability.wait();
    expect(s.durability.wait()).toBeUndefined();
    expect(await s.db.selectFrom('meta').select('key').where('key', '=', 'c').execute()).toEqual([]);
  });

  it('leaves reads’ audit events unwaited by default, and waits for them with fsyncReads', async () => {
    const s = await sqliteStore();
    await s.durability.wait();
    const written = createAuditService({ db: s.db, repo: createAuditRepo(s.db, 'sqlite'), durability: s.durability });
    await written.record({ actor: 'test', action: 'key.unwrap', outcome: 'success', objectId: 'k1' });
    expect(s.durability.wait()).toBeUndefined();
    expect((await written.query({ objectId: 'k1', limit: 10 })).map((e) => e.action)).toEqual(['key.unwrap']);

    const synced = createAuditService({ db: s.db, repo: createAuditRepo(s.db, 'sqlite'), durability: s.durability, fsyncReads: true });
    await synced.record({ actor: 'test', action: 'key.unwrap', outcome: 'success', objectId: 'k2' });
    // Answered only once its fsync returned: nothing is left to wait for.
    expect(s.durability.wait()).toBeUndefined();
    expect((await synced.verify()).ok).toBe(true);
  });

  it('commits read events on the raw connection when it is free, and through Kysely while a transaction holds it', async () => {
    const s = await sqliteStore();
    const audit = createAuditService({ db: s.db, repo: createAuditRepo(s.db, 'sqlite'), direct: directAppender(s.sqlite!), durability: s.durability });
    await Promise.all([1, 2, 3].map((i) => audit.record({ actor: 'test', action: 'key.unwrap', outcome: 'success', objectId: `free${i}` })));
    // A transaction open across awaits: the group waits for it rather than joining it, and a state
    // change recorded inside it keeps its place in the chain.
    let inside: Promise<void> | undefined;
    await s.db.transaction().execute(async (tx) => {
      await audit.recordIn(tx, { actor: 'test', action: 'key.create', outcome: 'success', objectId: 'made' });
      inside = audit.record({ actor: 'test', action: 'key.unwrap', outcome: 'success', objectId: 'held' });
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, 5));
      expect(s.sqlite!.inTransaction).toBe(true);
    });
    await inside;
    const events = await audit.query({ limit: 100 });
    expect(events.map((e) => e.object_id)).toEqual(['free1', 'free2', 'free3', 'made', 'held']);
    expect(events.map((e) => Number(e.seq))).toEqual([1, 2, 3, 4, 5]);
    expect((await audit.verify()).ok).toBe(true);
  });

  it.runIf(STORES.includes('postgres'))('needs no waiting on PostgreSQL, where a commit is durable when it returns', async () => {
    const s = await openStore({ url: PG_URL, pgSchema: 'durability_t' });
    stores.push(s);
    try {
      await s.db.insertInto('meta').values({ key: 'a', value: '1' }).onConflict((oc) => oc.column('key').doNothing()).execute();
      expect(s.durability.wait()).toBeUndefined();
      expect(s.sqlite).toBeUndefined();
    } finally {
      await dropPgSchema('durability_t');
    }
  });
});

describe('a store that could not commit', () => {
  it('answers every request with ONTAP’s internal error from then on, never a success it could not keep', async () => {
    const s = await startServer();
    try {
      expect((await s.call('POST', '/api/svm/svms', { name: 'vs_before' })).status).toBe(201);
      // What the driver does when a group COMMIT fails after its transactions returned.
      s.app.services.store.durability.poison(new Error('disk I/O error'));
      const made = await s.call('POST', '/api/svm/svms', { name: 'vs_after' });
      expect(made.status).toBe(500);
      expect(made.body).toEqual({ error: { code: '5', message: 'Internal error.' } });
      const listed = await s.call('GET', '/api/svm/svms');
      expect(listed.status).toBe(500);
      expect(listed.body.error.code).toBe('5');
      // Element's clients get Element's envelope, with their request id.
      const rpc = await s.call('POST', '/json-rpc/12.5', { method: 'GetSoftwareEncryptionAtRestInfo', id: 7 });
      expect(rpc.status).toBe(200);
      expect(rpc.body).toEqual({ error: { code: 500, name: 'xInternalError', message: 'Internal error.' }, id: 7 });
    } finally {
      await s.close().catch(() => undefined);
    }
  });
});

describe('the job runner on a store that could not commit', () => {
  it('takes no step after the store is poisoned (its cursor and cached KEKs may describe rolled-back rows)', async () => {
    const s = await startWithOkm();
    try {
      for (let i = 0; i < 3; i++) {
        const k = await s.call('POST', '/api/v1/svms/cluster1/data-keys', {});
        expect(k.status).toBe(201);
        noteSecret(k.body.plaintext);
      }
      s.app.services.store.durability.poison(new Error('disk I/O error'));
      // The submit commits (nothing else failed) but its answer cannot be trusted: 500.
      expect((await s.call('POST', `/api/security/key-managers/${s.kmUuid}/rekey-internal?return_timeout=0`)).status).toBe(500);
      s.app.services.jobs.kick();
      await new Promise((r) => setTimeout(r, 500));
      const jobs = await s.app.services.store.db.selectFrom('jobs').select(['type', 'state', 'cursor']).execute();
      const rekey = jobs.filter((j) => j.type === 'rekey-internal');
      expect(rekey).toHaveLength(1);
      expect(rekey[0].cursor).toBeNull(); // not one step taken
      expect(rekey[0].state).not.toBe('success');
    } finally {
      await s.close().catch(() => undefined);
    }
  });
});
