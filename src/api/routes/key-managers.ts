/**
 * ONTAP /api/security/key-managers for the onboard key manager, plus two Keysmith paths beside it:
 * `POST /api/security/key-managers/onboard/verify-backup` and `.../onboard/restore` (ONTAP does
 * these from its CLI only).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Services } from '../../app.js';
import type { KeyManagerRow } from '../../store/key-manager-repo.js';
import type { SvmRow } from '../../store/svm-repo.js';
import { KeysmithError, fail } from '../../errors.js';
import type { ExternalInput } from '../../keymanagers/kmip-config-service.js';
import { actor, authorize, bool, canSee, collectionQuery, maxRecords, principal, requireClusterAdmin, requireOntapRead, returnTimeout, selectFields } from '../http.js';

const EXPENSIVE = ['status', 'onboard.key_backup', 'external.servers.connectivity'];

async function view(s: Services, km: KeyManagerRow, svm: SvmRow, wantBackup: () => Promise<string>, fields: string | undefined) {
  const wants = (f: string) => !!fields && fields.split(',').some((x) => x.trim() === f || x.trim() === '**' || (f === 'status' && x.trim().startsWith('status.')));
  const rec: Record<string, unknown> = {
    uuid: km.uuid,
    scope: svm.scope,
    ...(svm.scope === 'svm' ? { svm: { uuid: svm.uuid, name: svm.name, _links: { self: { href: `/api/svm/svms/${svm.uuid}` } } } } : {}),
    onboard: { enabled: km.type === 'okm' && km.enabled === 1 } as Record<string, unknown>,
    volume_encryption: { supported: true, code: 0, message: '' },
    is_default_data_at_rest_encryption_disabled: false,
    _links: { self: { href: `/api/security/key-managers/${km.uuid}` } },
  };
  if (km.type === 'kmip') {
    // An external (KMIP) key manager: its servers and certificates; per-server connectivity is probed when asked for.
    rec.external = await s.externalKmip.view(km, { connectivity: wants('external.servers.connectivity'), nodeName: s.config.nodeName });
    if (wants('status')) rec.status = await s.externalKmip.health(km);
  } else if (wants('status')) {
    if (s.keyring.isSealed()) rec.status = { code: Number(new KeysmithError('sealed').code), message: new KeysmithError('sealed').message };
    else if (!s.keyring.hasRoot(km)) rec.status = { code: Number(new KeysmithError('not_synchronized').code), message: new KeysmithError('not_synchronized').message };
    else rec.status = { code: 0, message: '' };
  }
  if (km.type === 'okm' && wants('onboard.key_backup')) {
    const named = !!fields && fields.split(',').some((x) => x.trim() === 'onboard.key_backup');
    try {
      (rec.onboard as Record<string, unknown>).key_backup = await wantBackup();
    } catch (e) {
      // `**` asks for everything there is: a node that cannot build the backup (sealed, not
      // synchronized) leaves it out, and `status` says why. Asked for by name, it is refused.
      if (named || !(e instanceof KeysmithError) || (e.kind !== 'sealed' && e.kind !== 'not_synchronized')) throw e;
    }
  }
  // Connectivity sits inside each server of the array: asking for it returns the whole `external` object.
  return selectFields(rec, fields?.replace(/external\.servers\.connectivity[\w.]*/g, 'external'), {
    always: ['uuid', '_links'],
    defaults: ['scope', 'svm', 'onboard', 'external', 'volume_encryption', 'is_default_data_at_rest_encryption_disabled'],
    expensive: EXPENSIVE,
  });
}

const passphraseBody = {
  type: 'object',
  additionalProperties: false,
  required: ['key_backup', 'passphrase'],
  properties: { key_backup: { type: 'string' }, passphrase: { type: 'string' } },
} as const;

export function keyManagerRoutes(s: Services) {
  async function load(req: FastifyRequest, uuid: string, access: 'read' | 'manage') {
    const km = await s.repos.keyManagers.findByUuid(uuid);
    const svm = km ? await s.svms.resolve(km.svm_uuid) : undefined;
    authorize(req, km ? svm : undefined, access);
    if (svm!.scope === 'cluster' && access === 'manage') requireClusterAdmin(req);
    return { km: km!, svm: svm! };
  }
  const backupFor = (req: FastifyRequest, km: KeyManagerRow, svm: SvmRow) => async () => {
    authorize(req, svm, 'manage');
    if (svm.scope === 'cluster') requireClusterAdmin(req);
    return s.onboard.backup(km, actor(req));
  };

  return async function (app: FastifyInstance) {
    app.get(
      '/api/security/key-managers',
      {
        schema: {
          tags: ['security'],
          summary: 'Lists key managers (ONTAP).',
          querystring: collectionQuery({
            scope: { type: 'string', enum: ['cluster', 'svm'] },
            'svm.name': { type: 'string' },
            'svm.uuid': { type: 'string' },
            'onboard.enabled': { type: 'string' },
          }),
        },
      },
      async (req) => {
        requireOntapRead(req);
        const q = req.query as Record<string, string | undefined>;
        const max = maxRecords(q.max_records);
        returnTimeout(q.return_timeout);
        const enabled = bool(q['onboard.enabled'], 'onboard.enabled');
        const p = principal(req);
        const records: Record<string, unknown>[] = [];
        for (const km of await s.repos.keyManagers.list()) {
          const svm = await s.svms.resolve(km.svm_uuid);
          if (!svm || !canSee(p, svm)) continue;
          if (q.uuid && km.uuid !== q.uuid) continue;
          if (q.scope && svm.scope !== q.scope) continue;
          if (q['svm.name'] && (svm.scope !== 'svm' || svm.name !== q['svm.name'])) continue;
          if (q['svm.uuid'] && (svm.scope !== 'svm' || svm.uuid !== q['svm.uuid'])) continue;
          if (enabled !== undefined && (km.enabled === 1) !== enabled) continue;
          if (max !== undefined && records.length >= max) break;
          records.push(await view(s, km, svm, backupFor(req, km, svm), q.fields ?? ''));
        }
        return { records, num_records: records.length, _links: { self: { href: req.url } } };
      },
    );

    app.get(
      '/api/security/key-managers/:uuid',
      { schema: { tags: ['security'], summary: 'One key manager (ONTAP).', querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' } } } } },
      async (req) => {
        const { km, svm } = await load(req, (req.params as { uuid: string }).uuid, 'read');
        return view(s, km, svm, backupFor(req, km, svm), (req.query as { fields?: string }).fields);
      },
    );

    app.post(
      '/api/security/key-managers',
      {
        schema: {
          tags: ['security'],
          summary: 'Creates an onboard key manager for the cluster or an SVM (ONTAP).',
          querystring: { type: 'object', additionalProperties: false, properties: { return_records: { type: 'string' }, return_timeout: { type: 'string' }, create_inactive: { type: 'string' } } },
          body: {
            type: 'object',
            additionalProperties: false,
            properties: {
              onboard: { type: 'object', additionalProperties: false, properties: { passphrase: { type: 'string' }, synchronize: { type: 'boolean' } } },
              external: { type: 'object' },
              svm: { type: 'object', additionalProperties: false, properties: { name: { type: 'string' }, uuid: { type: 'string' } } },
              scope: { type: 'string', enum: ['cluster', 'svm'] },
            },
          },
        },
      },
      async (req, reply) => {
        const q = req.query as Record<string, string | undefined>;
        const withRecords = bool(q.return_records, 'return_records');
        returnTimeout(q.return_timeout);
        // ONTAP's create_inactive: a configuration beside the enabled one, enabled later through /api/security/key-stores.
        const inactive = bool(q.create_inactive, 'create_inactive') ?? false;
        const body = req.body as { onboard?: { passphrase?: string; synchronize?: boolean }; external?: unknown; svm?: { name?: string; uuid?: string }; scope?: string };
        if (body.external !== undefined && body.onboard !== undefined) fail('invalid_field', 'Give onboard or external, not both.', 'external');
        if (body.external === undefined && !body.onboard) fail('invalid_field', 'Give onboard.passphrase to configure the Onboard Key Manager, or external to configure external key servers.', 'onboard');
        let svm: SvmRow | undefined;
        if (body.svm) {
          const ref = body.svm.uuid ?? body.svm.name;
          if (!ref) fail('invalid_field', 'svm needs a name or uuid.', 'svm');
          svm = await s.svms.resolve(ref);
          if (svm && body.svm.uuid && body.svm.name && (svm.uuid !== body.svm.uuid || svm.name !== body.svm.name)) svm = undefined;
          authorize(req, svm, 'manage', 'svm');
          if (body.scope === 'cluster') fail('invalid_value', 'scope "cluster" cannot name an SVM.', 'scope');
        } else {
          if (body.scope === 'svm') fail('invalid_field', 'scope "svm" needs svm.name or svm.uuid.', 'svm');
          requireClusterAdmin(req);
          svm = await s.svms.admin();
        }
        const km =
          body.external !== undefined
            ? await s.externalKmip.create(svm!, body.external as ExternalInput, actor(req), { inactive })
            : await s.onboard.create(svm!, body.onboard!.passphrase, actor(req), { inactive });
        reply.status(201).header('location', `/api/security/key-managers/${km.uuid}`);
        return withRecords ? { num_records: 1, records: [await view(s, km, svm!, async () => '', undefined)] } : {};
      },
    );

    app.patch(
      '/api/security/key-managers/:uuid',
      {
        schema: {
          tags: ['security'],
          summary: 'Changes the onboard passphrase or synchronizes this node (ONTAP).',
          querystring: { type: 'object', additionalProperties: false, properties: { return_timeout: { type: 'string' }, return_records: { type: 'string' } } },
          body: {
            type: 'object',
            additionalProperties: false,
            properties: {
              onboard: {
                type: 'object',
                additionalProperties: false,
                properties: { existing_passphrase: { type: 'string' }, passphrase: { type: 'string' }, synchronize: { type: 'boolean' } },
              },
              external: { type: 'object' },
            },
          },
        },
      },
      async (req) => {
        returnTimeout((req.query as Record<string, string | undefined>).return_timeout);
        const { km } = await load(req, (req.params as { uuid: string }).uuid, 'manage');
        const body = req.body as { onboard?: Record<string, unknown>; external?: unknown };
        if (body.external !== undefined) {
          if (body.onboard !== undefined) fail('invalid_field', 'Give onboard or external, not both.', 'external');
          await s.externalKmip.update(km, body.external as ExternalInput, actor(req));
          return {};
        }
        if (km.type === 'kmip') fail('invalid_field', 'This key manager is external: onboard fields do not apply to it.', 'onboard');
        if (!body.onboard) fail('invalid_field', 'Nothing to change: give onboard fields.', 'onboard');
        await s.onboard.update(km, body.onboard, actor(req));
        return {};
      },
    );

    app.delete('/api/security/key-managers/:uuid', { schema: { tags: ['security'], summary: 'Deletes a key manager no key depends on (ONTAP).' } }, async (req) => {
      const { km } = await load(req, (req.params as { uuid: string }).uuid, 'manage');
      await s.onboard.remove(km, actor(req));
      if (km.type === 'kmip') s.externalKmip.forget(km.uuid);
      return {};
    });

    app.post(
      '/api/security/key-managers/onboard/verify-backup',
      { schema: { tags: ['security'], summary: 'Keysmith path: checks a key backup against a passphrase without restoring.', body: passphraseBody } },
      async (req) => {
        requireClusterAdmin(req);
        const b = req.body as { key_backup: string; passphrase: string };
        return s.onboard.verifyBackup(b.key_backup, b.passphrase, actor(req));
      },
    );

    app.post(
      '/api/security/key-managers/onboard/restore',
      { schema: { tags: ['security'], summary: 'Keysmith path: restores a key manager and every key from a backup.', body: passphraseBody } },
      async (req, reply) => {
        requireClusterAdmin(req);
        const b = req.body as { key_backup: string; passphrase: string };
        const out = await s.onboard.restore(b.key_backup, b.passphrase, actor(req));
        s.svms.forgetAll();
        reply.status(201);
        return out;
      },
    );
  };
}
