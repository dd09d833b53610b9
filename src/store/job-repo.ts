/** SQL for durable jobs and their leases. */
import type { Conn, JobTable } from './schema.js';

export type JobRow = JobTable;

export function createJobRepo(db: Conn) {
  return {
    async insert(row: Omit<JobRow, 'handle'>, tx: Conn): Promise<JobRow> {
      const max = await tx.selectFrom('jobs').select((eb) => eb.fn.max<number>('handle').as('m')).executeTakeFirst();
      const full = { ...row, handle: Number(max?.m ?? 0) + 1 };
      await tx.insertInto('jobs').values(full).execute();
      return full;
    },
    find: (uuid: string, tx: Conn = db) => tx.selectFrom('jobs').selectAll().where('uuid', '=', uuid).executeTakeFirst(),
    findByHandle: (handle: number, tx: Conn = db) => tx.selectFrom('jobs').selectAll().where('handle', '=', handle).executeTakeFirst(),
    list: (tx: Conn = db) => tx.selectFrom('jobs').selectAll().orderBy('handle').execute(),
    /** An unfinished job of this type for this SVM, if any. */
    findOpen: (type: string, svmUuid: string, tx: Conn = db) =>
      tx.selectFrom('jobs').selectAll().where('type', '=', type).where('svm_uuid', '=', svmUuid).where('state', 'in', ['queued', 'running', 'paused']).executeTakeFirst(),
    /**
     * Jobs waiting for this node: queued, running under a lease that has run out, or running under
     * this node's own lease (its previous process died holding it: a restarted node resumes at once).
     */
    claimable: (now: number, owner: string, tx: Conn = db) =>
      tx
        .selectFrom('jobs')
        .select(['uuid'])
        .where((eb) => eb.or([eb('state', '=', 'queued'), eb.and([eb('state', '=', 'running'), eb.or([eb('lease_until', '<', now), eb('lease_owner', '=', owner)])])]))
        .orderBy('handle')
        .limit(10)
        .execute(),
    /** Takes the lease if nobody holds a live one; true when this node now owns the job. */
    async claim(uuid: string, owner: string, now: number, until: number, tx: Conn = db): Promise<boolean> {
      const r = await tx
        .updateTable('jobs')
        .set({ lease_owner: owner, lease_until: until, state: 'running' })
        .where('uuid', '=', uuid)
        .where('state', 'in', ['queued', 'running'])
        .where((eb) => eb.or([eb('lease_owner', 'is', null), eb('lease_until', '<', now), eb('lease_owner', '=', owner)]))
        .executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** Saves a step's outcome, only while this node still holds the lease (else the step is rolled back). */
    async advance(uuid: string, owner: string, patch: Partial<JobRow>, tx: Conn): Promise<boolean> {
      const r = await tx.updateTable('jobs').set(patch).where('uuid', '=', uuid).where('lease_owner', '=', owner).executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** Pauses a queued or running job: its lease is dropped, its cursor kept (a step in flight loses its lease and rolls back). */
    async pause(uuid: string, now: string, tx: Conn = db): Promise<boolean> {
      const r = await tx.updateTable('jobs').set({ state: 'paused', message: 'paused', lease_owner: null, lease_until: null, updated_at: now }).where('uuid', '=', uuid).where('state', 'in', ['queued', 'running']).executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** Queues a paused job again; a runner claims it and resumes from its cursor. */
    async resume(uuid: string, now: string, tx: Conn = db): Promise<boolean> {
      const r = await tx.updateTable('jobs').set({ state: 'queued', message: 'resumed', updated_at: now }).where('uuid', '=', uuid).where('state', '=', 'paused').executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** Ends an unfinished job as a failure with the given code; the work its committed steps did stays. */
    async cancel(uuid: string, code: number, message: string, now: string, tx: Conn = db): Promise<boolean> {
      const r = await tx
        .updateTable('jobs')
        .set({ state: 'failure', code, message, end_time: now, updated_at: now, lease_owner: null, lease_until: null })
        .where('uuid', '=', uuid)
        .where('state', 'in', ['queued', 'running', 'paused'])
        .executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** An unfinished job of this type, whatever its SVM (cluster-level jobs have none). */
    findOpenOfType: (type: string, tx: Conn = db) => tx.selectFrom('jobs').selectAll().where('type', '=', type).where('state', 'in', ['queued', 'running', 'paused']).executeTakeFirst(),
    /** Element's view: hides a completed result once GetAsyncResult handed it out without keepResult. */
    async dropAsyncResult(uuid: string, tx: Conn = db): Promise<boolean> {
      const r = await tx.updateTable('jobs').set({ async_deleted: 1 }).where('uuid', '=', uuid).where('async_deleted', '=', 0).executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },
    /** Gives the lease up; the lease counts as run out, so any node (this one too) claims the job next. */
    release: (uuid: string, owner: string, tx: Conn = db) =>
      tx.updateTable('jobs').set({ lease_owner: null, lease_until: 0 }).where('uuid', '=', uuid).where('lease_owner', '=', owner).execute(),
  };
}
export type JobRepo = ReturnType<typeof createJobRepo>;
