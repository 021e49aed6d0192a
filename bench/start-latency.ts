// Start-latency benchmark: one synthetic day (bench/trace-gen.ts: weekly/daily shape, pipeline
// fan-out, merge trains) for two GCP Linux classes and a Windows class (bench/sim-shard.yaml),
// simulated with: no pool (every job cold-starts), the cheapest static `idle` per class that
// starts 90% of that class's jobs within 120 s (searched), and the predictive policy. Prints the
// README table and renders docs/start-latency.png (pool size and start latency over the day).
//   node --import tsx bench/start-latency.ts [--jobs 100000] [--seed 7] [--png docs/start-latency.png]
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Resvg } from '@resvg/resvg-js';
import { parseConfig } from '../src/config/load.js';
import type { ShardConfig } from '../src/config/types.js';
import { simulate, type SimReport } from '../src/sim/simulator.js';
import { generateTrace } from './trace-gen.js';
import { corpusTable, evaluateCorpus } from './policy-corpus.js';

const { values } = parseArgs({
  options: {
    jobs: { type: 'string', default: '100000' }, seed: { type: 'string', default: '7' }, png: { type: 'string', default: 'docs/start-latency.png' },
    // The policy corpus (bench/policy-corpus.ts): traces the policy did not learn from.
    'corpus-per-day': { type: 'string', default: '60000' }, 'no-corpus': { type: 'boolean', default: false },
    readme: { type: 'string', default: 'README.md' },
  },
});
const here = import.meta.dirname;
const base = parseConfig(readFileSync(resolve(here, 'sim-shard.yaml'), 'utf8'), { baseDir: here });
const jobs = generateTrace({ jobs: Number(values.jobs), days: 1, seed: Number(values.seed) });
const classes = Object.keys(base.classes);

function withPools(f: (name: string) => Partial<ShardConfig['classes'][string]['pool']>): ShardConfig {
  return { ...base, classes: Object.fromEntries(classes.map((n) => [n, { ...base.classes[n]!, pool: { ...base.classes[n]!.pool, ...f(n) } }])) };
}
const run = (config: ShardConfig, policy: 'static' | 'predictive', timelineS = 0): SimReport => simulate({ config, jobs, policy, seed: 1, ...(timelineS ? { timelineS } : {}) });
const staticPool = (idle: Record<string, number>) => withPools((n) => ({ policy: 'static', idle: idle[n] ?? 0, standby: 0, intake: 'auto' }));

/** Per class, the smallest static idle for which `ok` holds (classes share no VMs: searched one by one). */
function cheapestIdle(ok: (report: SimReport, name: string) => boolean): Record<string, number> {
  const idle: Record<string, number> = Object.fromEntries(classes.map((n) => [n, 0]));
  for (const n of classes) {
    const holds = (i: number) => ok(run(staticPool({ ...idle, [n]: i }), 'static'), n);
    if (holds(0)) continue;
    let lo = 0;
    let hi = 1;
    while (!holds(hi)) hi *= 2;
    while (lo + 1 < hi) {
      const mid = (lo + hi) >> 1;
      if (holds(mid)) hi = mid;
      else lo = mid;
    }
    idle[n] = hi;
  }
  return idle;
}
// The cheapest static idle meeting 90% within 120 s per class, and the cheapest as fast as
// predictive (p90 <= 10 s per class).
const idle = cheapestIdle((r, n) => r.byClass[n]!.startedWithin120s >= 0.9);
const fast = cheapestIdle((r, n) => r.byClass[n]!.startLatency.p90 <= 10);

const started = performance.now();
const predictive = run(base, 'predictive', 600);
const simSeconds = (performance.now() - started) / 1000;
const results: [string, SimReport][] = [
  ['no pool (cold start)', run(staticPool({}), 'static', 600)],
  [`static idle ${classes.map((n) => idle[n]).join('/')}`, run(staticPool(idle), 'static', 600)],
  [`static idle ${classes.map((n) => fast[n]).join('/')} (p90 <= 10 s)`, run(staticPool(fast), 'static', 600)],
  ['predictive', predictive],
];

const h = (s: number) => (s / 3600).toFixed(0);
const overhead = (r: SimReport) => r.bootVmSeconds + r.hotIdleVmSeconds;
console.log(`${jobs.length} jobs in one simulated day (${classes.join(', ')}); predictive simulated in ${simSeconds.toFixed(1)} s`);
console.log('');
console.log('| policy | within 120 s | p50 | p90 | p99 | boot VM-h | hot idle VM-h | standby VM-h | overhead / oracle | creates | stops | starts |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const [name, r] of results) {
  console.log(
    `| ${name} | ${(r.startedWithin120s * 100).toFixed(2)}% | ${r.startLatency.p50.toFixed(1)} s | ${r.startLatency.p90.toFixed(1)} s | ${r.startLatency.p99.toFixed(1)} s | ${h(r.bootVmSeconds)} | ${h(r.hotIdleVmSeconds)} | ${h(r.standbyVmSeconds)} | ${(overhead(r) / r.oracleOverheadVmSeconds).toFixed(2)}x | ${r.cloudCalls.create} | ${r.cloudCalls.stop} | ${r.cloudCalls.start} |`,
  );
}
const stat = results[1]![1];
console.log('');
const fastStat = results[2]![1];
console.log(`oracle overhead (one median boot per job): ${h(predictive.oracleOverheadVmSeconds)} VM-h; predictive overhead is ${((overhead(predictive) / overhead(stat)) * 100).toFixed(0)}% of the cheapest static setting's, ${((overhead(predictive) / overhead(fastStat)) * 100).toFixed(0)}% of the static setting as fast as it`);
console.log('');
console.log('| class | policy | within 120 s | p50 | p90 | p99 |');
console.log('|---|---|---|---|---|---|');
for (const n of classes) {
  for (const [name, r] of results) {
    const c = r.byClass[n]!;
    console.log(`| ${n} | ${name} | ${(c.startedWithin120s * 100).toFixed(2)}% | ${c.startLatency.p50.toFixed(1)} s | ${c.startLatency.p90.toFixed(1)} s | ${c.startLatency.p99.toFixed(1)} s |`);
  }
}

// ---- the plot ----------------------------------------------------------------------------------
const W = 1000;
const H = 560;
const pad = { l: 70, r: 20, t: 40, b: 40 };
const panelH = (H - pad.t - pad.b - 50) / 2;
const x = (t: number) => pad.l + (t / 86_400) * (W - pad.l - pad.r);
const tl = predictive.timeline!;
const sum = (m: Record<string, number>) => Object.values(m).reduce((a, b) => a + b, 0);
const series = { busy: tl.map((p) => sum(p.busy)), hot: tl.map((p) => sum(p.hot)), standby: tl.map((p) => sum(p.standby)) };
const maxVm = Math.max(...tl.map((_, i) => series.busy[i]! + series.hot[i]! + series.standby[i]!)) * 1.05;
const y1 = (v: number) => pad.t + panelH - (v / maxVm) * panelH;
const area = (lowers: number[], uppers: number[]) =>
  `M${tl.map((p, i) => `${x(p.t).toFixed(1)},${y1(uppers[i]!).toFixed(1)}`).join(' L')} L${tl
    .map((p, i) => `${x(p.t).toFixed(1)},${y1(lowers[i]!).toFixed(1)}`)
    .reverse()
    .join(' L')} Z`;
const zero = tl.map(() => 0);
const busyTop = series.busy;
const hotTop = tl.map((_, i) => series.busy[i]! + series.hot[i]!);
const standbyTop = tl.map((_, i) => hotTop[i]! + series.standby[i]!);
const top2 = pad.t + panelH + 50;
const latMax = 240;
const y2 = (v: number) => top2 + panelH - (Math.log10(Math.max(0.1, Math.min(latMax, v)) / 0.1) / Math.log10(latMax / 0.1)) * panelH;
const line = (r: SimReport, key: 'p90' | 'p50') => `M${r.latencyTimeline!.map((p) => `${x(p.t + 300).toFixed(1)},${y2(p[key]).toFixed(1)}`).join(' L')}`;
const colors = ['#999999', '#e6a700', '#9467bd', '#1f77b4'];
const hours = [0, 3, 6, 9, 12, 15, 18, 21, 24];
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="DejaVu Sans" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="${pad.l}" y="22" font-size="15" font-weight="bold">Predictive pool over a simulated day (${jobs.length.toLocaleString('en')} jobs, 3 classes)</text>
<path d="${area(zero, busyTop)}" fill="#9ecae1"/><path d="${area(busyTop, hotTop)}" fill="#fd8d3c"/><path d="${area(hotTop, standbyTop)}" fill="#c7e9c0"/>
<text x="${W - 300}" y="${pad.t + 14}"><tspan fill="#3182bd">■ busy</tspan>  <tspan fill="#e6550d">■ hot idle + booting</tspan>  <tspan fill="#31a354">■ standby</tspan></text>
<text x="14" y="${pad.t + panelH / 2}" transform="rotate(-90 14 ${pad.t + panelH / 2})" text-anchor="middle">VMs</text>
${[0, 0.5, 1].map((f) => `<text x="${pad.l - 6}" y="${y1(f * maxVm / 1.05) + 4}" text-anchor="end">${Math.round((f * maxVm) / 1.05)}</text>`).join('')}
<line x1="${pad.l}" y1="${pad.t + panelH}" x2="${W - pad.r}" y2="${pad.t + panelH}" stroke="#333"/>
${results.map(([name, r], i) => `<path d="${line(r, 'p90')}" fill="none" stroke="${colors[i]}" stroke-width="${i === results.length - 1 ? 2.5 : 1.2}"/>`).join('\n')}
<rect x="${W - 390}" y="${top2 - 2}" width="372" height="${results.length * 16 + 8}" fill="white" fill-opacity="0.85" stroke="#ccc"/>
${results.map(([name], i) => `<text x="${W - 380}" y="${top2 + 14 + i * 16}" fill="${colors[i]}">— p90 start latency, ${name.replace(/</g, '&lt;')}</text>`).join('\n')}
<line x1="${pad.l}" y1="${y2(120)}" x2="${W - pad.r}" y2="${y2(120)}" stroke="#d62728" stroke-dasharray="4 3"/><text x="${pad.l + 4}" y="${y2(120) - 4}" fill="#d62728">120 s SLO</text>
${[0.1, 1, 10, 100].map((v) => `<text x="${pad.l - 6}" y="${y2(v) + 4}" text-anchor="end">${v} s</text>`).join('')}
<text x="14" y="${top2 + panelH / 2}" transform="rotate(-90 14 ${top2 + panelH / 2})" text-anchor="middle">start latency (10-min windows)</text>
<line x1="${pad.l}" y1="${top2 + panelH}" x2="${W - pad.r}" y2="${top2 + panelH}" stroke="#333"/>
${hours.map((hh) => `<text x="${x(hh * 3600)}" y="${H - pad.b + 16}" text-anchor="middle">${String(hh).padStart(2, '0')}:00</text>`).join('')}
</svg>`;
const png = new Resvg(svg, { fitTo: { mode: 'width', value: W }, font: { loadSystemFonts: true } }).render().asPng();
mkdirSync(dirname(resolve(values.png)), { recursive: true });
writeFileSync(resolve(values.png), png);
console.log(`\nplot: ${values.png}`);

// ---- the policy corpus: unseen traces, per class, beside the cheapest static setting -----------
if (!values['no-corpus']) {
  const started2 = performance.now();
  const table = corpusTable(evaluateCorpus({ perDay: Number(values['corpus-per-day']) }));
  console.log(`\npolicy corpus (${((performance.now() - started2) / 1000).toFixed(0)} s):\n`);
  console.log(table);
  // Into the README, between its markers.
  const readme = resolve(values.readme);
  const text = readFileSync(readme, 'utf8');
  const start = '<!-- policy-corpus:start -->';
  const end = '<!-- policy-corpus:end -->';
  if (text.includes(start) && text.includes(end)) {
    writeFileSync(readme, `${text.slice(0, text.indexOf(start) + start.length)}\n${table}\n${text.slice(text.indexOf(end))}`);
    console.log(`\ntable written into ${values.readme}`);
  }
}
