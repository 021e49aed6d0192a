// The Prometheus rules in deploy/prometheus: valid (promtool check rules) and behaving as their
// unit tests say (promtool test rules). CI installs promtool; elsewhere these skip without it.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const dir = resolve(import.meta.dirname, '../../deploy/prometheus');
const promtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' }).status === 0;
const files = readdirSync(dir);

describe.skipIf(!promtool)('deploy/prometheus rules (promtool)', () => {
  it.each(files.filter((f) => f.endsWith('.yml') && !f.endsWith('.test.yml')))('%s passes promtool check rules', (f) => {
    const r = spawnSync('promtool', ['check', 'rules', join(dir, f)], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });
  it.each(files.filter((f) => f.endsWith('.test.yml')))('%s passes promtool test rules', (f) => {
    const r = spawnSync('promtool', ['test', 'rules', f], { encoding: 'utf8', cwd: dir });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });
});

describe('rules and dashboard reference only metrics that exist', async () => {
  const { parse } = await import('yaml');
  const { createMetrics } = await import('../../src/manager/metrics.js');
  const metrics = createMetrics({ shard: 'x', defaultMetrics: false });
  const known = new Set<string>();
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    known.add(m.name);
    if (String(m.type) === 'histogram') for (const s of ['_bucket', '_count', '_sum']) known.add(m.name + s);
  }
  const exprs: { where: string; expr: string }[] = [];
  for (const f of files.filter((f) => f.endsWith('.yml') && !f.endsWith('.test.yml'))) {
    const doc = parse(readFileSync(join(dir, f), 'utf8')) as { groups: { rules: { record?: string; alert?: string; expr: string }[] }[] };
    for (const g of doc.groups) for (const r of g.rules) {
      if (r.record) known.add(r.record);
      exprs.push({ where: `${f}: ${r.record ?? r.alert}`, expr: r.expr });
    }
  }
  const dash = JSON.parse(readFileSync(resolve(dir, '../grafana/runner-fleet-slo.json'), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[]; templating: { list: { query?: string }[] } };
  for (const p of dash.panels) for (const t of p.targets) exprs.push({ where: `dashboard: ${p.title}`, expr: t.expr });
  for (const v of dash.templating.list) if (v.query?.includes('runner_fleet')) exprs.push({ where: 'dashboard variable', expr: v.query });

  it('every runner_fleet metric and recording rule named exists', () => {
    const missing = exprs.flatMap(({ where, expr }) => (expr.match(/runner_fleet[:_][A-Za-z0-9_:]*/g) ?? []).filter((n) => !known.has(n)).map((n) => `${where}: ${n}`));
    expect(missing).toEqual([]);
    expect(dash.panels.length).toBeGreaterThanOrEqual(10);
  });
});
