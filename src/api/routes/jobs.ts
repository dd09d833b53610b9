/**
 * ONTAP jobs: `GET /api/cluster/jobs`, `GET /api/cluster/jobs/{uuid}`, and the long operations
 * that create them. `POST /api/security/key-managers/{uuid}/rekey-internal` is a Keysmith path:
 * ONTAP has rekey-internal for AKV and GCP configurations only, Keysmith gives it to onboard key
 * managers too, with the same job semantics.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Services } from '../../app.js';
import type { JobRow } from '../../store/job-repo.js';
import { ERRORS, fail } from '../../errors.js';
import { actor, authorize, bool, canSee, maxRecords, principal, requireClusterAdmin, requireOntapRead, returnTimeout, selectFields } from '../http.js';

export function jobView(j: JobRow) {
  return {
    uuid: j.uuid,
    description: j.description,
    state: j.state,
    message: j.message,
    code: j.code,
    start_time: j.start_time ?? undefined,
    end_time: j.end_time ?? undefined,
    progress: { done: j.progress_done, total: j.progress_total },
    svm: j.svm_uuid ? { uuid: j.svm_uuid } : undefined,
    _links: { self: { href: `/api/cluster/jobs/${j.uuid}` } },
  };
}

/** ONTAP's answer to a long operation: the final one if the job ends within return_timeout, else 202 and the job link. */
export async function answerWithJob(s: Services, req: FastifyRequest, reply: FastifyReply, job: JobRow) {
  const q = req.query as Record<string, string | undefined>;
  const timeout = returnTimeout(q.return_timeout) ?? 0;
  const records = bool(q.return_records, 'return_records') ?? false;
  s.jobs.kick();
  const now = timeout > 0 ? await s.jobs.wait(job.uuid, timeout * 1000) : job;
  if (now && now.state === 'failure') {
    return reply.status(now.code >= 1000 ? 400 : 500).send({ error: { code: String(now.code), message: now.message }, job: { uuid: now.uuid, _links: { self: { href: `/api/cluster/jobs/${now.uuid}` } } } });
  }
  if (now && now.state === 'success') {
    reply.status(201);
    return records ? { num_records: 1, records: [jobView(now)] } : {};
  }
  reply.status(202);
  return { job: { uuid: job.uuid, _links: { self: { href: `/api/cluster/jobs/${job.uuid}` } } } };
}

const timeoutQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { return_timeout: { type: 'string' }, return_records: { type: 'string' } },
} as const;

export function jobRoutes(s: Services) {
  async function visible(req: FastifyRequest, j: JobRow): Promise<boolean> {
    const p = principal(req);
    if (!j.svm_uuid) return p.role === 'cluster-admin' || (p.role === 'readonly' && p.svms.length === 0);
    const svm = await s.svms.resolve(j.svm_uuid);
    return !!svm && canSee(p, svm);
  }

  return async function (app: FastifyInstance) {
    app.get(
      '/api/cluster/jobs',
      {
        schema: {
          tags: ['cluster'],
          summary: 'Lists jobs (ONTAP).',
          querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' }, max_records: { type: 'string' }, state: { type: 'string', enum: ['queued', 'running', 'paused', 'success', 'failure'] } } },
        },
      },
      async (req) => {
        requireOntapRead(req);
        const q = req.query as Record<string, string | undefined>;
        const max = maxRecords(q.max_records);
        const records: Record<string, unknown>[] = [];
        for (const j of await s.repos.jobs.list()) {
          if (q.state && j.state !== q.state) continue;
          if (!(await visible(req, j))) continue;
          if (max !== undefined && records.length >= max) break;
          records.push(selectFields(jobView(j), q.fields, { always: ['uuid', '_links'], defaults: [], expensive: [] }));
        }
        return { records, num_records: records.length, _links: { self: { href: req.url } } };
      },
    );

    app.get(
      '/api/cluster/jobs/:uuid',
      { schema: { tags: ['cluster'], summary: 'One job (ONTAP).', querystring: { type: 'object', additionalProperties: false, properties: { fields: { type: 'string' } } } } },
      async (req) => {
        requireOntapRead(req);
        const j = await s.repos.jobs.find((req.params as { uuid: string }).uuid);
        if (!j || !(await visible(req, j))) fail('not_found');
        return selectFields(jobView(j), (req.query as { fields?: string }).fields, { always: ['uuid', '_links'], defaults: ['description', 'state', 'message', 'code', 'start_time', 'end_time', 'progress', 'svm'], expensive: [] });
      },
    );

    app.patch(
      '/api/cluster/jobs/:uuid',
      {
        schema: {
          tags: ['cluster'],
          summary: 'Pauses, resumes or cancels a job (ONTAP). A paused job keeps its cursor and resumes from it; a cancelled job ends as a failure (code 65600050) where its last step left it, with every key readable.',
          querystring: { type: 'object', additionalProperties: false, required: ['action'], properties: { action: { type: 'string', enum: ['pause', 'resume', 'cancel'] } } },
        },
      },
      async (req) => {
        requireOntapRead(req);
        const action = (req.query as { action: 'pause' | 'resume' | 'cancel' }).action;
        const j = await s.repos.jobs.find((req.params as { uuid: string }).uuid);
        if (!j || !(await visible(req, j))) fail('not_found');
        // Changing a job is managing what it works on: cluster-level and admin-SVM jobs need a cluster admin.
        const svm = j.svm_uuid ? await s.svms.resolve(j.svm_uuid) : undefined;
        if (!svm || svm.scope === 'cluster') requireClusterAdmin(req);
        else authorize(req, svm, 'manage');
        if (j.state === 'success' || j.state === 'failure') fail('job_terminal');
        if (action === 'pause') {
          if (!s.jobs.supports(j.type, 'pause')) fail('job_no_pause');
          if (j.state === 'paused') fail('job_not_running');
        } else if (action === 'resume') {
          if (j.state !== 'paused') fail('job_is_running');
        } else if (!s.jobs.supports(j.type, 'cancel')) fail('job_no_cancel');
        const cancelled = { code: Number(ERRORS['job_cancelled'].code), message: `Cancelled by ${principal(req).name}; keys re-wrapped so far stay re-wrapped and every key remains readable.` };
        if (!(await s.jobs.control(j.uuid, action, cancelled))) {
          // It changed state meanwhile (ended, or was paused or resumed by another call).
          const now = await s.repos.jobs.find(j.uuid);
          if (!now || now.state === 'success' || now.state === 'failure') fail('job_terminal');
          fail(action === 'resume' ? 'job_is_running' : 'job_not_running');
        }
        await s.audit.record({ ...actor(req), action: `job.${action}`, outcome: 'success', objectType: 'job', objectId: j.uuid, svmUuid: j.svm_uuid });
        return {};
      },
    );

    app.post(
      '/api/security/key-managers/:uuid/rekey-internal',
      { schema: { tags: ['security'], summary: 'Keysmith path: a new KEK version for the key manager’s SVM and every key re-wrapped under it, online (a job).', querystring: timeoutQuery } },
      async (req, reply) => {
        const q = req.query as Record<string, string | undefined>;
        returnTimeout(q.return_timeout);
        bool(q.return_records, 'return_records');
        const km = await s.repos.keyManagers.findByUuid((req.params as { uuid: string }).uuid);
        const svm = km ? await s.svms.resolve(km.svm_uuid) : undefined;
        authorize(req, km ? svm : undefined, 'manage');
        if (svm!.scope === 'cluster') requireClusterAdmin(req);
        s.keyring.root(km!); // sealed or unsynchronized nodes refuse up front
        await s.keyStores.rekeyGate(svm!.uuid, km!); // switching 65537610, initializing/disabling, keys still under the admin SVM 65537547
        const kek = await s.repos.keks.findActive(svm!.uuid);
        if (kek && kek.key_manager_uuid !== km!.uuid) fail('rekey_needs_migrate');
        // Destroyed keys have no material left to re-wrap: they do not count as keys here.
        if (!kek || !(await s.repos.deks.anyStillUnder(svm!.uuid, 0x7fffffff))) fail('rekey_no_keys');
        const who = actor(req);
        const job = await s.store.db.transaction().execute(async (tx) => {
          await s.keyStores.rekeyGate(svm!.uuid, km!, tx); // again, locked: a switch or migration may have started meanwhile
          if (await s.repos.jobs.findOpen('rekey-internal', svm!.uuid, tx)) fail('job_running');
          const j = await s.jobs.submit({ type: 'rekey-internal', svmUuid: svm!.uuid, params: { svm_uuid: svm!.uuid, svm_name: svm!.name }, createdBy: who.actor }, tx);
          await s.audit.recordIn(tx, { ...who, action: 'key_manager.rekey_internal', outcome: 'success', objectType: 'job', objectId: j.uuid, svmUuid: svm!.uuid, detail: { key_manager: km!.uuid } });
          return j;
        });
        return answerWithJob(s, req, reply, job);
      },
    );
  };
}
