/** Opens the store: SQLite (embedded default) or PostgreSQL, migrated to the latest schema. */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Kysely, Migrator, PostgresDialect } from 'kysely';
import SQLite from 'better-sqlite3';
import pg from 'pg';
import type { DB, Db } from './schema.js';
import { migrationProvider } from './migrations/index.js';
import { startCheckpointer, type Checkpointer } from './sqlite-checkpointer.js';
import { SYNCHRONOUS_COMMITS, walDurability, type Durability } from './durability.js';
import { groupCommitSqliteDialect } from './sqlite-driver.js';

export interface StoreOptions {
  /** `sqlite:/path/file.db` or a path, or `postgres://…` / `postgresql://…`. */
  url: string;
  /** PostgreSQL schema to use (created when missing); tests isolate themselves with it. */
  pgSchema?: string;
  poolSize?: number;
}

export interface Store {
  db: Db;
  dialect: 'sqlite' | 'postgres';
  /** When commits are on disk (see durability.ts): every answer waits for `durability.wait()`. */
  durability: Durability;
  /**
   * SQLite's connection itself, for synchronous fast paths that run only while no transaction is
   * open on it (and so cannot interleave with Kysely's); absent on PostgreSQL.
   */
  sqlite?: SQLite.Database;
  close(): Promise<void>;
}

// bigint columns come back as numbers: sequence numbers stay far below 2^53.
pg.types.setTypeParser(20, (v: string) => Number(v));

export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//.test(url);
}

export async function openStore(opts: StoreOptions): Promise<Store> {
  let db: Db;
  let dialect: 'sqlite' | 'postgres';
  let checkpointer: Checkpointer | undefined;
  let durability: Durability = SYNCHRONOUS_COMMITS;
  let raw: SQLite.Database | undefined;
  if (isPostgresUrl(opts.url)) {
    dialect = 'postgres';
    const schema = opts.pgSchema;
    if (schema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) throw new Error('invalid PostgreSQL schema name');
    if (schema) {
      const c = new pg.Client({ connectionString: opts.url });
      await c.connect();
      try {
        await c.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
      } finally {
        await c.end();
      }
    }
    const pool = new pg.Pool({
      connectionString: opts.url,
      max: opts.poolSize ?? 10,
      ...(schema ? { options: `-c search_path=${schema}` } : {}),
    });
    db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
  } else {
    dialect = 'sqlite';
    const file = opts.url.replace(/^sqlite:/, '');
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
    const sqlite = new SQLite(file);
    raw = sqlite;
    const wal = sqlite.pragma('journal_mode = WAL', { simple: true }) === 'wal' && file !== ':memory:';
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('busy_timeout = 5000');
    if (wal) {
      // NORMAL: a commit is written to the WAL, and made durable off the event loop before it is
      // answered (durability.ts); on an fsync failure, back to FULL, where SQLite syncs each commit.
      sqlite.pragma('synchronous = NORMAL');
      durability = walDurability(`${file}-wal`, () => {
        if (sqlite.open) sqlite.pragma('synchronous = FULL');
      });
    } else {
      // FULL: a committed key survives power loss, not only a process crash.
      sqlite.pragma('synchronous = FULL');
    }
    // Checkpoints on a worker thread instead of inside the commits of the event loop (see sqlite-checkpointer.ts).
    if (file !== ':memory:') checkpointer = startCheckpointer(sqlite, file);
    // Transactions that queue for the one connection commit as a group (sqlite-driver.ts).
    db = new Kysely<DB>({ dialect: groupCommitSqliteDialect(sqlite, durability) });
  }
  // Kysely looks for its own tables in every schema unless told which: name ours.
  const migrator = new Migrator({
    db,
    provider: migrationProvider(dialect),
    ...(dialect === 'postgres' ? { migrationTableSchema: opts.pgSchema ?? 'public' } : {}),
  });
  let { error } = await migrator.migrateToLatest();
  // Kysely's PostgreSQL introspector lists tables across every schema; a schema another client drops
  // during that listing fails it with invalid_schema_name (3F000) although ours is fine: try again.
  for (let attempt = 0; attempt < 3 && dialect === 'postgres' && (error as { code?: string } | undefined)?.code === '3F000'; attempt++) {
    ({ error } = await migrator.migrateToLatest());
  }
  if (error) {
    await checkpointer?.stop();
    await db.destroy();
    throw error instanceof Error ? error : new Error(String(error));
  }
  return {
    db,
    dialect,
    durability,
    sqlite: raw,
    close: async () => {
      await durability.wait()?.catch(() => {});
      durability.close();
      await checkpointer?.stop();
      await db.destroy();
    },
  };
}
