// `runner-fleet simulate`: the pool policy on a job trace, on a virtual clock.
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { UsageError, loadOrExplain } from './args.js';

export async function simulateCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string', short: 'c' }, trace: { type: 'string' }, policy: { type: 'string' },
      boot: { type: 'string', multiple: true }, seed: { type: 'string' }, report: { type: 'string' },
    },
    strict: true,
  });
  if (!values.config) throw new UsageError('--config FILE is required');
  if (!values.trace) throw new UsageError('--trace FILE is required');
  if (!values.report) throw new UsageError('--report FILE is required');
  if (values.policy !== undefined && values.policy !== 'static' && values.policy !== 'predictive') throw new UsageError(`--policy: expected static or predictive, got ${JSON.stringify(values.policy)}`);
  if (values.seed !== undefined && !/^\d{1,10}$/.test(values.seed)) throw new UsageError(`--seed: expected a non-negative integer, got ${JSON.stringify(values.seed)}`);
  const config = loadOrExplain(values.config);
  if (!config) return 1;
  const boot: Record<string, { medianS: number; p95S: number }> = {};
  for (const b of values.boot ?? []) {
    const m = /^([a-z0-9][a-z0-9-]*)=(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$/.exec(b);
    if (!m || Number(m[2]) <= 0 || Number(m[3]) < Number(m[2])) throw new UsageError(`--boot: expected CLASS=MEDIAN_S:P95_S with 0 < median <= p95, got ${JSON.stringify(b)}`);
    if (!config.classes[m[1]!]) throw new UsageError(`--boot: ${m[1]} is not a class of ${values.config} (${Object.keys(config.classes).join(', ')})`);
    boot[m[1]!] = { medianS: Number(m[2]), p95S: Number(m[3]) };
  }
  const { parseTrace, TraceError } = await import('../sim/trace.js');
  const { simulate } = await import('../sim/simulator.js');
  let jobs;
  try {
    jobs = parseTrace(readFileSync(values.trace, 'utf8'), new Set(Object.keys(config.classes)));
  } catch (err) {
    if (err instanceof TraceError) {
      process.stderr.write(`${values.trace}: invalid trace\n${err.message.split('\n').map((l) => `  ${l}`).join('\n')}\n`);
      return 1;
    }
    throw err;
  }
  const started = performance.now();
  const report = simulate({ config, jobs, ...(values.policy ? { policy: values.policy as 'static' | 'predictive' } : {}), boot, seed: Number(values.seed ?? 1) });
  writeFileSync(values.report, `${JSON.stringify(report, null, 2)}\n`);
  process.stderr.write(
    `simulated ${report.jobs} jobs in ${((performance.now() - started) / 1000).toFixed(1)} s: ${(report.startedWithin120s * 100).toFixed(2)}% started within 120 s, p50 ${report.startLatency.p50} s, p90 ${report.startLatency.p90} s, p99 ${report.startLatency.p99} s; report in ${values.report}\n`,
  );
  return 0;
}
