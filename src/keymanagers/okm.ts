/**
 * The onboard key manager behind the KeyManager interface. Its roots live in the keyring (opened at
 * start from this node's seals, or by synchronize/unseal with the passphrase); a KEK is sealed under
 * the root with the same AEAD and context the keyring and the rest of the hierarchy use, so KEKs
 * wrapped here open on the data path exactly as before.
 */
import { open } from '../crypto/aead.js';
import { KeysmithError } from '../errors.js';
import { kekContext, type Keyring } from '../hierarchy/keyring.js';
import type { KeyManager } from './key-manager.js';

export function createOkmKeyManager(keyring: Pick<Keyring, 'root' | 'wrapKek'>): KeyManager {
  return {
    type: 'okm',
    location: 'onboard',

    async wrapKek(config, kek, material) {
      return { wrapped: keyring.wrapKek(config, kek, material), rootVersion: config.root_version };
    },

    async unwrapKek(config, kek) {
      return open(keyring.root({ uuid: config.uuid, root_version: kek.root_version }), kekContext(kek), kek.wrapped);
    },

    async ready(config) {
      keyring.root(config); // throws sealed or not_synchronized
    },

    describe: (config) => ({ name: 'default', href: `/api/security/key-managers/${config.uuid}` }),

    async health(config) {
      try {
        keyring.root(config);
        return { code: 0, message: '' };
      } catch (e) {
        if (e instanceof KeysmithError) return { code: Number(e.code), message: e.message };
        throw e;
      }
    },
  };
}
