/** The store on both databases: migrations, blobs, constraints, the audit head. */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { openStore, type Store } from '../src/store/db.js';
import { createSvmRepo } from '../src/store/svm-repo.js';
import { createDekRepo } from '../src/store/dek-repo.js';
import { createAuditRepo } from '../src/store/audit-repo.js';
import { STORES, PG_URL } from './helpers.js';

function target(kind: 'sqlite' | 'postgres') {
  return kind === 'postgres'
    ? { url: PG_URL, pgSchema: `ks_store_${randomBytes(5).toString('hex')}` }
    : { url: `sqlite:${join(mkdtempSync(join(tmpdir(), 'ks-store-')), 'k.db')}` };
}

describe.each(STORES)('store on %s', (kind) => {
  const opened: Store[] = [];
  afterAll(async () => {
    for (const s of opened) await s.close();
  });

  it('migrates an empty database and migrating again changes nothing', async () => {
    const t = target(kind);
    const a = await openStore(t);
    opened.push(a);
    const svms = createSvmRepo(a.db);
    await svms.insert({ uuid: 'u1', name: 'vs1', scope: 'svm', created_at: 'now' });
    const b = await openStore(t);
    opened.push(b);
    expect((await createSvmRepo(b.db).list()).map((r) => r.name)).toEqual(['vs1']);
    const migrations = await b.db.selectFrom('kysely_migration' as any).selectAll().execute();
    expect(migrations.map((m: any) => m.name)).toEqual(['0001-init', '0002-jobs', '0003-kmip', '0004-master-key', '0005-key-stores', '0006-external-kmip', '0007-audit-rowid', '0008-deks-fillfactor', '0009-kmip-root-check', '0010-kmip-config-revision']);
  });

  it('keeps every audit event and its chain across 0007 (on SQLite, seq becomes the rowid)', async () => {
    const t = target(kind);
    // A database as the previous release left it: migrated up to 0006, with a chain of events.
    const { Kysely, Migrator, SqliteDialect, PostgresDialect } = await import('kysely');
    const { migrationProvider } = await import('../src/store/migrations/index.js');
    const pg = (await import('pg')).default;
    const SQLite = (await import('better-sqlite3')).default;
    if (t.pgSchema) {
      const c = new pg.Client({ connectionString: t.url });
      await c.connect();
      await c.query(`CREATE SCHEMA ${t.pgSchema}`);
      await c.end();
    }
    const old = new Kysely<any>({
      dialect: t.pgSchema ? new PostgresDialect({ pool: new pg.Pool({ connectionString: t.url, options: `-c search_path=${t.pgSchema}` }) }) : new SqliteDialect({ database: new SQLite(t.url.slice('sqlite:'.length)) }),
    });
    const migrator = new Migrator({ db: old, provider: migrationProvider(kind), ...(t.pgSchema ? { migrationTableSchema: t.pgSchema } : {}) });
    expect((await migrator.migrateTo('0006-external-kmip')).error).toBeUndefined();
    const { createAuditService } = await import('../src/audit/audit-service.js');
    const before = createAuditService({ db: old, repo: createAuditRepo(old, kind) });
    for (let i = 0; i < 5; i++) await Promise.all([0, 1, 2].map((j) => before.record({ actor: 'test', action: 'key.unwrap', outcome: 'success', objectId: `k${i}.${j}` })));
    const rowsBefore = await old.selectFrom('audit_events').selectAll().orderBy('seq').execute();
    await old.destroy();

    const s = await openStore(t);
    opened.push(s);
    const after = createAuditService({ db: s.db, repo: createAuditRepo(s.db, kind) });
    const rowsAfter = await s.db.selectFrom('audit_events').selectAll().orderBy('seq').execute();
    expect(rowsAfter.map((r) => ({ ...r, seq: Number(r.seq) }))).toEqual(rowsBefore.map((r) => ({ ...r, seq: Number(r.seq) })));
    expect(await after.verify()).toMatchObject({ ok: true, events: 15 });
    await after.record({ actor: 'test', action: 'key.unwrap', outcome: 'success', objectId: 'next' });
    expect(await after.verify()).toMatchObject({ ok: true, events: 16 });
    if (kind === 'sqlite') {
      const { sql } = await import('kysely');
      // seq is the rowid, and the table has no other index: one B-tree per event.
      const indexes = (await sql<{ name: string; origin: string }>`PRAGMA index_list(audit_events)`.execute(s.db)).rows;
      expect(indexes).toEqual([]);
    }
  });

  it('round-trips binary blobs byte for byte and keeps NULL material', async () => {
    const s = await openStore(target(kind));
    opened.push(s);
    await createSvmRepo(s.db).insert({ uuid: 'u1', name: 'vs1', scope: 'svm', created_at: 'now' });
    const deks = createDekRepo(s.db);
    const blob = randomBytes(97);
    blob[0] = 0;
    blob[96] = 0;
    const base = { svm_uuid: 'u1', name: null, algorithm: 'AES', length: 256, state: 'active', kek_version: 1, created_at: 't', updated_at: 't', activated_at: null, deactivated_at: null, compromised_at: null, destroyed_at: null };
    await deks.insert({ id: 'dek_a', wrapped: blob, ...base });
    await deks.insert({ id: 'dek_b', wrapped: null, ...base });
    const a = await deks.find('u1', 'dek_a');
    expect(Buffer.isBuffer(a!.wrapped)).toBe(true);
    expect(a!.wrapped!.equals(blob)).toBe(true);
    expect((await deks.find('u1', 'dek_b'))!.wrapped).toBeNull();
    expect(await deks.find('other-tenant', 'dek_a')).toBeUndefined();
    expect(await deks.countForSvm('u1')).toBe(2);
  });

  it('refuses a duplicate SVM name and a DEK for an unknown SVM', async () => {
    const s = await openStore(target(kind));
    opened.push(s);
    const svms = createSvmRepo(s.db);
    await svms.insert({ uuid: 'u1', name: 'vs1', scope: 'svm', created_at: 'now' });
    await expect(svms.insert({ uuid: 'u2', name: 'vs1', scope: 'svm', created_at: 'now' })).rejects.toThrow();
    const base = { name: null, algorithm: 'AES', length: 256, state: 'active', kek_version: 1, wrapped: null, created_at: 't', updated_at: 't', activated_at: null, deactivated_at: null, compromised_at: null, destroyed_at: null };
    await expect(createDekRepo(s.db).insert({ id: 'dek_x', svm_uuid: 'nope', ...base })).rejects.toThrow();
  });

  it('serializes audit appenders on the head row and rolls back with the transaction', async () => {
    const s = await openStore(target(kind));
    opened.push(s);
    const repo = createAuditRepo(s.db, s.dialect);
    expect(await repo.head()).toEqual({ seq: 0, hash: '0'.repeat(64) });
    await expect(
      s.db.transaction().execute(async (tx) => {
        await repo.setHead(1, 'f'.repeat(64), tx);
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    expect(await repo.head()).toEqual({ seq: 0, hash: '0'.repeat(64) });
  });
});
