// Prometheus scrape endpoint over the shard's registry.
import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../manager/metrics.js';
import { serverError, textReply } from './schemas.js';

export async function metricsRoutes(app: FastifyInstance, opts: { metrics: Metrics }): Promise<void> {
  app.get('/metrics', {
    schema: {
      tags: ['metrics'], summary: 'Prometheus metrics',
      description: 'Every `runner_fleet_*` metric of this shard in the Prometheus text format (version 0.0.4). No token: aggregates only.',
      response: { 200: textReply('The scrape.'), 500: serverError },
    },
  }, async (_req, reply) => {
    const text = await opts.metrics.registry.metrics();
    return reply.type(opts.metrics.registry.contentType).send(text);
  });
}
