// The billing feed for the billing pipeline: GET /v1/billing/events?after=CURSOR&limit=N behind
// its own bearer token (billing.token). Paging with the returned nextCursor yields every event
// of the shard exactly once, in order (billing-feed.ts says how).
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { BillingCursorError, decodeCursor, DEFAULT_PAGE, encodeCursor, FEED_START, MAX_PAGE, readFeed } from '../manager/billing-feed.js';
import { requireBearer } from './auth.js';

export interface BillingApiOptions {
  db: Kysely<Database>;
  shard: string;
  token: string | null;
}

export async function billingRoutes(app: FastifyInstance, opts: BillingApiOptions): Promise<void> {
  app.addHook('onRequest', requireBearer(opts.token, 'billing API disabled: set billing.token'));
  app.get<{ Querystring: { after?: string; limit?: string } }>('/v1/billing/events', {
    schema: {
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: { after: { type: 'string', maxLength: 100 }, limit: { type: 'string' } },
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
