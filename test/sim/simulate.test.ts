// runner-fleet simulate: the report contract (keys, units, per-class split), determinism by seed,
// trace errors naming the row, and the policies' effect on a small crafted trace.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { simulate } from '../../src/sim/simulator.js';
import { parseTrace } from '../../src/sim/trace.js';

const dir = mkdtempSync(join(tmpdir(), 'rf-sim-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const yaml = (pool: string) => `
shard: sim-t
gitlab: { url: "http://127.0.0.1:9", pollInterval: 2s }
providers: { local: {} }
classes:
  linux-a: { runnerToken: a, provider: local, pool: ${pool} }
  linux-b: { runnerToken: b, provider: local, pool: ${pool} }
`;

/** Two classes; a pipeline of 10 jobs every 2 minutes for an hour, plus a few strays. */
function trace(): string {
  const rows: string[] = [];
  for (let p = 0; p < 30; p++) for (let j = 0; j < 10; j++) rows.push(`${p * 120},${j % 3 === 0 ? 'linux-b' : 'linux-a'},${30 + ((p * 7 + j * 13) % 90)}`);
  rows.push('3601.5,linux-a,12.25', '17.25,linux-b,5');
  // Any order.
  rows.reverse();
  return `arrival_s,class,duration_s\n${rows.join('\n')}\n`;
}

const KEYS = ['jobs', 'startedWithin120s', 'startLatency', 'busyVmSeconds', 'bootVmSeconds', 'hotIdleVmSeconds', 'standbyVmSeconds', 'oracleOverheadVmSeconds', 'cloudCalls', 'byClass'];

describe('runner-fleet simulate', () => {
  it('writes the report contract from the command line', () => {
    const config = join(dir, 'shard.yaml');
    const tracePath = join(dir, 'trace.csv');
    const report = join(dir, 'out.json');
    writeFileSync(config, yaml('{ idle: 3, max: 40, intake: auto }'));
    writeFileSync(tracePath, trace());
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'simulate', '--config', config, '--trace', tracePath, '--policy', 'static', '--boot', 'linux-a=20:45', '--boot', 'linux-b=2:4', '--seed', '3', '--report', report], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toMatch(/simulated 302 jobs/);
    expect(r.status).toBe(0);
    const out = JSON.parse(readFileSync(report, 'utf8'));
    for (const k of KEYS) expect(out).toHaveProperty(k);
    expect(Object.keys(out.startLatency).sort()).toEqual(['max', 'p50', 'p90', 'p99']);
    expect(Object.keys(out.cloudCalls).sort()).toEqual(['create', 'delete', 'list', 'start', 'stop']);
    expect(Object.keys(out.byClass).sort()).toEqual(['linux-a', 'linux-b']);
    expect(out.jobs).toBe(302);
    expect(out.byClass['linux-a'].jobs + out.byClass['linux-b'].jobs).toBe(302);
    expect(out.startedWithin120s).toBeGreaterThan(0.5);
    expect(out.startedWithin120s).toBeLessThanOrEqual(1);
    // Busy time is exactly the jobs' durations; every job's VM is deleted after it.
    const total = trace().trim().split('\n').slice(1).reduce((a, l) => a + Number(l.split(',')[2]), 0);
    expect(out.busyVmSeconds).toBeCloseTo(total, 1);
    expect(out.cloudCalls.delete).toBeGreaterThanOrEqual(302);
    // The oracle: one median boot per job, per class.
    expect(out.byClass['linux-a'].oracleOverheadVmSeconds).toBe(out.byClass['linux-a'].jobs * 20);
    expect(out.byClass['linux-b'].oracleOverheadVmSeconds).toBe(out.byClass['linux-b'].jobs * 2);
    expect(out.startLatency.p50).toBeLessThanOrEqual(out.startLatency.p90);
    expect(out.startLatency.p99).toBeLessThanOrEqual(out.startLatency.max);
  });

  it('names the row of a bad trace line and refuses unknown classes', () => {
    const classes = new Set(['linux-a']);
    expect(() => parseTrace('arrival,class,duration\n1,linux-a,2\n', classes)).toThrow(/line 1: expected the header "arrival_s,class,duration_s"/);
    expect(() => parseTrace('arrival_s,class,duration_s\n1,linux-a,2\n5,macos-xl,3\n', classes)).toThrow(/line 3: class: "macos-xl" is not a class of the shard config/);
    expect(() => parseTrace('arrival_s,class,duration_s\n1,linux-a,-2\nx,linux-a,1\n', classes)).toThrow(/line 2: duration_s: expected seconds >= 0[\s\S]*line 3: arrival_s/);
    const config = join(dir, 'shard2.yaml');
    writeFileSync(config, yaml('{ idle: 1, max: 4 }'));
    writeFileSync(join(dir, 'bad.csv'), 'arrival_s,class,duration_s\n1,nope,2\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'simulate', '--config', config, '--trace', join(dir, 'bad.csv'), '--report', join(dir, 'x.json')], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('line 2: class: "nope" is not a class');
  });

  const run = (pool: string, o: { seed?: number; policy?: 'static' | 'predictive' } = {}) => {
    const config = parseConfig(yaml(pool));
    return simulate({ config, jobs: parseTrace(trace(), new Set(Object.keys(config.classes))), boot: { 'linux-a': { medianS: 35, p95S: 60 }, 'linux-b': { medianS: 35, p95S: 60 } }, seed: o.seed ?? 1, ...(o.policy ? { policy: o.policy } : {}) });
  };

  it('is deterministic for a seed', () => {
    expect(run('{ idle: 2, max: 40, intake: auto }', { seed: 5 })).toEqual(run('{ idle: 2, max: 40, intake: auto }', { seed: 5 }));
    expect(run('{ idle: 2, max: 40, intake: auto }', { seed: 5 })).not.toEqual(run('{ idle: 2, max: 40, intake: auto }', { seed: 6 }));
  });

  it('cold start waits a boot per job; a warm pool starts jobs at once at an idle cost', () => {
    const cold = run('{ idle: 0, max: 40, intake: auto }');
    const warm = run('{ idle: 12, max: 60, intake: auto }');
    expect(cold.hotIdleVmSeconds).toBe(0);
    expect(cold.startLatency.p50).toBeGreaterThan(30);
    expect(warm.startLatency.p50).toBeLessThan(3);
    expect(warm.hotIdleVmSeconds).toBeGreaterThan(10 * 3600);
    expect(cold.jobsNotStarted + warm.jobsNotStarted).toBe(0);
  });

  it('preemptive intake with nothing warm never starts a job (why intake defaults matter)', () => {
    const stalled = run('{ idle: 0, max: 40, intake: preemptive }');
    expect(stalled.jobsNotStarted).toBe(302);
    expect(stalled.startedWithin120s).toBe(0);
  });

  it('predictive holds VMs ahead of the pipelines and starts most jobs at once', () => {
    const p = run('{ idle: 0, max: 200, intake: auto, target: 10s, bound: 0.05 }', { policy: 'predictive' });
    const cold = run('{ idle: 0, max: 200, intake: auto }');
    expect(p.startLatency.p90).toBeLessThan(cold.startLatency.p90);
    expect(p.startedWithin120s).toBe(1);
  });

  it('standby by suspend resumes faster than by stop: the same standby tier starts jobs sooner', () => {
    const gcp = (mode: string) => `
shard: sim-g
gitlab: { url: "http://127.0.0.1:9", pollInterval: 2s }
providers: { gcp: { project: sim-project } }
classes:
  linux-a: { runnerToken: a, provider: gcp, machine: { machineType: n2d-standard-2, image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64, zones: [us-central1-a] }, pool: { idle: 1, standby: 12, standbyMode: ${mode}, max: 60, intake: auto, idleTime: 0s } }
  linux-b: { runnerToken: b, provider: gcp, machine: { machineType: n2d-standard-2, image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64, zones: [us-central1-a] }, pool: { idle: 1, standby: 6, standbyMode: ${mode}, max: 60, intake: auto, idleTime: 0s } }
`;
    const sim = (mode: string) => {
      const config = parseConfig(gcp(mode));
      return simulate({ config, jobs: parseTrace(trace(), new Set(Object.keys(config.classes))), boot: { 'linux-a': { medianS: 35, p95S: 60 }, 'linux-b': { medianS: 35, p95S: 60 } }, seed: 3 });
    };
    const stop = sim('stop');
    const suspend = sim('suspend');
    expect(stop.cloudCalls.start).toBeGreaterThan(50); // the standby tier is used
    expect(suspend.cloudCalls.start).toBeGreaterThan(50);
    expect(suspend.startLatency.p90).toBeLessThan(stop.startLatency.p90);
    expect(suspend.bootVmSeconds).toBeLessThan(stop.bootVmSeconds);
  });
  it('learns the boots of VMs made for standby, as the live pool does: a slower cloud is planned for', () => {
    // Nearly every VM of a class with standby is made for standby (booted once, then stopped).
    // The live pool learns every boot it sees; the simulator learnt only boots of VMs made hot,
    // so under a boot drift it planned the standby tier for the prior's boots (the corpus's
    // slower-zone trace: GPU with standby 4-9% late over the day, 0.6% once learnt).
    const config = parseConfig(`
shard: sim-s
gitlab: { url: "http://127.0.0.1:9", pollInterval: 2s }
providers: { gcp: { project: sim-project } }
classes:
  gpu: { runnerToken: g, provider: gcp, machine: { machineType: g2-standard-4, image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64, zones: [us-central1-a] }, pool: { idle: 0, max: 300, policy: predictive, target: 10s, bound: 0.05, intake: auto } }
`);
    // Two hours of pipelines (Poisson, two a minute; 1-8 jobs of 5-15 minutes), seeded.
    let x = 9;
    const rnd = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const jobs: { arrivalS: number; className: string; durationS: number }[] = [];
    for (let t = 0; t < 2 * 3600; t += -Math.log(1 - rnd()) * 30) {
      const n = 1 + Math.floor(rnd() * 8);
      for (let j = 0; j < n; j++) jobs.push({ arrivalS: Math.round(t * 1000) / 1000, className: 'gpu', durationS: 300 + Math.round(rnd() * 600) });
    }
    // Boots (and resumes) take twice the prior's 70 s (resume 17.5 s).
    const r = simulate({ config, jobs, boot: { gpu: { medianS: 70, p95S: 130 } }, bootScale: { gpu: () => 2 }, standby: true, seed: 5 });
    expect(r.byClass['gpu']!.cloudCalls.start).toBeGreaterThan(r.jobs / 2); // served through standby
    // Every boot that ended was learnt (the creates still booting at the end were not).
    const learnt = r.learnt!['gpu']!;
    const calls = r.byClass['gpu']!.cloudCalls;
    expect(learnt.bootS.observed).toBeGreaterThan(calls.create * 0.95);
    expect(learnt.bootS.observed).toBeLessThanOrEqual(calls.create);
    expect(learnt.resumeS.observed).toBeGreaterThan(calls.start * 0.95);
    // Planned for the slower cloud, not the prior (70 s; 17.5 s).
    expect(learnt.bootS.median).toBeGreaterThan(110);
    expect(learnt.resumeS.median).toBeGreaterThan(28);
  });
});
