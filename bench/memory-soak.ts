// Memory over many jobs (issue 11, item 10): one manager (PGlite, the gcp provider through the
// real client against the GCE emulator, its VMs SSH sandboxes) runs N short jobs, P at a time;
// after each window the heap is measured after a full GC. Flat means per-job state is released:
// provider maps, executor state, trace buffers.
//   node --expose-gc --import tsx bench/memory-soak.ts [--jobs 1000] [--parallel 4] [--window 100]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/config/load.js';
import { startGceEmulator } from '../emulators/gce/server.js';
import { startGitLabEmulator } from '../src/emulators/gitlab/server.js';
import { createLogger } from '../src/isolation/redact.js';
import { startShard } from '../src/manager/shard.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');
const { values } = parseArgs({ options: { jobs: { type: 'string', default: '1000' }, parallel: { type: 'string', default: '4' }, window: { type: 'string', default: '100' } } });
const jobs = Number(values.jobs);
const parallel = Number(values.parallel);
const window = Number(values.window);
const dataDir = mkdtempSync(join(tmpdir(), 'rf-bench-mem-'));
const gce = await startGceEmulator({ dataDir: join(dataDir, 'gce'), bootDelayMs: 100, operationRetentionMs: 30_000 });
const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
const config = parseConfig(`
shard: bench-mem
database: { url: "pglite:memory" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms }
classes:
  saas-linux-small-amd64:
    runnerToken: mem-token
    provider: gcp
    pool: { idle: ${parallel}, max: ${parallel * 2 + 2} }
    bootTimeout: 60s
    machine: { machineType: n2d-standard-2, image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64, zones: [us-central1-a, us-central1-b] }
providers:
  gcp: { project: mem-project, endpoint: "${gce.url}", requestsPerSecond: 500 }
dataDir: "${dataDir}"
secrets: { key: "bench-secret-key-0123456789abcdef" }
log: { level: warn }
`);
const shard = await startShard({ config, log: createLogger({ level: 'warn' }), http: false, defaultMetrics: false, connectOverride: gce.connectOverride });
const heapMiB = () => {
  gc();
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
};
const samples: { jobs: number; heapMiB: number; rssMiB: number }[] = [];
let done = 0;
let next = 0;
async function worker() {
  while (next < jobs) {
    next++;
    // ~20 KiB of output per job, a masked variable, so trace and masking state are exercised.
    const id = gitlab.enqueue({ runnerToken: 'mem-token', git: false, variables: [{ key: 'SECRET', value: 'soak-secret-value', masked: true }], script: ['for i in $(seq 1 200); do echo "line $i of soak output with $SECRET and padding padding padding"; done'] });
    const final = await gitlab.waitForFinal(id, 120_000);
    if (final.state !== 'success') throw new Error(`job ${id} ended ${final.state}`);
    gitlab.forget(id); // the emulators share this heap: keep theirs flat, measure the manager's
    if (++done % window === 0) {
      samples.push({ jobs: done, heapMiB: heapMiB(), rssMiB: process.memoryUsage().rss / 2 ** 20 });
      process.stderr.write(`${done} jobs: heap ${samples.at(-1)!.heapMiB.toFixed(1)} MiB, rss ${samples.at(-1)!.rssMiB.toFixed(0)} MiB\n`);
    }
  }
}
await Promise.all(Array.from({ length: parallel }, worker));
// Least-squares slope of heap over jobs, after the first window (warm-up: modules, caches).
const xs = samples.slice(1);
const mx = xs.reduce((s, p) => s + p.jobs, 0) / xs.length;
const my = xs.reduce((s, p) => s + p.heapMiB, 0) / xs.length;
const slope = xs.reduce((s, p) => s + (p.jobs - mx) * (p.heapMiB - my), 0) / xs.reduce((s, p) => s + (p.jobs - mx) ** 2, 0);
process.stdout.write(`${jobs} jobs, ${parallel} at a time: heap after GC ${xs[0]!.heapMiB.toFixed(1)} MiB at ${xs[0]!.jobs} jobs -> ${xs.at(-1)!.heapMiB.toFixed(1)} MiB at ${xs.at(-1)!.jobs}; slope ${(slope * 1024 * 1000).toFixed(1)} KiB per 1,000 jobs\n`);
await shard.drain({ timeoutMs: 30_000 });
await gitlab.close();
await gce.close();
rmSync(dataDir, { recursive: true, force: true });
