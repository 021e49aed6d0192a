// The billing feed for the billing pipeline: GET /v1/billing/events?after=CURSOR&limit=N behind
// its own bearer token (billing.token). Paging with the returned nextCursor yields every event
// of the shard exactly once, in order (billing-feed.ts says how).
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { BILLING_EVENT_TYPE } from '../manager/billing.js';
import { BillingCursorError, decodeCursor, DEFAULT_PAGE, encodeCursor, FEED_START, MAX_PAGE, readFeed } from '../manager/billing-feed.js';
import { requireBearer } from './auth.js';
import type { BillingEvent } from '../manager/billing.js';
import { badRequest, BILLING_AUTH, forbidden, nint, serverError, unauthorized } from './schemas.js';

/** Every field of a BillingEvent, no other: a field added to the event and not here fails the build (the serializer would drop it). */
const eventProperties = {
  id: { type: 'string', format: 'uuid', description: 'Stable per shard and job: the same on every delivery; dedupe on it.' },
  type: { type: 'string', enum: [BILLING_EVENT_TYPE] },
  shard: { type: 'string' },
  jobId: { type: 'integer' },
  pipelineId: nint, projectId: nint, namespaceId: nint, rootNamespaceId: nint,
  runnerClass: { type: 'string' },
  costFactor: { type: 'number', description: "The class's price multiplier." },
  provider: { type: 'string' },
  machineType: { type: ['string', 'null'] },
  startedAt: { type: 'string', format: 'date-time' },
  finishedAt: { type: 'string', format: 'date-time' },
  durationSeconds: { type: 'number', minimum: 0 },
  computeMinutes: { type: 'string', pattern: '^[0-9]+\\.[0-9]{6}$', description: 'durationSeconds / 60 x costFactor, 6 decimals, rounded half up.' },
  outcome: { type: 'string', enum: ['success', 'failed', 'canceled'] },
  billable: { type: 'boolean', description: 'false when the job failed through our fault (runner_system_failure).' },
} as const satisfies Record<keyof BillingEvent, unknown>;

/** One compute-minutes event (src/manager/billing.ts builds it; the feed serves it verbatim). */
const eventSchema = {
  type: 'object',
  required: Object.keys(eventProperties),
  properties: eventProperties,
} as const;

export interface BillingApiOptions {
  db: Kysely<Database>;
  shard: string;
  token: string | null;
}

export async function billingRoutes(app: FastifyInstance, opts: BillingApiOptions): Promise<void> {
  app.addHook('onRequest', requireBearer(opts.token, 'billing API disabled: set billing.token'));
  app.get<{ Querystring: { after?: string; limit?: string } }>('/v1/billing/events', {
    schema: {
      tags: ['billing'], summary: 'Page through the billing feed',
      description: 'Events of this shard, oldest first, each exactly once. Page with `after=<nextCursor>` until `events` is empty; '
        + 'then `nextCursor` is what was sent: poll again later.',
      security: BILLING_AUTH,
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          after: { type: 'string', maxLength: 100, description: 'The `nextCursor` of the previous page; empty or absent: from the start.' },
          // A string, checked by the handler, so any bad value gets a message that says the range.
          limit: { type: 'string', description: 'Events per page: an integer from 1 to 1000 (default 100).' },
        },
      },
      response: {
        200: {
          description: 'A page of events.',
          type: 'object',
          required: ['events', 'nextCursor'],
          properties: {
            events: { type: 'array', items: eventSchema },
            nextCursor: { type: 'string', pattern: '^v1\\.[A-Za-z0-9_-]+$', description: 'Opaque: pass as `after` for the next page.' },
          },
        },
        400: badRequest, 401: unauthorized, 403: forbidden, 500: serverError,
      },
    },
  }, async (req, reply) => {
    const { after, limit } = req.query;
    let n = DEFAULT_PAGE;
    if (limit !== undefined) {
      if (!/^\d{1,7}$/.test(limit) || Number(limit) < 1 || Number(limit) > MAX_PAGE) {
        return reply.code(400).send({ error: `limit: expected an integer from 1 to ${MAX_PAGE}, got ${JSON.stringify(limit.slice(0, 40))}` });
      }
      n = Number(limit);
    }
    let from = FEED_START;
    if (after !== undefined && after !== '') {
      try {
        from = decodeCursor(after);
      } catch (err) {
        if (err instanceof BillingCursorError) return reply.code(400).send({ error: err.message });
        throw err;
      }
    }
    const page = await readFeed(opts.db, opts.shard, from, n);
    return { events: page.events, nextCursor: encodeCursor(page.next) };
  });
}
