// The predictive policy judged on traces it did not learn from (bench/trace-corpus.ts), per class:
// whether it keeps its own promise (share of jobs later than `target` at most `bound`, over the
// day and in every hour with 20+ jobs), its overhead against the oracle (boot + hot idle + 0.1 x
// standby VM-seconds over one median boot per job), the VMs it made that never ran a job, cloud
// calls per job, and beside it the cheapest static `idle` giving the class the same p90. Each
// trace runs with a standby tier (gcp: stop/start) and without one.
//   node --import tsx bench/policy-corpus.ts [--per-day 60000] [--seed 11] [--only NAME]
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/config/load.js';
import type { ShardConfig } from '../src/config/types.js';
import { priorResumeFraction } from '../src/manager/predictive.js';
import { overheadFloor, type Floor } from '../src/sim/bound.js';
import { simulate, type Figures, type SimulateOptions } from '../src/sim/simulator.js';
import type { TraceJob } from '../src/sim/trace.js';
import { CORPUS_BOOT, corpus, type Scenario } from './trace-corpus.js';

export interface CorpusRow {
  trace: string;
  standby: boolean;
  cls: string;
  predictive: Figures;
  staticIdle: number;
  staticFig: Figures;
  bound: number;
  /** The least overhead a policy that cannot foresee pipelines pays for the promise (src/sim/bound.ts). */
  floor: Floor;
}

const here = import.meta.dirname;

function onlyClass(config: ShardConfig, name: string, pool: Partial<ShardConfig['classes'][string]['pool']>): ShardConfig {
  return { ...config, classes: { [name]: { ...config.classes[name]!, pool: { ...config.classes[name]!.pool, ...pool } } } };
}

/** The cheapest static idle whose class p90 is at most `p90` (searched on the class alone). */
function cheapestStatic(base: SimulateOptions, name: string, jobs: TraceJob[], p90: number): { idle: number; fig: Figures } {
  const run = (idle: number) => simulate({ ...base, config: onlyClass(base.config, name, { policy: 'static', idle, standby: 0, intake: 'auto' }), jobs, policy: 'static' }).byClass[name]!;
  let hi = 1;
  let fig = run(0);
  if (fig.startLatency.p90 <= p90) return { idle: 0, fig };
  while ((fig = run(hi)).startLatency.p90 > p90 && hi < 1024) hi *= 2;
  if (fig.startLatency.p90 > p90) return { idle: Infinity, fig };
  let lo = Math.floor(hi / 2);
  let best = { idle: hi, fig };
  while (lo + 1 < hi) {
    const mid = (lo + hi) >> 1;
    const f = run(mid);
    if (f.startLatency.p90 <= p90) {
      hi = mid;
      best = { idle: mid, fig: f };
    } else lo = mid;
  }
  return best;
}

/** A live pool is warm when a day begins: the history's last hours run first, unmeasured. */
export const WARMUP_S = 6 * 3600;
const MONDAY = Date.parse('2026-11-23T00:00:00Z');

/** The day with its warm-up: history's last WARMUP_S seconds, then the day, WARMUP_S later. */
export function options(config: ShardConfig, sc: Scenario, standby: boolean): SimulateOptions {
  const week = 7 * 86_400;
  const warm = sc.history.filter((j) => j.arrivalS >= week - WARMUP_S).map((j) => ({ ...j, arrivalS: j.arrivalS - (week - WARMUP_S) }));
  const jobs = [...warm, ...sc.day.map((j) => ({ ...j, arrivalS: j.arrivalS + WARMUP_S }))];
  const bootScale = sc.bootScale ? Object.fromEntries(Object.entries(sc.bootScale).map(([k, f]) => [k, (t: number) => f(t - WARMUP_S)])) : undefined;
  return {
    config, jobs, boot: CORPUS_BOOT, seed: 1, standby,
    history: sc.history.map((j) => ({ ...j, arrivalS: j.arrivalS + WARMUP_S })),
    startMs: MONDAY - WARMUP_S * 1000,
    measureFromS: WARMUP_S,
    ...(bootScale ? { bootScale } : {}),
  };
}

export function evaluateCorpus(o: { perDay?: number; seed?: number; only?: string } = {}): CorpusRow[] {
  const config = parseConfig(readFileSync(resolve(here, 'sim-corpus.yaml'), 'utf8'), { baseDir: here });
  const rows: CorpusRow[] = [];
  const scenarios: Scenario[] = corpus({ ...(o.perDay ? { perDay: o.perDay } : {}), ...(o.seed ? { seed: o.seed } : {}) }).filter((s) => !o.only || s.name.includes(o.only));
  for (const sc of scenarios) {
    for (const standby of [true, false]) {
      const base = options(config, sc, standby);
      const pred = simulate({ ...base, policy: 'predictive' });
      for (const cls of Object.keys(config.classes)) {
        const p = pred.byClass[cls]!;
        if (!p.jobs) continue;
        const jobs = base.jobs.filter((j) => j.className === cls);
        const st = cheapestStatic(base, cls, jobs, p.startLatency.p90);
        const pool = config.classes[cls]!.pool;
        const boot = CORPUS_BOOT[cls]!;
        const resume = priorResumeFraction(pool);
        const floor = overheadFloor({
          arrivalsS: jobs.filter((j) => j.arrivalS >= WARMUP_S).map((j) => j.arrivalS), fromS: WARMUP_S,
          targetS: pool.targetMs / 1000, bound: pool.bound, boot,
          resume: standby ? { medianS: boot.medianS * resume, p95S: boot.p95S * resume } : null,
          ...(base.bootScale?.[cls] ? { bootScale: base.bootScale[cls] } : {}),
        });
        rows.push({ trace: sc.name, standby, cls, predictive: p, staticIdle: st.idle, staticFig: st.fig, bound: pool.bound, floor });
      }
    }
  }
  return rows;
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export function corpusTable(rows: CorpusRow[]): string {
  const out = [
    '| trace | standby | class | jobs | late, day / worst hour (bound 5%) | kept | p90 | overhead / oracle | floor / oracle | never used | calls / job | static idle, same p90: overhead / oracle |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const p = r.predictive;
    const kept = p.lateShare <= r.bound && p.worstHourLateShare <= r.bound;
    const goal = r.standby ? 2.0 : 2.5;
    out.push(
      `| ${r.trace} | ${r.standby ? 'yes' : 'no'} | ${r.cls} | ${p.jobs} | ${pct(p.lateShare)} / ${pct(p.worstHourLateShare)} | ${kept ? 'yes' : '**no**'} | ${p.startLatency.p90.toFixed(1)} s | ${p.overheadVsOracle.toFixed(2)}x${p.overheadVsOracle > goal ? ' (over)' : ''} | ${r.floor.overheadVsOracle.toFixed(2)}x${r.floor.overheadVsOracle > goal ? ' (goal out of reach)' : ''} | ${pct(p.neverUsedShare)} | ${p.callsPerJob.toFixed(2)} | ${Number.isFinite(r.staticIdle) ? `${r.staticIdle}: ${r.staticFig.overheadVsOracle.toFixed(2)}x` : `none up to 1024 (${r.staticFig.startLatency.p90.toFixed(1)} s at 1024)`} |`,
    );
  }
  const kept = rows.filter((r) => r.predictive.lateShare <= r.bound && r.predictive.worstHourLateShare <= r.bound).length;
  const reachable = rows.filter((r) => r.floor.overheadVsOracle <= (r.standby ? 2.0 : 2.5));
  const within = reachable.filter((r) => r.predictive.overheadVsOracle <= (r.standby ? 2.0 : 2.5)).length;
  out.push('', `promise kept in ${kept} of ${rows.length} (trace, standby, class) cells; overhead goal within reach (floor at or below it) in ${reachable.length}, met in ${within}`);
  return out.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { 'per-day': { type: 'string', default: '60000' }, seed: { type: 'string', default: '11' }, only: { type: 'string' } } });
  const started = performance.now();
  const rows = evaluateCorpus({ perDay: Number(values['per-day']), seed: Number(values.seed), ...(values.only ? { only: values.only } : {}) });
  console.log(corpusTable(rows));
  console.log(`\n(${((performance.now() - started) / 1000).toFixed(0)} s)`);
}
