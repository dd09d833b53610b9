/** The operations this server serves, by KMIP Operation value. Query lists exactly these. */
import { Operation } from '../enums.js';
import type { OperationHandler } from './context.js';
import { discoverVersions, query, SERVED_OPERATIONS } from './discover-query.js';
import { create, register, rekey } from './create-register.js';
import { check, get, getAttributeList, getAttributes } from './get.js';
import { addAttribute, deleteAttribute, modifyAttribute } from './attribute-ops.js';
import { locate } from './locate.js';
import { activate, destroy, revoke } from './lifecycle.js';
import { decrypt, encrypt } from './crypto.js';

export const OPERATIONS = new Map<number, OperationHandler>([
  [Operation.DiscoverVersions, discoverVersions],
  [Operation.Query, query],
  [Operation.Create, create],
  [Operation.Register, register],
  [Operation.Rekey, rekey],
  [Operation.Locate, locate],
  [Operation.Check, check],
  [Operation.Get, get],
  [Operation.GetAttributes, getAttributes],
  [Operation.GetAttributeList, getAttributeList],
  [Operation.AddAttribute, addAttribute],
  [Operation.ModifyAttribute, modifyAttribute],
  [Operation.DeleteAttribute, deleteAttribute],
  [Operation.Activate, activate],
  [Operation.Revoke, revoke],
  [Operation.Destroy, destroy],
  [Operation.Encrypt, encrypt],
  [Operation.Decrypt, decrypt],
]);

if (SERVED_OPERATIONS.length !== OPERATIONS.size || !SERVED_OPERATIONS.every((op) => OPERATIONS.has(op))) throw new Error('Query and the operation registry disagree');

/** Operations that need no principal beyond a verified TLS peer (they read nothing of a tenant). */
export const UNAUTHENTICATED_OPERATIONS = new Set<number>([Operation.DiscoverVersions, Operation.Query]);
