/**
 * The one catalog of Keysmith errors. Each entry has a stable name and maps, here and only here,
 * to the ONTAP error code and HTTP status it is reported with. ONTAP codes in the 655xxxxx and
 * 660xxxxx ranges come from the ONTAP security REST reference; the small ones (1, 2, 3, 4, 6)
 * and 2621xx are ONTAP's common errors; codes 656000xx, 10, 11 and 12 are Keysmith's own, in ranges
 * ONTAP does not use, and are documented in docs/errors.md.
 *
 * A test keeps this catalog, docs/errors.md and the code in step: every entry is used somewhere
 * and documented, and every code raised is in the catalog.
 */

export interface ErrorSpec {
  readonly code: string;
  readonly status: number;
  readonly message: string;
}

export const ERRORS = {
  // ONTAP common errors
  duplicate: { code: '1', status: 409, message: 'An object with the same identifier already exists.' },
  invalid_field: { code: '2', status: 400, message: 'A field has an invalid value, is missing, or an extra field was provided.' },
  not_supported: { code: '3', status: 400, message: 'The operation is not supported.' },
  not_found: { code: '4', status: 404, message: "entry doesn't exist" },
  permission_denied: { code: '6', status: 403, message: 'not authorized for that command' },
  unexpected_argument: { code: '262179', status: 400, message: 'Unexpected argument.' },
  invalid_value: { code: '262197', status: 400, message: 'Invalid value for field.' },
  not_authenticated: { code: '10', status: 401, message: 'Authentication is required: send a bearer token or HTTP Basic credentials.' },
  too_many_failures: { code: '11', status: 429, message: 'Too many failed sign-in attempts; try again later.' },
  internal: { code: '5', status: 500, message: 'Internal error.' },

  // Onboard key manager (ONTAP PATCH /security/key-managers/{uuid})
  passphrase_mismatch: { code: '65536139', status: 400, message: 'Cluster-wide passphrase is incorrect.' },
  passphrase_same: { code: '65536150', status: 400, message: 'New passphrase cannot be same as the old passphrase.' },
  passphrase_length: { code: '65536404', status: 400, message: 'The passphrase does not match the accepted length.' },
  passphrase_both_needed: { code: '65536917', status: 400, message: 'Updating an onboard passphrase requires both new and existing cluster passphrase.' },
  sync_needs_existing: { code: '65537242', status: 400, message: 'The Onboard Key Manager existing_passphrase must be provided when performing a PATCH/synchronize operation.' },
  sync_forbids_passphrase: { code: '65537243', status: 400, message: 'The Onboard Key Manager passphrase must not be provided when performing a PATCH/synchronize operation.' },
  key_manager_exists: { code: '65600016', status: 409, message: 'A key manager is already configured for this SVM.' },
  key_manager_missing: { code: '65600017', status: 409, message: 'No key manager protects this SVM: configure one first.' },
  key_manager_changed: { code: '65600018', status: 409, message: "The key manager's root key changed while this request ran (a master-key rekey): nothing was changed; retry." },
  key_manager_in_use: { code: '65600015', status: 409, message: 'The key manager still protects keys and cannot be deleted.' },

  // Keysmith's own: backup, seal, keys
  backup_malformed: { code: '65600001', status: 400, message: 'The key backup is not a well-formed Keysmith backup (truncated, altered or not a backup).' },
  backup_wrong_passphrase: { code: '65600002', status: 400, message: 'The key backup cannot be opened with this passphrase, or it has been tampered with.' },
  backup_tampered: { code: '65600008', status: 400, message: 'The key backup opens with this passphrase but its contents were altered.' },
  restore_not_empty: { code: '65600003', status: 409, message: 'Restore needs a Keysmith without key managers or keys.' },
  sealed: { code: '65600004', status: 503, message: 'Keysmith is sealed: unseal it with the passphrase before keys can be served.' },
  unseal_failed: { code: '65600005', status: 400, message: 'The passphrase does not open any sealed key manager.' },
  not_synchronized: { code: '65600006', status: 503, message: 'This node holds no copy of the root key: run synchronize with the passphrase.' },
  key_state: { code: '65600010', status: 409, message: 'The key is not in a state that allows this operation.' },
  key_transition: { code: '65600011', status: 409, message: 'The key state transition is not allowed.' },
  unwrap_failed: { code: '65600012', status: 400, message: 'The wrapped key cannot be unwrapped: it is malformed, altered, or belongs to another key or tenant.' },
  svm_has_keys: { code: '65600013', status: 409, message: 'The SVM still owns keys or a key manager and cannot be deleted.' },
  admin_svm_immutable: { code: '65600014', status: 400, message: 'The admin SVM cannot be deleted.' },
  rekey_no_keys: { code: '65537559', status: 400, message: 'There are no existing internal keys for the SVM. A rekey operation is allowed for an SVM with one or more encryption keys.' },
  rekey_needs_migrate: { code: '65537547', status: 400, message: "One or more keys of this data SVM are stored in the key manager configured for the admin SVM. Migrate this data SVM's keys to its own key manager before running the rekey operation." },
  job_running: { code: '65600021', status: 409, message: 'A rekey of this SVM is already running.' },
  // Key stores: switching the enabled configuration and migrating keys (ONTAP /security/key-stores, .../migrate)
  key_store_switching: { code: '65537610', status: 400, message: 'Rekey cannot be performed on the SVM while the enabled keystore configuration is being switched. If a previous switch failed or was interrupted, rekeys stay refused until PATCH /api/security/key-stores/{uuid} is run again to complete it.' },
  key_store_initializing: { code: '65539436', status: 400, message: 'Rekey cannot be performed on the SVM while the enabled keystore configuration is being initialized. Wait until the keystore is in the active state, and rerun the rekey operation.' },
  key_store_disabling: { code: '65539437', status: 400, message: 'Rekey cannot be performed on the SVM while the enabled keystore configuration is being disabled.' },
  key_store_busy: { code: '65600031', status: 409, message: 'Another rekey, keystore switch or key migration of these keys is running; wait for it to end.' },
  migrate_nothing: { code: '65600032', status: 400, message: 'The SVM holds no keys in the source key manager: there is nothing to migrate.' },
  migrate_pair: { code: '65600033', status: 400, message: "Keys migrate between the admin SVM's enabled key manager and a data SVM's own enabled key manager." },
  token_expired: { code: '12', status: 401, message: 'The token has expired or was revoked.' },

  // Certificates (/api/security/certificates)
  certificate_malformed: { code: '65600040', status: 400, message: 'The certificate is not a single well-formed PEM X.509 certificate.' },
  certificate_key_invalid: { code: '65600041', status: 400, message: 'The private key is malformed or does not belong to the certificate.' },
  // ONTAP's own code (DELETE /security/certificates reference) for a certificate an external key manager uses.
  certificate_in_use: { code: '3735683', status: 409, message: 'Cannot remove this certificate while external key manager is configured.' },

  // ONTAP job actions (PATCH /api/cluster/jobs/{uuid}?action=pause|resume|cancel) and the Element master key
  job_terminal: { code: '458762', status: 400, message: 'Job is already in a terminal state.' },
  job_is_running: { code: '458771', status: 400, message: 'The specified job is running.' },
  job_not_running: { code: '458776', status: 400, message: 'The specified job is not currently running.' },
  job_no_pause: { code: '458783', status: 400, message: 'This job does not support pause.' },
  job_no_cancel: { code: '458784', status: 400, message: 'This job does not support cancel.' },
  job_cancelled: { code: '65600050', status: 409, message: 'The job was cancelled; the work of its completed steps stays and every key remains readable.' },
  master_rekey_running: { code: '65600051', status: 409, message: 'A rekey of the master key is already running.' },
  key_provider_unknown: { code: '65600052', status: 404, message: 'No key provider with this ID exists.' },

  // External KMIP key managers (ONTAP POST/PATCH /security/key-managers with `external`) and Element key providers
  certificate_not_installed: { code: '65536821', status: 400, message: 'The certificate is not installed.' },
  external_not_enabled: { code: '65536828', status: 400, message: 'External key management is not enabled for the SVM.' },
  client_certificate_keys_differ: { code: '65536850', status: 400, message: 'New client certificate public or private keys are different from the existing client certificate.' },
  kmip_versions: { code: '65536852', status: 400, message: 'Failed to query supported KMIP protocol versions.' },
  kmip_server_ca: { code: '66060338', status: 400, message: 'Failed to establish secure connection for a key management server due to incorrect server_ca certificates.' },
  kmip_client_certificate: { code: '66060339', status: 400, message: 'Failed to establish secure connection for a key management server due to incorrect client certificates.' },
  kmip_tls: { code: '66060340', status: 400, message: 'Failed to establish secure connection for a key management server.' },
  kmip_operation: { code: '65600060', status: 502, message: 'The KMIP key server refused an operation on the root key.' },
  kmip_not_on_node: { code: '65600061', status: 503, message: "This node holds no copy of the external key manager's client key: configure the client certificate again from this node (PATCH external.client_certificate)." },
  key_server_unknown: { code: '65600062', status: 404, message: 'No key server with this ID exists.' },
  key_provider_in_use: { code: '65600063', status: 409, message: 'The key provider holds the master key or still has key servers.' },
  key_server_in_use: { code: '65600064', status: 409, message: 'The key server is assigned to a key provider.' },
  key_provider_no_servers: { code: '65600065', status: 400, message: 'The key provider has no key server assigned.' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorName = keyof typeof ERRORS;

/**
 * Element error name for each Keysmith error met through the Element JSON-RPC API. Names Element
 * documents are used with its meaning; any other error is named `x` + its catalog name in
 * PascalCase (e.g. `xSealed`), as listed in docs/errors.md.
 */
export const ELEMENT_NAMES: Partial<Record<ErrorName, string>> = {
  not_found: 'xDBNoSuchPath',
  permission_denied: 'xPermissionDenied',
  not_authenticated: 'xUnauthorized',
  token_expired: 'xUnauthorized',
  too_many_failures: 'xUnauthorized',
  invalid_field: 'xInvalidParameter',
  invalid_value: 'xInvalidParameter',
  unexpected_argument: 'xInvalidAPIParameter',
  key_provider_unknown: 'xKeyProviderIDDoesNotExist',
  key_server_unknown: 'xKeyServerIDDoesNotExist',
  internal: 'xInternalError',
};

export function elementName(kind: ErrorName): string {
  return ELEMENT_NAMES[kind] ?? `x${kind.replace(/(^|_)([a-z])/g, (_m, _u, c: string) => c.toUpperCase())}`;
}

/**
 * KMIP Result Reason (by its KMIP name) for each Keysmith error that a KMIP operation can meet;
 * errors not listed are answered General Failure. The KMIP server turns the name into its number.
 */
export const KMIP_REASONS: Partial<Record<ErrorName, string>> = {
  not_found: 'ItemNotFound',
  permission_denied: 'PermissionDenied',
  invalid_field: 'InvalidField',
  invalid_value: 'InvalidField',
  not_supported: 'OperationNotSupported',
  not_authenticated: 'AuthenticationNotSuccessful',
  too_many_failures: 'AuthenticationNotSuccessful',
  key_state: 'PermissionDenied',
  key_transition: 'PermissionDenied',
  key_manager_missing: 'GeneralFailure',
  sealed: 'GeneralFailure',
  not_synchronized: 'GeneralFailure',
  internal: 'GeneralFailure',
};

export interface ErrorArgument {
  code: string;
  message: string;
}

/** A refusal with a catalog name. Thrown across layers and rendered once, by the HTTP error handler. */
export class KeysmithError extends Error {
  readonly name = 'KeysmithError';
  constructor(
    readonly kind: ErrorName,
    readonly detail?: string,
    readonly target?: string,
    readonly args: ErrorArgument[] = [],
  ) {
    super(detail ?? ERRORS[kind].message);
  }
  get code(): string {
    return ERRORS[this.kind].code;
  }
  get status(): number {
    return ERRORS[this.kind].status;
  }
  toBody(): { error: { code: string; message: string; target?: string; arguments?: ErrorArgument[] } } {
    const body: { code: string; message: string; target?: string; arguments?: ErrorArgument[] } = {
      code: this.code,
      message: this.detail ?? ERRORS[this.kind].message,
    };
    if (this.target !== undefined) body.target = this.target;
    if (this.args.length > 0) body.arguments = this.args;
    return { error: body };
  }
}

export function fail(kind: ErrorName, detail?: string, target?: string): never {
  throw new KeysmithError(kind, detail, target);
}

/** Result type for expected failures the caller must branch on. */
export type Result<T, E extends ErrorName = ErrorName> = { ok: true; value: T } | { ok: false; error: E; detail?: string };

export const ok = <T>(value: T): { ok: true; value: T } => ({ ok: true, value });
export const err = <E extends ErrorName>(error: E, detail?: string): { ok: false; error: E; detail?: string } => ({
  ok: false,
  error,
  detail,
});
