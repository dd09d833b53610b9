/** Migrations registered statically, in order; each is frozen once released. */
import type { Migration, MigrationProvider } from 'kysely';
import { init } from './0001-init.js';
import { jobs } from './0002-jobs.js';

export function migrationProvider(dialect: 'sqlite' | 'postgres'): MigrationProvider {
  return {
    async getMigrations(): Promise<Record<string, Migration>> {
      return { '0001-init': init(dialect), '0002-jobs': jobs() };
    },
  };
}
