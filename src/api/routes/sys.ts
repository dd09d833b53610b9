/** Health, cluster identity, seal and unseal. */
import type { FastifyInstance } from 'fastify';
import type { Services } from '../../app.js';
import { VERSION } from '../../app.js';
import { actor, requireClusterAdmin, requireClusterRead, requireOntapRead } from '../http.js';

export function sysRoutes(s: Services) {
  return async function (app: FastifyInstance) {
    const health = async () => ({ status: 'ok', sealed: s.keyring.isSealed(), node: s.keyring.node.id });
    app.get('/api/health', { config: { public: true }, schema: { tags: ['system'], summary: 'Liveness and seal state (no credentials needed).' } }, health);

    app.get('/api/cluster', { schema: { tags: ['cluster'], summary: 'The cluster: name, uuid and version (ONTAP shape).' } }, async (req) => {
      requireOntapRead(req);
      const [major, minor] = VERSION.split('.').map(Number);
      return {
        name: s.cluster.name,
        uuid: s.cluster.uuid,
        version: { full: `Keysmith ${VERSION}`, generation: 9, major: 14, minor: 1, keysmith: { major, minor } },
        _links: { self: { href: '/api/cluster' } },
      };
    });

    app.post(
      '/api/v1/sys/unseal',
      {
        schema: {
          tags: ['system'],
          summary: 'Opens the sealed key managers with the passphrase (Keysmith path).',
          body: { type: 'object', additionalProperties: false, required: ['passphrase'], properties: { passphrase: { type: 'string' } } },
        },
      },
      async (req) => {
        requireClusterAdmin(req);
        const { passphrase } = req.body as { passphrase: string };
        return s.onboard.unseal(passphrase, actor(req));
      },
    );

    app.post('/api/v1/sys/seal', { schema: { tags: ['system'], summary: 'Drops every key from this node’s memory until unsealed (Keysmith path).' } }, async (req) => {
      requireClusterAdmin(req);
      s.keyring.seal();
      await s.audit.record({ ...actor(req), action: 'sys.seal', outcome: 'success' });
      return { sealed: true };
    });

    app.get('/api/v1/sys/status', { schema: { tags: ['system'], summary: 'Seal state of this node and the nodes of the cluster.' } }, async (req) => {
      requireClusterRead(req);
      return { sealed: s.keyring.isSealed(), node: s.keyring.node.id, nodes: await s.repos.meta.listNodes(), version: VERSION };
    });
  };
}
