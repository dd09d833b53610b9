/** `keysmith keys`: the data plane, /api/v1/svms/{svm}/keys, data keys and unwrap. */
import type { Command } from 'commander';
import { CliError } from '../client.js';
import { act, clientCommand, intFlag, type Ctx } from '../command.js';
import { readLines } from '../input.js';
import type { KeyView } from '../../hierarchy/dek-service.js';

/** What the server answers for a key (type only: the CLI loads no server code). */
type KeyRecord = KeyView;

const base = (svm: string) => `/api/v1/svms/${encodeURIComponent(svm)}`;

function length(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (v !== '128' && v !== '256') throw new CliError(`--length must be 128 or 256, not "${v}"`);
  return Number(v);
}

function showKey(ctx: Ctx, k: KeyRecord): void {
  if (ctx.out.json) return ctx.out.data(k);
  ctx.out.fields([
    ['id', k.id],
    ['svm', k.svm.name],
    ['name', k.name],
    ['algorithm', `${k.algorithm}-${k.length}`],
    ['state', k.state],
    ['kek version', k.kek_version],
    ['created', k.created_at],
    ['updated', k.updated_at],
    ['activated', k.activated_at],
    ['deactivated', k.deactivated_at],
    ['compromised', k.compromised_at],
    ['destroyed', k.destroyed_at],
  ]);
}

const svmOption = (cmd: Command) => cmd.requiredOption('--svm <svm>', 'the SVM (name or uuid) that owns the keys');

export function registerKeys(program: Command): void {
  const keys = program.command('keys').description('create, inspect and use data encryption keys');

  svmOption(clientCommand(keys, 'create', 'create a key (its material never leaves the server)'))
    .option('--name <name>', 'a name for the key')
    .option('--length <bits>', '128 or 256 (default 256)')
    .option('--pre-active', 'create it pre-active (activate it later)')
    .action(
      act(async (ctx, opts) => {
        const body: Record<string, unknown> = {};
        if (opts.name !== undefined) body.name = opts.name;
        if (opts.length !== undefined) body.length = length(opts.length);
        if (opts.preActive) body.state = 'pre-active';
        showKey(ctx, await ctx.client.request<KeyRecord>('POST', `${base(opts.svm)}/keys`, { body }));
      }),
    );

  svmOption(clientCommand(keys, 'list', 'list keys, a page at a time'))
    .option('--limit <n>', 'keys per page, 1..1000 (default 100)')
    .option('--after <id>', 'the page after this key id (the `next` of the previous page)')
    .action(
      act(async ({ client, out }, opts) => {
        const r = await client.request<{ records: KeyRecord[]; next?: string }>('GET', `${base(opts.svm)}/keys`, { query: { limit: intFlag(opts.limit, '--limit'), after: opts.after } });
        if (out.json) return out.data(r);
        out.table(r.records, [
          ['ID', (k) => k.id],
          ['NAME', (k) => k.name],
          ['STATE', (k) => k.state],
          ['BITS', (k) => k.length],
          ['KEK', (k) => k.kek_version],
          ['CREATED', (k) => k.created_at],
        ]);
        if (r.next) out.note(`keysmith: more keys: --after ${r.next}`);
      }),
    );

  svmOption(clientCommand(keys, 'show <id>', 'show one key’s metadata')).action(
    act(async (ctx, opts, id) => showKey(ctx, await ctx.client.request<KeyRecord>('GET', `${base(opts.svm)}/keys/${encodeURIComponent(id)}`))),
  );

  for (const [action, what] of [
    ['activate', 'make a pre-active key active'],
    ['deactivate', 'stop a key from protecting new data (it still unwraps)'],
    ['compromise', 'mark a key compromised'],
    ['destroy', 'destroy a key that is not active: its material is erased'],
  ] as const) {
    svmOption(clientCommand(keys, `${action} <id>`, what)).action(
      act(async (ctx, opts, id) => showKey(ctx, await ctx.client.request<KeyRecord>('POST', `${base(opts.svm)}/keys/${encodeURIComponent(id)}/state`, { body: { action } }))),
    );
  }

  svmOption(clientCommand(keys, 'generate', 'generate a data key: prints key_id, plaintext (base64, this once) and wrapped, as JSON'))
    .option('--name <name>', 'a name for the key')
    .option('--length <bits>', '128 or 256 (default 256)')
    .action(
      act(async ({ client, out }, opts) => {
        const body: Record<string, unknown> = {};
        if (opts.name !== undefined) body.name = opts.name;
        if (opts.length !== undefined) body.length = length(opts.length);
        // Always JSON: the three values belong together and are meant for a program to store.
        out.data(await client.request('POST', `${base(opts.svm)}/data-keys`, { body }));
      }),
    );

  svmOption(clientCommand(keys, 'unwrap <wrapped>', 'unwrap a wrapped data key ("-" reads it from stdin)')).action(
    act(async ({ client, out }, opts, wrappedArg) => {
      let wrapped = wrappedArg;
      if (wrapped === '-') {
        wrapped = ((await readLines(process.stdin, 1))[0] ?? '').trim();
        if (!wrapped) throw new CliError('expected the wrapped key on stdin');
      }
      const r = await client.request<{ key_id: string; plaintext: string }>('POST', `${base(opts.svm)}/unwrap`, { body: { wrapped } });
      if (out.json) return out.data(r);
      out.fields([
        ['key_id', r.key_id],
        ['plaintext', r.plaintext],
      ]);
    }),
  );
}
