/**
 * `keysmith key-manager`: the onboard key manager through ONTAP's /api/security/key-managers,
 * plus Keysmith's backup verify and restore paths. Passphrases come from stdin or the environment.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { CliError, looksLikeUuid, type Client } from '../client.js';
import { act, clientCommand, type Ctx } from '../command.js';
import { checkNoSecretFlags, readSecrets, refuseSecretFlags } from '../input.js';

interface KmRecord {
  uuid: string;
  scope: 'cluster' | 'svm';
  svm?: { uuid: string; name: string };
  onboard?: { enabled: boolean; key_backup?: string };
  status?: { code: number; message: string };
}

interface BackupSummary {
  key_manager: { uuid: string; svm: { uuid: string } };
  created: string;
  svms: number;
  keks: number;
  deks: number;
}

const SECRET_FLAGS = ['passphrase', 'existing-passphrase', 'new-passphrase'];
const HINT = 'Use --passphrase-stdin, or set KEYSMITH_PASSPHRASE (and KEYSMITH_NEW_PASSPHRASE for a change).';

const ONE = { stdinFlag: '--passphrase-stdin', envNames: ['KEYSMITH_PASSPHRASE'], labels: ['passphrase'] };
const TWO = { stdinFlag: '--passphrase-stdin', envNames: ['KEYSMITH_PASSPHRASE', 'KEYSMITH_NEW_PASSPHRASE'], labels: ['existing passphrase', 'new passphrase'] };

async function passphrases(ctx: Ctx, opts: Record<string, unknown>, src: typeof ONE): Promise<string[]> {
  checkNoSecretFlags(opts, SECRET_FLAGS, HINT);
  return readSecrets(src, !!opts.passphraseStdin, ctx.env);
}

/** The key manager of an SVM (by name or uuid), or the cluster's when no SVM is named. */
async function findKeyManager(client: Client, svm: string | undefined): Promise<KmRecord> {
  const list = (query: Record<string, string>) => client.request<{ records: KmRecord[] }>('GET', '/api/security/key-managers', { query: { ...query, fields: 'scope,svm,onboard' } });
  if (svm !== undefined) {
    const hit = (await list(looksLikeUuid(svm) ? { 'svm.uuid': svm } : { 'svm.name': svm })).records[0];
    if (hit) return hit;
    // The admin SVM carries the cluster's name; its key manager is the cluster-scoped one.
    const cluster = await client.request<{ name: string }>('GET', '/api/cluster');
    if (cluster.name !== svm) throw new CliError(`SVM "${svm}" has no key manager of its own (or does not exist)`);
  }
  const hit = (await list({ scope: 'cluster' })).records[0];
  if (!hit) throw new CliError('the cluster has no key manager yet: create one with `keysmith key-manager onboard create`');
  return hit;
}

const where = (km: KmRecord) => (km.scope === 'cluster' ? 'the cluster' : `SVM ${km.svm?.name ?? km.svm?.uuid}`);

function printSummary(ctx: Ctx, verb: string, s: BackupSummary): void {
  if (ctx.out.json) return ctx.out.data(s);
  ctx.out.line(verb);
  ctx.out.fields([
    ['key manager', s.key_manager.uuid],
    ['svm', s.key_manager.svm.uuid],
    ['backup created', s.created],
    ['svms', s.svms],
    ['keks', s.keks],
    ['keys', s.deks],
  ]);
}

function readBackupFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new CliError(`cannot read backup file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export function registerKeyManager(program: Command): void {
  const km = program.command('key-manager').description('manage key managers (the roots of the key hierarchies)');

  clientCommand(km, 'list', 'list key managers and their status').action(
    act(async ({ client, out }) => {
      const r = await client.request<{ records: KmRecord[] }>('GET', '/api/security/key-managers', { query: { fields: 'scope,svm,onboard,status' } });
      if (out.json) return out.data(r.records);
      out.table(r.records, [
        ['UUID', (k) => k.uuid],
        ['SCOPE', (k) => k.scope],
        ['SVM', (k) => k.svm?.name],
        ['TYPE', (k) => (k.onboard ? 'onboard' : 'external')],
        ['ENABLED', (k) => k.onboard?.enabled],
        ['STATUS', (k) => (k.status ? (k.status.code === 0 ? 'ok' : `${k.status.code}: ${k.status.message}`) : undefined)],
      ]);
    }),
  );

  const onboard = km.command('onboard').description('the onboard (passphrase-protected) key manager');
  const withPassphrase = (cmd: Command, what = 'read the passphrase from stdin (else KEYSMITH_PASSPHRASE)') => refuseSecretFlags(cmd.option('--passphrase-stdin', what), SECRET_FLAGS);

  withPassphrase(clientCommand(onboard, 'create', 'configure the onboard key manager for the cluster or an SVM'))
    .option('--svm <svm>', 'the SVM (name or uuid) to give its own key manager; default: the cluster')
    .action(
      act(async (ctx, opts) => {
        const [passphrase] = await passphrases(ctx, opts, ONE);
        const svm = opts.svm as string | undefined;
        const body: Record<string, unknown> = { onboard: { passphrase } };
        if (svm !== undefined) body.svm = looksLikeUuid(svm) ? { uuid: svm } : { name: svm };
        const r = await ctx.client.request<{ records?: KmRecord[] }>('POST', '/api/security/key-managers', { body, query: { return_records: true } });
        const rec = r.records?.[0];
        if (ctx.out.json) return ctx.out.data(rec ?? {});
        ctx.out.line(`created the onboard key manager of ${rec ? where(rec) : svm ? `SVM ${svm}` : 'the cluster'}`);
        if (rec) ctx.out.fields([['uuid', rec.uuid], ['scope', rec.scope], ['svm', rec.svm?.name]]);
        ctx.out.note('keysmith: keep the passphrase safe, and take a backup now: keysmith key-manager onboard show-backup --out FILE');
      }),
    );

  withPassphrase(
    clientCommand(onboard, 'update-passphrase', 'change the onboard passphrase'),
    'read the existing and the new passphrase from stdin, one per line (else KEYSMITH_PASSPHRASE and KEYSMITH_NEW_PASSPHRASE)',
  )
    .option('--svm <svm>', 'the SVM whose key manager to change; default: the cluster')
    .action(
      act(async (ctx, opts) => {
        const [existing, next] = await passphrases(ctx, opts, TWO);
        const k = await findKeyManager(ctx.client, opts.svm);
        await ctx.client.request('PATCH', `/api/security/key-managers/${k.uuid}`, { body: { onboard: { existing_passphrase: existing, passphrase: next } } });
        if (ctx.out.json) return ctx.out.data({ uuid: k.uuid, passphrase_updated: true });
        ctx.out.line(`changed the passphrase of the key manager of ${where(k)} (${k.uuid})`);
        ctx.out.note('keysmith: earlier backups still open with the old passphrase only: take a new backup');
      }),
    );

  withPassphrase(clientCommand(onboard, 'sync', 'give this node its copy of the root key (ONTAP synchronize)'))
    .option('--svm <svm>', 'the SVM whose key manager to synchronize; default: the cluster')
    .action(
      act(async (ctx, opts) => {
        const [existing] = await passphrases(ctx, opts, ONE);
        const k = await findKeyManager(ctx.client, opts.svm);
        await ctx.client.request('PATCH', `/api/security/key-managers/${k.uuid}`, { body: { onboard: { existing_passphrase: existing, synchronize: true } } });
        if (ctx.out.json) return ctx.out.data({ uuid: k.uuid, synchronized: true });
        ctx.out.line(`synchronized the key manager of ${where(k)} (${k.uuid}) on the node that answered`);
      }),
    );

  clientCommand(onboard, 'show-backup', 'print (or write to a file) the passphrase-protected key backup')
    .option('--svm <svm>', 'the SVM whose key manager to back up; default: the cluster')
    .option('--out <file>', 'write the backup to this file (mode 600) instead of stdout')
    .option('--force', 'overwrite --out if it exists')
    .action(
      act(async ({ client, out }, opts) => {
        const k = await findKeyManager(client, opts.svm);
        const r = await client.request<KmRecord>('GET', `/api/security/key-managers/${k.uuid}`, { query: { fields: 'onboard.key_backup' } });
        const text = r.onboard?.key_backup;
        if (!text) throw new CliError(`the server returned no backup for key manager ${k.uuid}`);
        if (opts.out) {
          try {
            writeFileSync(opts.out, text.endsWith('\n') ? text : text + '\n', { mode: 0o600, flag: opts.force ? 'w' : 'wx' });
          } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            throw new CliError(code === 'EEXIST' ? `${opts.out} exists: choose another file or give --force` : `cannot write ${opts.out}: ${code ?? (e as Error).message}`);
          }
          if (out.json) return out.data({ uuid: k.uuid, file: opts.out });
          out.line(`wrote the backup of the key manager of ${where(k)} (${k.uuid}) to ${opts.out}`);
          return;
        }
        if (out.json) return out.data({ uuid: k.uuid, key_backup: text });
        out.line(text.replace(/\n$/, ''));
      }),
    );

  withPassphrase(clientCommand(onboard, 'verify-backup', 'check that a backup opens with a passphrase, without restoring it'))
    .requiredOption('--file <file>', 'the backup file')
    .action(
      act(async (ctx, opts) => {
        const key_backup = readBackupFile(opts.file);
        const [passphrase] = await passphrases(ctx, opts, ONE);
        const s = await ctx.client.request<BackupSummary>('POST', '/api/security/key-managers/onboard/verify-backup', { body: { key_backup, passphrase } });
        printSummary(ctx, `backup verified: it opens with this passphrase and every key in it unwraps`, s);
      }),
    );

  withPassphrase(clientCommand(onboard, 'restore', 'restore a key manager and all its keys from a backup (into a Keysmith without them)'))
    .requiredOption('--file <file>', 'the backup file')
    .action(
      act(async (ctx, opts) => {
        const key_backup = readBackupFile(opts.file);
        const [passphrase] = await passphrases(ctx, opts, ONE);
        const s = await ctx.client.request<BackupSummary>('POST', '/api/security/key-managers/onboard/restore', { body: { key_backup, passphrase } });
        printSummary(ctx, 'restored', s);
      }),
    );
}
