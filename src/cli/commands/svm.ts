/** `keysmith svm`: data SVMs (tenants) through the ONTAP-shaped /api/svm/svms. */
import type { Command } from 'commander';
import { findSvm } from '../client.js';
import { act, clientCommand } from '../command.js';

interface SvmRecord {
  uuid: string;
  name: string;
  subtype?: string;
  state?: string;
}

export function registerSvm(program: Command): void {
  const svm = program.command('svm').description('manage data SVMs (tenants)');

  clientCommand(svm, 'create <name>', 'create a data SVM').action(
    act(async ({ client, out }, _opts, name) => {
      const r = await client.request<{ records?: SvmRecord[] }>('POST', '/api/svm/svms', { body: { name }, query: { return_records: true } });
      const rec = r.records?.[0] ?? (await findSvm(client, name));
      if (out.json) return out.data(rec);
      out.fields([
        ['uuid', rec.uuid],
        ['name', rec.name],
      ]);
    }),
  );

  clientCommand(svm, 'list', 'list data SVMs').action(
    act(async ({ client, out }) => {
      const r = await client.request<{ records: SvmRecord[] }>('GET', '/api/svm/svms', { query: { fields: '*' } });
      if (out.json) return out.data(r.records);
      out.table(r.records, [
        ['UUID', (s) => s.uuid],
        ['NAME', (s) => s.name],
        ['STATE', (s) => s.state],
      ]);
    }),
  );

  clientCommand(svm, 'show <svm>', 'show one data SVM, by name or uuid').action(
    act(async ({ client, out }, _opts, ref) => {
      const { uuid } = await findSvm(client, ref);
      const rec = await client.request<SvmRecord>('GET', `/api/svm/svms/${encodeURIComponent(uuid)}`);
      const kms = await client.request<{ records: { uuid: string }[] }>('GET', '/api/security/key-managers', { query: { 'svm.uuid': uuid } });
      if (out.json) return out.data(rec);
      out.fields([
        ['uuid', rec.uuid],
        ['name', rec.name],
        ['subtype', rec.subtype],
        ['state', rec.state],
        ['key manager', kms.records[0]?.uuid ?? 'none of its own (uses the cluster key manager)'],
      ]);
    }),
  );

  clientCommand(svm, 'delete <svm>', 'delete a data SVM that owns no keys, by name or uuid').action(
    act(async ({ client, out }, _opts, ref) => {
      const s = await findSvm(client, ref);
      await client.request('DELETE', `/api/svm/svms/${encodeURIComponent(s.uuid)}`);
      if (out.json) return out.data({ deleted: s });
      out.line(`deleted SVM ${s.name} (${s.uuid})`);
    }),
  );
}
