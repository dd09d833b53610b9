/**
 * Keysmith's SQLite dialect for Kysely: one better-sqlite3 connection, prepared statements kept,
 * commits counted for durability.ts, and transactions that queue for the connection committed as a
 * group.
 *
 * Group commit: every transaction runs as a SAVEPOINT inside one outer transaction. When it ends
 * (RELEASE, or ROLLBACK TO on failure: only its own changes are undone) the outer transaction stays
 * open: the next transaction joins it, and it is COMMITted once the event loop's turn is over (or at
 * the MAX_GROUP-th transaction). Concurrent creates on eight connections then write the pages they
 * share (a table's last leaf, its indexes, the audit head) to the WAL once per group, not once each,
 * which was most of a KMIP Create's cost.
 *
 * Invariants:
 * - Nothing that a group holds is answered before the group commits and is on disk: a write made
 *   while commits are counted marks the group dirty, durability.wait() does not resolve while a dirty
 *   group is open, and the COMMIT is counted for the next fsync.
 * - Isolation is as before: the connection is held from a transaction's begin to its end, so no
 *   other statement runs inside it. Statements outside transactions that run while a group is open
 *   run inside it (reads see the group's rows, whose answers wait for its commit; writes commit
 *   with it).
 * - A COMMIT that fails rolls the whole group back; since its members already returned, the
 *   store's answers are failed from then on (durability.poison), until a restart reads what is on
 *   disk again: failing closed rather than serving from caches that describe rolled-back rows.
 */
import type SQLite from 'better-sqlite3';
import { CompiledQuery, SqliteAdapter, SqliteIntrospector, SqliteQueryCompiler, type DatabaseConnection, type Dialect, type Driver, type Kysely, type QueryResult } from 'kysely';
import type { Durability } from './durability.js';

/** Transactions committed together at most (a cap on how long a busy group keeps its answers waiting). */
export const MAX_GROUP = 64;

interface Prepared {
  st: SQLite.Statement;
  reader: boolean;
  /** It changes the database (BEGIN, SAVEPOINT, RELEASE and COMMIT are read-only to SQLite). */
  writes: boolean;
}

class Mutex {
  private locked = false;
  private readonly waiters: (() => void)[] = [];
  lock(): Promise<void> {
    if (!this.locked) {
      this.locked = true;
      return Promise.resolve();
    }
    return new Promise<void>((r) => this.waiters.push(r));
  }
  get waiting(): number {
    return this.waiters.length;
  }
  unlock(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.locked = false;
  }
}

export function groupCommitSqliteDialect(raw: SQLite.Database, durability: Durability): Dialect {
  // Kysely prepares every query afresh; preparing costs more than running a small query, so keep
  // the statements (queries are built from a fixed set of shapes, the cap is a safety net).
  const statements = new Map<string, Prepared>();
  const prepare = (text: string): Prepared => {
    let st = statements.get(text);
    if (!st) {
      if (statements.size >= 1000) statements.clear();
      const s = raw.prepare(text);
      st = { st: s, reader: s.reader, writes: !s.readonly };
      statements.set(text, st);
    }
    return st;
  };
  /** Counted writes not yet committed. */
  let dirty = false;
  const afterStatement = (st: Prepared) => {
    if (st.writes && durability.counting) dirty = true;
    if (!raw.inTransaction) {
      if (dirty) {
        dirty = false;
        durability.committed();
      }
    }
    durability.open(dirty);
  };

  const connection: DatabaseConnection = {
    executeQuery<R>(q: CompiledQuery): Promise<QueryResult<R>> {
      const st = prepare(q.sql);
      if (st.reader) {
        const rows = st.st.all(q.parameters as unknown[]) as R[];
        if (st.writes) afterStatement(st);
        return Promise.resolve({ rows });
      }
      const r = st.st.run(q.parameters as unknown[]);
      // After every run: a write marks the transaction dirty, a COMMIT (or an autocommit write) counts it.
      afterStatement(st);
      return Promise.resolve({ rows: [], numAffectedRows: BigInt(r.changes), insertId: r.lastInsertRowid === undefined ? undefined : BigInt(r.lastInsertRowid) });
    },
    async *streamQuery<R>(q: CompiledQuery): AsyncIterableIterator<QueryResult<R>> {
      for (const row of prepare(q.sql).st.iterate(q.parameters as unknown[])) yield { rows: [row as R] };
    },
  };
  const exec = (text: string) => connection.executeQuery(CompiledQuery.raw(text));

  const mutex = new Mutex();
  /** The open outer transaction and how many transactions it holds, or null. */
  let group: { members: number } | null = null;

  async function commitGroup(): Promise<void> {
    group = null;
    try {
      await exec('commit');
    } catch (e) {
      if (raw.inTransaction) raw.exec('rollback');
      dirty = false;
      durability.open(false);
      durability.poison(e);
      throw e;
    }
  }

  /**
   * Commits the open group once this turn of the event loop is over: the requests it has read but
   * not yet run (each a transaction that runs start to finish within one turn, as every statement
   * is synchronous) join the group first. Their answers wait for the commit anyway (durability).
   */
  let scheduled = false;
  function scheduleCommit(): void {
    if (scheduled) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      void mutex.lock().then(async () => {
        try {
          if (group) await commitGroup();
        } catch {
          // Poisoned: every answer from now on carries the failure (durability.poison).
        } finally {
          mutex.unlock();
        }
      });
    });
  }

  const driver: Driver = {
    async init() {},
    async acquireConnection() {
      await mutex.lock();
      return connection;
    },
    async beginTransaction() {
      if (!group) {
        await exec('begin');
        group = { members: 0 };
      }
      group.members += 1;
      await exec('savepoint ks_tx');
    },
    async commitTransaction() {
      await exec('release ks_tx');
    },
    async rollbackTransaction() {
      await exec('rollback to ks_tx');
      await exec('release ks_tx');
    },
    async releaseConnection() {
      try {
        if (group && group.members >= MAX_GROUP) await commitGroup();
        else if (group && mutex.waiting === 0) scheduleCommit();
      } finally {
        mutex.unlock();
      }
    },
    async destroy() {
      await mutex.lock();
      try {
        if (group) await commitGroup();
      } finally {
        raw.close();
      }
    },
  };

  return {
    createDriver: () => driver,
    createQueryCompiler: () => new SqliteQueryCompiler(),
    createAdapter: () => new SqliteAdapter(),
    createIntrospector: (db: Kysely<any>) => new SqliteIntrospector(db),
  };
}
