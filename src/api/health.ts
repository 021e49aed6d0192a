// Liveness and readiness. /healthz says the process serves HTTP; /readyz says it can do its
// work: the database answers (and the manager, when it reports, is ready).
import { sql, type Kysely } from 'kysely';
import type { FastifyInstance } from 'fastify';
import type { Database } from '../db/schema.js';
import { bearerMatches } from './auth.js';
import { ADMIN_AUTH } from './schemas.js';

/** true = ready; otherwise why not: a reason, or a status of its own (`standby`) with its reason. */
export type Readiness = boolean | string | { status: string; reason: string };

export interface HealthOptions {
  db: Kysely<Database>;
  ready?: () => Promise<Readiness>;
  /** Only a request with this token sees why a check failed (database or manager error text). */
  adminToken?: string | null;
  /** Longest a readiness check may take before it counts as failed (default 2 s). */
  checkTimeoutMs?: number;
  /** Unsafe settings the manager runs with (a `warnings` array in every /readyz body when any). */
  warnings?: readonly string[];
}

const statusProperties = {
  status: { type: 'string', description: '`ok`/`ready`, or why not: `unavailable`, `standby`.' },
  reason: { type: 'string', description: 'Why not ready; the error text itself only with the admin token.' },
  warnings: { type: 'array', items: { type: 'string' }, description: 'Unsafe settings the manager runs with.' },
} as const;

function statusSchema(description: string, status: readonly string[]) {
  return {
    description, type: 'object', required: ['status'],
    properties: { ...statusProperties, status: { ...statusProperties.status, enum: status } },
  } as const;
}

export async function healthRoutes(app: FastifyInstance, opts: HealthOptions): Promise<void> {
  const timeoutMs = opts.checkTimeoutMs ?? 2000;

  app.get('/healthz', {
    schema: {
      tags: ['health'], summary: 'Liveness', description: 'The process serves HTTP. Checks nothing else, so a database outage does not restart it.',
      response: { 200: statusSchema('Alive.', ['ok']) },
    },
  }, async () => ({ status: 'ok' }));

  app.get('/readyz', {
    schema: {
      tags: ['health'], summary: 'Readiness',
      description: 'Ready when the database answers and the manager is active (holds the shard lock). '
        + 'The admin token is optional: with it, a failed check gives its error text.',
      // {} first: no token is needed; the admin token only adds detail.
      security: [{}, ...ADMIN_AUTH],
      response: {
        200: statusSchema('Ready to work.', ['ready']),
        503: { ...statusSchema('Not ready: `standby` (another manager holds the shard) or `unavailable`, with the reason.', ['unavailable', 'standby']), required: ['status', 'reason'] },
      },
    },
  }, async (req, reply) => {
    const not = await notReady(opts, timeoutMs);
    const warnings = opts.warnings?.length ? { warnings: [...opts.warnings] } : {};
    if (not === null) return { status: 'ready', ...warnings };
    // A standby is healthy: it says so at debug, not as a warning every probe.
    if (not.status === 'standby') req.log.debug(not, 'standby');
    else req.log.warn(not, 'not ready');
    // Error text (host names, roles, driver messages) is for the operator, not any prober.
    const { detail, ...body } = not;
    const admin = !!opts.adminToken && bearerMatches(req.headers.authorization, opts.adminToken);
    return reply.code(503).send(admin && detail ? { ...body, reason: detail, ...warnings } : { ...body, ...warnings });
  });
}

/**
 * null when ready; else the 503 body, with `detail` (the error text) for an admin only. A standby
 * manager answers `standby` and who holds the shard.
 */
async function notReady(opts: HealthOptions, timeoutMs: number): Promise<{ status: string; reason: string; detail?: string } | null> {
  try {
    await withTimeout(sql`SELECT 1`.execute(opts.db), timeoutMs);
  } catch (err) {
    return { status: 'unavailable', reason: 'database: not answering', detail: `database: ${(err as Error).message}` };
  }
  if (opts.ready) {
    try {
      const r = await withTimeout(opts.ready(), timeoutMs);
      if (r === true) return null;
      if (r === false) return { status: 'unavailable', reason: 'manager: not ready' };
      if (typeof r === 'string') return { status: 'unavailable', reason: r };
      return r;
    } catch (err) {
      return { status: 'unavailable', reason: 'manager: readiness check failed', detail: `manager: ${(err as Error).message}` };
    }
  }
  return null;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
