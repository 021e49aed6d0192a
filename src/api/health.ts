// Liveness and readiness. /healthz says the process serves HTTP; /readyz says it can do its
// work: the database answers (and the manager, when it reports, is ready).
import { sql, type Kysely } from 'kysely';
import type { FastifyInstance } from 'fastify';
import type { Database } from '../db/schema.js';

export interface HealthOptions {
  db: Kysely<Database>;
  ready?: () => Promise<boolean>;
  /** Longest a readiness check may take before it counts as failed (default 2 s). */
  checkTimeoutMs?: number;
}

const statusSchema = {
  type: 'object',
  properties: { status: { type: 'string' }, reason: { type: 'string' } },
  required: ['status'],
} as const;

export async function healthRoutes(app: FastifyInstance, opts: HealthOptions): Promise<void> {
  const timeoutMs = opts.checkTimeoutMs ?? 2000;

  app.get('/healthz', { schema: { response: { 200: statusSchema } } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { schema: { response: { 200: statusSchema, 503: statusSchema } } }, async (req, reply) => {
    const reason = await notReadyReason(opts, timeoutMs);
    if (reason === null) return { status: 'ready' };
    req.log.warn({ reason }, 'not ready');
    return reply.code(503).send({ status: 'unavailable', reason });
  });
}

async function notReadyReason(opts: HealthOptions, timeoutMs: number): Promise<string | null> {
  try {
    await withTimeout(sql`SELECT 1`.execute(opts.db), timeoutMs);
  } catch (err) {
    return `database: ${(err as Error).message}`;
  }
  if (opts.ready) {
    try {
      if (!(await withTimeout(opts.ready(), timeoutMs))) return 'manager: not ready';
    } catch (err) {
      return `manager: ${(err as Error).message}`;
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
