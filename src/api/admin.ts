// Read-only admin API: VMs and jobs of this shard, behind the admin bearer token. Columns are
// listed explicitly (and the response schemas drop anything else): secrets never leave.
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { VM_STATES } from '../manager/vm-states.js';
import { requireAdmin } from './auth.js';
import { ADMIN_AUTH, badRequest, forbidden, nint, nnum, nstr, ntime, serverError, str, time, unauthorized } from './schemas.js';

export interface AdminOptions {
  db: Kysely<Database>;
  shard: string;
  adminToken: string | null;
}

const VM_COLUMNS = [
  'id', 'class', 'provider', 'name', 'state', 'cloud_id', 'zone', 'internal_ip', 'job_id', 'failure',
  'created_at', 'ready_at', 'updated_at',
] as const;

const JOB_COLUMNS = [
  'id', 'class', 'vm_id', 'state', 'project_id', 'pipeline_id', 'namespace_id', 'root_namespace_id',
  'queued_seconds', 'timeout_seconds', 'picked_at', 'started_at', 'finished_at', 'result', 'exit_code',
  'failure_reason', 'trace_bytes', 'reported_at',
] as const;

/** States that still hold (or may hold) a cloud VM. */
const LIVE_STATES = VM_STATES.filter((s) => s !== 'deleted');

/** bigint columns travel as decimal strings (JSON numbers lose precision past 2^53). */
const bigid = { type: 'string', pattern: '^[0-9]+$' } as const;
const nbigid = { type: ['string', 'null'], pattern: '^[0-9]+$' } as const;

// Every column is always present (null when unset): `required` lists them all.
const vmSchema = {
  type: 'object',
  required: [...VM_COLUMNS],
  properties: {
    id: str, class: str, provider: str, name: { ...str, description: 'Name in the cloud.' },
    state: { type: 'string', enum: [...VM_STATES] }, cloud_id: { ...nstr, description: "The provider's id, once created." },
    zone: nstr, internal_ip: nstr, job_id: { ...nbigid, description: 'GitLab job id while assigned.' },
    failure: { ...nstr, description: 'Why the VM failed.' }, created_at: time, ready_at: ntime, updated_at: time,
  },
} as const;

const jobSchema = {
  type: 'object',
  required: [...JOB_COLUMNS],
  properties: {
    id: { ...bigid, description: 'GitLab job id.' }, class: str, vm_id: nstr, state: str, project_id: nbigid, pipeline_id: nbigid,
    namespace_id: nbigid, root_namespace_id: nbigid, queued_seconds: { ...nnum, description: 'Time in GitLab\'s queue before pickup.' },
    timeout_seconds: { type: 'integer' }, picked_at: time, started_at: ntime, finished_at: ntime,
    result: { ...nstr, description: '`success`, `failed`, `canceled` once finished.' }, exit_code: nint,
    failure_reason: { ...nstr, description: "GitLab's failure reason when failed." }, trace_bytes: { ...bigid, description: 'Log bytes sent.' },
    reported_at: ntime,
  },
} as const;

const limit = { type: 'integer', minimum: 1, maximum: 1000, default: 100, description: 'At most this many, newest first.' } as const;
const name = { type: 'string', pattern: '^[a-z0-9][a-z0-9-]*$', maxLength: 100, description: 'Only this runner class.' } as const;

/** Statuses every admin route may send besides its 200. */
const adminErrors = { 400: badRequest, 401: unauthorized, 403: forbidden, 500: serverError } as const;

interface VmQuery { state?: string; class?: string; limit: number }
interface JobQuery { state?: string; class?: string; limit: number }

export async function adminRoutes(app: FastifyInstance, opts: AdminOptions): Promise<void> {
  app.addHook('onRequest', requireAdmin(opts.adminToken));

  app.get<{ Querystring: VmQuery }>('/v1/vms', {
    schema: {
      tags: ['admin'], summary: "The shard's VMs",
      description: 'VMs of this shard, newest first. Key material is never returned.',
      security: ADMIN_AUTH,
      querystring: {
        type: 'object',
        properties: {
          state: { type: 'string', enum: [...VM_STATES, 'live'], description: 'Only VMs in this state; `live`: every state but `deleted`.' },
          class: name, limit,
        },
        additionalProperties: false,
      },
      response: { 200: { description: 'The VMs.', type: 'object', required: ['vms'], properties: { vms: { type: 'array', items: vmSchema } } }, ...adminErrors },
    },
  }, async (req) => {
    const { state, limit: n } = req.query;
    let q = opts.db.selectFrom('vms').select(VM_COLUMNS).where('shard', '=', opts.shard);
    if (state === 'live') q = q.where('state', 'in', LIVE_STATES);
    else if (state) q = q.where('state', '=', state);
    if (req.query.class) q = q.where('class', '=', req.query.class);
    const vms = await q.orderBy('created_at', 'desc').orderBy('id').limit(n).execute();
    return { vms };
  });

  app.get<{ Querystring: JobQuery }>('/v1/jobs', {
    schema: {
      tags: ['admin'], summary: "The shard's jobs",
      description: 'Jobs of this shard, latest picked first. Job tokens are never returned.',
      security: ADMIN_AUTH,
      querystring: {
        type: 'object',
        properties: { state: { type: 'string', pattern: '^[a-z_]+$', maxLength: 40, description: 'Only jobs in this state, e.g. `running`, `finished`.' }, class: name, limit },
        additionalProperties: false,
      },
      response: { 200: { description: 'The jobs.', type: 'object', required: ['jobs'], properties: { jobs: { type: 'array', items: jobSchema } } }, ...adminErrors },
    },
  }, async (req) => {
    const { state, limit: n } = req.query;
    let q = opts.db.selectFrom('jobs').select(JOB_COLUMNS).where('shard', '=', opts.shard);
    if (state) q = q.where('state', '=', state);
    if (req.query.class) q = q.where('class', '=', req.query.class);
    const jobs = await q.orderBy('picked_at', 'desc').orderBy('id', 'desc').limit(n).execute();
    return { jobs };
  });
}
