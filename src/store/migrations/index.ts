/** Migrations registered statically, in order; each is frozen once released. */
import type { Migration, MigrationProvider } from 'kysely';
import { init } from './0001-init.js';
import { jobs } from './0002-jobs.js';
import { kmip } from './0003-kmip.js';
import { masterKey } from './0004-master-key.js';
import { keyStores } from './0005-key-stores.js';
import { externalKmip } from './0006-external-kmip.js';
import { auditRowid } from './0007-audit-rowid.js';
import { deksFillfactor } from './0008-deks-fillfactor.js';
import { kmipRootCheck } from './0009-kmip-root-check.js';
import { kmipConfigRevision } from './0010-kmip-config-revision.js';

export function migrationProvider(dialect: 'sqlite' | 'postgres'): MigrationProvider {
  return {
    async getMigrations(): Promise<Record<string, Migration>> {
      return { '0001-init': init(dialect), '0002-jobs': jobs(), '0003-kmip': kmip(dialect), '0004-master-key': masterKey(dialect), '0005-key-stores': keyStores(), '0006-external-kmip': externalKmip(dialect), '0007-audit-rowid': auditRowid(dialect), '0008-deks-fillfactor': deksFillfactor(dialect), '0009-kmip-root-check': kmipRootCheck(), '0010-kmip-config-revision': kmipConfigRevision() };
    },
  };
}
