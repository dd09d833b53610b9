/** `keysmith audit`: read the audit log and verify its hash chain. */
import type { Command } from 'commander';
import { CliError } from '../client.js';
import { act, clientCommand, intFlag } from '../command.js';

interface AuditRecord {
  seq: number;
  id: string;
  time: string;
  actor: string;
  action: string;
  outcome: string;
  object_type: string | null;
  object_id: string | null;
  svm_uuid: string | null;
  detail: unknown;
}

interface VerifyReport {
  ok: boolean;
  events: number;
  head: { seq: number; hash: string };
  broken_at?: number;
  reason?: string;
}

export function registerAudit(program: Command): void {
  const audit = program.command('audit').description('the audit log');

  clientCommand(audit, 'list', 'list audit events, oldest first')
    .option('--action <action>', 'only this action, e.g. key_manager.create')
    .option('--actor <actor>', 'only this actor')
    .option('--outcome <outcome>', 'success or failure')
    .option('--svm <svm>', 'only events of this SVM (name or uuid)')
    .option('--since <time>', 'ISO time')
    .option('--until <time>', 'ISO time')
    .option('--limit <n>', 'events per page, 1..10000 (default 100)')
    .option('--after <seq>', 'the page after this sequence number (the `next` of the previous page)')
    .action(
      act(async ({ client, out }, opts) => {
        const r = await client.request<{ records: AuditRecord[]; next?: number }>('GET', '/api/v1/audit/events', {
          query: {
            action: opts.action,
            actor: opts.actor,
            outcome: opts.outcome,
            svm: opts.svm,
            since: opts.since,
            until: opts.until,
            limit: intFlag(opts.limit, '--limit'),
            after: intFlag(opts.after, '--after'),
          },
        });
        if (out.json) return out.data(r);
        out.table(r.records, [
          ['SEQ', (e) => e.seq],
          ['TIME', (e) => e.time],
          ['ACTOR', (e) => e.actor],
          ['ACTION', (e) => e.action],
          ['OUTCOME', (e) => e.outcome],
          ['OBJECT', (e) => (e.object_id ? `${e.object_type ?? ''}:${e.object_id}` : undefined)],
        ]);
        if (r.next !== undefined) out.note(`keysmith: more events: --after ${r.next}`);
      }),
    );

  clientCommand(audit, 'verify', 'walk the hash chain; exit 1 and name the first broken event if it does not verify').action(
    act(async ({ client, out }) => {
      const r = await client.request<VerifyReport>('GET', '/api/v1/audit/verify');
      if (out.json) out.data(r);
      else if (r.ok) out.line(`audit log verified: ${r.events} events, head ${r.head.seq} (${r.head.hash})`);
      if (!r.ok) throw new CliError(`the audit log does not verify: first broken event ${r.broken_at ?? '?'}: ${r.reason ?? 'unknown reason'}`);
    }),
  );
}
