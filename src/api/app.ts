// The shard's HTTP API: fastify with one plugin per concern, each with its own schemas.
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type RouteOptions } from 'fastify';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from '../db/schema.js';
import { REDACT_PATHS } from '../isolation/redact.js';
import type { Metrics } from '../manager/metrics.js';
import { adminRoutes } from './admin.js';
import { billingRoutes } from './billing.js';
import { healthRoutes } from './health.js';
import { metricsRoutes } from './metrics.js';
import { registerOpenApi } from './openapi.js';
import { statusRoutes } from './status.js';
import type { StatusSource } from './status-source.js';

export interface ApiDeps {
  db: Kysely<Database>;
  shard: string;
  /** null disables the admin routes (they answer 403). */
  adminToken: string | null;
  /** null disables the billing feed (403). */
  billingToken?: string | null;
  metrics: Metrics;
  log: Logger;
  /** Extra readiness check for /readyz, e.g. "the manager holds the shard lock". */
  ready?: () => Promise<import('./health.js').Readiness>;
  /** Unsafe settings in force, listed in the /readyz body. */
  warnings?: readonly string[];
  /** Sees every route as it is registered (the OpenAPI test checks each one is documented). */
  onRoute?: (route: RouteOptions) => void;
  /** The running shard's role, pool tiers and isolation audit, for the status page (absent: role unknown, pools from the database). */
  status?: StatusSource;
}

/** Request lines at debug, not info: probes and scrapes would otherwise flood the log. */
class QuietLogController extends LogController {
  override incomingRequest(request: FastifyRequest): void {
    if (!this.isLogDisabled(request)) request.log.debug({ req: request }, 'incoming request');
  }

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (this.isLogDisabled(request)) return;
    if (error) reply.log.error({ res: reply, err: error, responseTime: reply.elapsedTime }, 'request errored');
    else reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }

  override routeNotFound(request: FastifyRequest): void {
    if (!this.isLogDisabled(request)) request.log.debug({ url: request.raw.url, method: request.raw.method }, 'route not found');
  }
}

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  // The caller's redaction plus the request header, whatever logger we were given.
  const log = deps.log.child({ component: 'api' }, {
    redact: { paths: [...new Set([...REDACT_PATHS, 'req.headers.authorization'])], censor: '[redacted]' },
  });
  const app = Fastify({
    loggerInstance: log, logController: new QuietLogController(), return503OnClosing: true,
    // fastify's ajv strips unknown properties by default, which makes `additionalProperties: false`
    // dead: an unknown query parameter must be a 400 naming it, not silently ignored.
    ajv: { customOptions: { removeAdditional: false } },
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err.validation) return reply.code(400).send({ error: validationMessage(err) });
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    if (status < 500) return reply.code(status).send({ error: err.message });
    req.log.error({ err }, 'request failed');
    return reply.code(status).send({ error: 'internal error' });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: `no route ${req.method} ${req.url.split('?')[0]}` }));

  if (deps.onRoute) app.addHook('onRoute', deps.onRoute);
  // First: it documents only the routes registered after it.
  await registerOpenApi(app as unknown as FastifyInstance);
  await app.register(healthRoutes, { db: deps.db, adminToken: deps.adminToken, ...(deps.ready ? { ready: deps.ready } : {}), ...(deps.warnings ? { warnings: deps.warnings } : {}) });
  await app.register(metricsRoutes, { metrics: deps.metrics });
  await app.register(statusRoutes, { db: deps.db, shard: deps.shard, adminToken: deps.adminToken, ...(deps.status ? { source: deps.status } : {}) });
  await app.register(adminRoutes, { db: deps.db, shard: deps.shard, adminToken: deps.adminToken });
  await app.register(billingRoutes, { db: deps.db, shard: deps.shard, token: deps.billingToken ?? null });
  return app as unknown as FastifyInstance;
}

/** `querystring.limit: must be <= 1000`, one clause per failed rule. */
function validationMessage(err: FastifyError): string {
  const where = err.validationContext ?? 'request';
  return (err.validation ?? [])
    .map((v) => {
      const field = [where, ...v.instancePath.split('/').filter(Boolean)].join('.');
      const params = v.params as { allowedValues?: unknown[]; additionalProperty?: string };
      if (params.allowedValues) return `${field}: must be one of ${params.allowedValues.join(', ')}`;
      if (params.additionalProperty) return `${field}.${params.additionalProperty}: unknown parameter`;
      return `${field}: ${v.message ?? 'is invalid'}`;
    })
    .join('; ');
}
