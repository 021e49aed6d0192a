// Prometheus scrape endpoint over the shard's registry.
import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../manager/metrics.js';

export async function metricsRoutes(app: FastifyInstance, opts: { metrics: Metrics }): Promise<void> {
  app.get('/metrics', async (_req, reply) => {
    const text = await opts.metrics.registry.metrics();
    return reply.type(opts.metrics.registry.contentType).send(text);
  });
}
