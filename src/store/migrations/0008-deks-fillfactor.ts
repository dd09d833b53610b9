/**
 * Frozen in time: on PostgreSQL, deks pages filled to half.
 *
 * A rekey rewrites every row of deks (its wrapped form and KEK version, neither indexed). With full
 * pages, PostgreSQL puts each new row version on another page and adds an entry to both indexes
 * (primary key, svm_uuid + id) for it; with room left on the page the update is heap-only (HOT): no
 * index entry is added, and the old version is pruned in place later. Half-full pages leave room
 * for a whole rekey pass. The table takes about twice the space; a key's row is small (about 250
 * bytes), so a million keys take about 0.5 GB instead of 0.25 GB. Pages already written keep their
 * fill until they are rewritten. SQLite has no such setting.
 */
import { Kysely, sql } from 'kysely';

export function deksFillfactor(dialect: 'sqlite' | 'postgres') {
  return {
    async up(db: Kysely<any>): Promise<void> {
      if (dialect !== 'postgres') return;
      await sql`ALTER TABLE deks SET (fillfactor = 50)`.execute(db);
    },
  };
}
