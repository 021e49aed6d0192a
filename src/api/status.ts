// GET / : the status page (HTML; plain text for clients that ask for text/plain, e.g.
// `curl -H 'Accept: text/plain'`). GET /v1/status: its aggregates as JSON, public like /metrics.
// GET /v1/status/detail: VMs, recent failures and isolation findings, behind the admin token.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { FINDING_KINDS } from '../isolation/firewall-audit.js';
import { requireAdmin } from './auth.js';
import { ADMIN_AUTH, badRequest, count, forbidden, nnum, serverError, str, time, unauthorized } from './schemas.js';
import { statusDetail, statusSummary, SLO_SECONDS, type StatusSummary } from './status-data.js';
import { renderStatusPage, STATUS_PAGE_CSP } from './status-page.js';
import type { StatusSource } from './status-source.js';

export interface StatusOptions {
  db: Kysely<Database>;
  shard: string;
  adminToken: string | null;
  source?: StatusSource;
}

const noQuery = { type: 'object', properties: {}, additionalProperties: false } as const;

const tiersSchema = {
  type: 'object', required: ['hot', 'standby', 'booting', 'busy', 'leaving'],
  properties: { hot: count, standby: count, booting: count, busy: count, leaving: count },
} as const;

const summarySchema = {
  type: 'object',
  required: ['shard', 'role', 'generatedAt', 'classes', 'isolation'],
  properties: {
    shard: str,
    role: { type: 'string', enum: ['active', 'standby', 'stopped', 'unknown'] },
    generatedAt: time,
    classes: {
      type: 'array',
      items: {
        type: 'object', required: ['name', 'poolFrom', 'pool', 'jobs', 'startLatency'],
        properties: {
          name: str,
          poolFrom: { type: 'string', enum: ['pool', 'database'] },
          pool: tiersSchema,
          jobs: { type: 'object', required: ['running', 'waiting'], properties: { running: count, waiting: count } },
          startLatency: {
            type: 'object', required: ['jobs', 'p50', 'p90', 'withinSlo'],
            properties: { jobs: count, p50: nnum, p90: nnum, withinSlo: nnum },
          },
        },
      },
    },
    isolation: {
      type: 'object', required: ['mode', 'lastRunAt', 'findings', 'byKind', 'failedProviders'],
      properties: {
        mode: { type: 'string', enum: ['off', 'warn', 'enforce', 'unknown'] },
        lastRunAt: { type: ['string', 'null'], format: 'date-time' },
        findings: count,
        byKind: { type: 'object', required: [...FINDING_KINDS], properties: Object.fromEntries(FINDING_KINDS.map((k) => [k, count])) },
        failedProviders: count,
      },
    },
  },
} as const;

const detailSchema = {
  type: 'object',
  required: ['vms', 'failures', 'isolation'],
  properties: {
    vms: {
      type: 'array',
      items: {
        type: 'object', required: ['id', 'name', 'class', 'state', 'zone', 'job_id', 'created_at', 'age_seconds'],
        properties: { id: str, name: str, class: str, state: str, zone: { type: ['string', 'null'] }, job_id: { type: ['string', 'null'] }, created_at: time, age_seconds: count },
      },
    },
    failures: {
      type: 'array',
      items: {
        type: 'object', required: ['what', 'id', 'class', 'reason', 'at'],
        properties: { what: { type: 'string', enum: ['vm', 'job'] }, id: str, class: str, reason: str, at: time },
      },
    },
    isolation: {
      type: 'object', required: ['findings', 'failed'],
      properties: {
        findings: {
          type: 'array',
          items: {
            type: 'object', required: ['provider', 'kind', 'rule', 'message', 'classes'],
            properties: { provider: str, kind: str, rule: { type: ['string', 'null'] }, message: str, classes: { type: 'array', items: str } },
          },
        },
        failed: { type: 'array', items: str },
      },
    },
  },
} as const;

export async function statusRoutes(app: FastifyInstance, opts: StatusOptions): Promise<void> {
  const summary = () => statusSummary(opts.db, opts.shard, opts.source, new Date());

  app.get<{ Querystring: { refresh: number } }>('/', {
    schema: {
      tags: ['health'], summary: 'The status page',
      description: 'HTML for a browser (refreshes itself; per-VM detail after the admin token is given, fetched from /v1/status/detail), plain text for a client that asks for text/plain. Aggregates only, no token.',
      response: {
        200: {
          description: 'The page, or its text summary.',
          content: { 'text/html': { schema: { type: 'string' } }, 'text/plain': { schema: { type: 'string' } } },
        },
        400: badRequest, 500: serverError,
      },
      querystring: {
        type: 'object',
        properties: { refresh: { type: 'integer', minimum: 2, maximum: 300, default: 10, description: 'seconds between the page\'s refreshes' } },
        additionalProperties: false,
      },
    },
  }, async (req, reply) => {
    const s = await summary();
    reply.header('Cache-Control', 'no-store');
    if (wantsText(req)) return reply.type('text/plain; charset=utf-8').send(renderText(s));
    return reply
      .type('text/html; charset=utf-8')
      .header('Content-Security-Policy', STATUS_PAGE_CSP)
      .header('X-Content-Type-Options', 'nosniff')
      .header('Referrer-Policy', 'no-referrer')
      .send(renderStatusPage(s, req.query.refresh));
  });

  app.get('/v1/status', {
    schema: {
      tags: ['status'], summary: 'The status page\'s aggregates',
      description: 'Per class: pool tiers, jobs running and waiting, start latency p50/p90 and the share within the SLO over the last hour; this manager\'s role; isolation audit counts. Public, like /metrics: nothing per VM or per job.',
      security: [],
      querystring: noQuery,
      response: { 200: { ...summarySchema, description: 'The aggregates.' }, 400: badRequest, 500: serverError },
    },
  }, async () => summary());

  // The admin hook only here: the page and its aggregates stay public.
  await app.register(async (admin) => {
    admin.addHook('onRequest', requireAdmin(opts.adminToken));
    admin.get('/v1/status/detail', {
      schema: {
        tags: ['status'], summary: 'The status page\'s detail',
        description: 'Live VMs (state, zone, age), failures of the last 24 h with their reason, and the isolation audit\'s findings.',
        security: ADMIN_AUTH,
        querystring: noQuery,
        response: { 200: { ...detailSchema, description: 'The detail.' }, 400: badRequest, 401: unauthorized, 403: forbidden, 500: serverError },
      },
    }, async () => statusDetail(opts.db, opts.shard, opts.source, new Date()));
  });
}

/** Text when the client names text/plain and not text/html (browsers name text/html; `*\/*` gets the page). */
function wantsText(req: FastifyRequest): boolean {
  const accept = req.headers.accept ?? '';
  return /\btext\/plain\b/i.test(accept) && !/\btext\/html\b/i.test(accept);
}

function renderText(s: StatusSummary): string {
  const lines = [`runner-fleet shard ${s.shard}: this manager is ${s.role}, ${s.generatedAt.toISOString()}`, ''];
  if (s.classes.length === 0) lines.push('no classes');
  for (const c of s.classes) {
    const p = c.pool;
    const l = c.startLatency;
    const latency = l.jobs
      ? `started ${l.jobs} in the last hour: p50 ${l.p50} s, p90 ${l.p90} s, ${((l.withinSlo ?? 0) * 100).toFixed(1)}% within ${SLO_SECONDS} s`
      : 'none started in the last hour';
    lines.push(`${c.name}  pool${c.poolFrom === 'database' ? ' (from the database)' : ''} hot=${p.hot} standby=${p.standby} booting=${p.booting} busy=${p.busy} leaving=${p.leaving}  jobs running=${c.jobs.running} waiting=${c.jobs.waiting}  ${latency}`);
  }
  const i = s.isolation;
  lines.push('', `isolation audit (${i.mode}): ${i.lastRunAt ? `${i.findings} finding(s), ${i.failedProviders} provider(s) not audited, at ${i.lastRunAt.toISOString()}` : 'not run here'}`);
  lines.push('', 'see /metrics, /readyz and /v1/status; VMs, failures and findings at /v1/status/detail (admin token)');
  return `${lines.join('\n')}\n`;
}
