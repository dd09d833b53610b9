/** A node's sealed KMIP secrets: what opens, and what an unreadable copy never passes on. */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { seal } from '../crypto/aead.js';
import { nodeSecretContext, openSecrets } from './kmip-key-manager.js';

const node = { id: 'node_test', sealKey: randomBytes(32) };
const km = { uuid: 'km-uuid', svm_uuid: 'svm-uuid' };
const sealed = (text: string) => seal(node.sealKey, node.id, 1, nodeSecretContext(km, node.id), Buffer.from(text, 'utf8'));

describe('openSecrets', () => {
  it('opens passwords kept by server name', () => {
    expect(openSecrets(node, km, sealed(JSON.stringify({ key: 'PEM', passwords: { 'h:5696': 'pw' } })))).toEqual({ secrets: { key: 'PEM', passwords: { 'h:5696': 'pw' } }, legacy: false });
  });

  it('refuses an unreadable copy without quoting it (JSON.parse would quote passwords and the key)', () => {
    const secret = 'hunter2-private-key-material';
    let message = '';
    try {
      openSecrets(node, km, sealed(`{"key":"${secret}", broken`));
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/not readable/);
    expect(message).not.toContain('hunter2');
  });

  it('answers null for a blob sealed under another key', () => {
    const other = { id: 'node_test', sealKey: randomBytes(32) };
    expect(openSecrets(other, km, sealed('{}'))).toBeNull();
  });
});
