// GET /metrics: every metric is documented in docs/operations.md, labels stay bounded (no per-job or per-VM
// series: those grow with every job and never go away), and the event-loop lag histogram sees a
// blocked loop.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { metricsRoutes } from '../../src/api/metrics.js';
import { createMetrics } from '../../src/manager/metrics.js';

const readme = readFileSync(resolve(import.meta.dirname, '../../docs/operations.md'), 'utf8');
const documented = new Set([...readme.matchAll(/^\| `(runner_fleet_[a-z0-9_]+)` \|/gm)].map((m) => m[1]!));
/** Label names whose values come from config or a closed set, never from jobs or VMs. */
const BOUNDED_LABELS = new Set(['class', 'state', 'result', 'reason', 'outcome', 'provider', 'operation', 'zone', 'sink', 'kind']);

describe('GET /metrics', () => {
  it('serves exactly the metrics docs/operations.md documents', async () => {
    const metrics = createMetrics({ shard: 's', defaultMetrics: false });
    const names = (await metrics.registry.getMetricsAsJSON()).map((m) => m.name).sort();
    expect(names).toEqual([...documented].sort());
    metrics.stop();
  });

  it('labels every series by bounded values only: class, state, provider and the like, never a job or VM', async () => {
    const metrics = createMetrics({ shard: 's', defaultMetrics: false });
    const unbounded = (await metrics.registry.getMetricsAsJSON()).flatMap((m) =>
      ((m as unknown as { labelNames?: string[] }).labelNames ?? []).filter((l) => !BOUNDED_LABELS.has(l)).map((l) => `${m.name}{${l}}`),
    );
    const get = (name: string) => metrics.registry.getSingleMetric(name) as unknown as { labelNames: string[] };
    expect(get('runner_fleet_vms').labelNames).toEqual(['class', 'state']); // the check reads the real label names
    expect(unbounded).toEqual([]);
    metrics.stop();
  });

  it('exports the event-loop lag as a histogram that sees a blocked loop', async () => {
    const metrics = createMetrics({ shard: 's', defaultMetrics: false, eventLoopLag: true });
    const app = Fastify();
    await app.register(metricsRoutes, { metrics });
    try {
      await new Promise((r) => setTimeout(r, 150));
      const end = Date.now() + 300;
      while (Date.now() < end); // a 300 ms synchronous stretch, as a stalled manager has
      await new Promise((r) => setTimeout(r, 150));
      const text = (await app.inject({ method: 'GET', url: '/metrics' })).body;
      const bucket = (le: string) => Number(new RegExp(`^runner_fleet_event_loop_lag_seconds_bucket\\{le="${le.replace(/[+.]/g, '\\$&')}",shard="s"\\} (\\d+)$`, 'm').exec(text)?.[1]);
      const count = Number(/^runner_fleet_event_loop_lag_seconds_count\{shard="s"\} (\d+)$/m.exec(text)?.[1]);
      expect(count).toBeGreaterThanOrEqual(2);
      expect(bucket('0.1')).toBeLessThan(count); // at least one sample at least 100 ms late
      expect(bucket('+Inf')).toBe(count);
    } finally {
      metrics.stop();
      await app.close();
    }
  });
});
