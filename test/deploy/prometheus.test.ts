// The Prometheus rules in deploy/prometheus: valid (promtool check rules) and behaving as their
// unit tests say (promtool test rules). CI installs promtool; elsewhere these skip without it.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { markdownAnchors, operationsAnchors } from './anchors.js';

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

// Every alert links its own runbook section in docs/operations.md, by one absolute URL form
// (Alertmanager notifications need a link that opens outside the repository).
const RUNBOOKS = 'https://github.com/runner-fleet/runner-fleet/blob/main/docs/operations.md#';
interface Alert {
  where: string;
  alert: string;
  annotations?: Record<string, string>;
}

function runbookProblems(alerts: Alert[], anchors: Set<string>): string[] {
  return alerts.flatMap(({ where, alert, annotations }) => {
    const url = annotations?.['runbook_url'];
    if (!url) return [`${where}: ${alert} has no runbook_url annotation`];
    if (!url.startsWith(RUNBOOKS)) return [`${where}: ${alert}: runbook_url must start with ${RUNBOOKS}, got ${url}`];
    const anchor = url.slice(RUNBOOKS.length);
    if (anchor !== alert.toLowerCase()) return [`${where}: ${alert}: runbook_url must point to its own section #${alert.toLowerCase()}, got #${anchor}`];
    return anchors.has(anchor) ? [] : [`${where}: ${alert}: docs/operations.md has no section #${anchor}`];
  });
}

describe('every alert has a runbook in docs/operations.md', async () => {
  const { parse } = await import('yaml');
  const alerts: Alert[] = [];
  for (const f of files.filter((f) => f.endsWith('.yml') && !f.endsWith('.test.yml'))) {
    const doc = parse(readFileSync(join(dir, f), 'utf8')) as { groups: { rules: { alert?: string; annotations?: Record<string, string> }[] }[] };
    for (const g of doc.groups) for (const r of g.rules) if (r.alert) alerts.push({ where: f, alert: r.alert, ...(r.annotations ? { annotations: r.annotations } : {}) });
  }

  it('each alert links the section of its own name, and the section exists', () => {
    expect(alerts.length).toBeGreaterThanOrEqual(10);
    expect(runbookProblems(alerts, operationsAnchors())).toEqual([]);
  });

  it('each runbook section belongs to an alert that exists (no stale runbooks)', () => {
    const md = readFileSync(resolve(dir, '../../docs/operations.md'), 'utf8');
    const runbookHeadings = [...md.matchAll(/^### (RunnerFleet\w+)\s*$/gm)].map((m) => m[1]!);
    expect(runbookHeadings.sort()).toEqual(alerts.map((a) => a.alert).sort());
  });

  it('a missing link, a wrong section or a missing section is caught', () => {
    const anchors = markdownAnchors('# Ops\n\n### RunnerFleetA\n\ntext\n');
    expect(runbookProblems([{ where: 'x.yml', alert: 'RunnerFleetA', annotations: { summary: 's' } }], anchors)).toEqual(['x.yml: RunnerFleetA has no runbook_url annotation']);
    expect(runbookProblems([{ where: 'x.yml', alert: 'RunnerFleetA', annotations: { runbook_url: `${RUNBOOKS}ops` } }], anchors)[0]).toContain('its own section #runnerfleeta');
    expect(runbookProblems([{ where: 'x.yml', alert: 'RunnerFleetB', annotations: { runbook_url: `${RUNBOOKS}runnerfleetb` } }], anchors)).toEqual(['x.yml: RunnerFleetB: docs/operations.md has no section #runnerfleetb']);
    expect(runbookProblems([{ where: 'x.yml', alert: 'RunnerFleetA', annotations: { runbook_url: `${RUNBOOKS}runnerfleeta` } }], anchors)).toEqual([]);
  });
});
