/**
 * A passphrase change races a master-key rekey: the change read the key manager at root version N
 * and sealed root N under the new passphrase; if the rekey moved the key manager to N+1 before the
 * change commits, writing that seal would leave the passphrase unable to open the current root.
 * The repository's guarded write refuses it, and the service answers 65600018 with nothing changed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PASSPHRASE, STORES, noteSecret, startWithOkm, type TestServer } from './helpers.js';

describe.each(STORES)('passphrase seal guarded by root version (%s)', (store) => {
  let s: TestServer & { kmUuid: string };
  beforeAll(async () => {
    s = await startWithOkm({ store });
  });
  afterAll(async () => s?.close());

  it('a seal made for a root version the key manager has left is not written', async () => {
    const repo = s.app.services.repos.keyManagers;
    const before = (await repo.findByUuid(s.kmUuid))!;
    const stale = before.root_version - 1;
    const wrote = await repo.updatePassphraseSeal(s.kmUuid, stale, '{"bogus":true}', Buffer.from('x'), Buffer.from('y'), new Date().toISOString());
    expect(wrote).toBe(false);
    const after = (await repo.findByUuid(s.kmUuid))!;
    expect(after.kdf).toBe(before.kdf);
    expect(Buffer.compare(after.passphrase_seal, before.passphrase_seal)).toBe(0);
    expect(Buffer.compare(after.backup_seal, before.backup_seal)).toBe(0);
  });

  it('the passphrase change itself still works at the current version, and the new passphrase opens the root', async () => {
    const next = `${PASSPHRASE}-changed-${store}`;
    noteSecret(next);
    const r = await s.call('PATCH', `/api/security/key-managers/${s.kmUuid}`, { onboard: { existing_passphrase: PASSPHRASE, passphrase: next } });
    expect(r.status).toBe(200);
    const sync = await s.call('PATCH', `/api/security/key-managers/${s.kmUuid}`, { onboard: { existing_passphrase: next, synchronize: true } });
    expect(sync.status).toBe(200);
  });
});
