// Compute Engine API calls per job: N jobs through the GitLab emulator and a shard (PGlite, the
// gcp provider through the real @google-cloud/compute client) against the GCE emulator, which
// counts every call by method. The warm pool is filled first; the calls counted are those of
// serving the jobs (creating replacement VMs, polling, deleting), at the default pool tick.
//   node --import tsx bench/gcp-api-calls.ts [--jobs 200] [--idle 4] [--parallel 4] [--boot-ms 300]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/config/load.js';
import { startGceEmulator, type GceCall } from '../emulators/gce/server.js';
import { startGitLabEmulator } from '../src/emulators/gitlab/server.js';
import { createLogger } from '../src/isolation/redact.js';
import { startShard } from '../src/manager/shard.js';

const { values } = parseArgs({ options: { jobs: { type: 'string', default: '200' }, idle: { type: 'string', default: '4' }, parallel: { type: 'string', default: '4' }, 'boot-ms': { type: 'string', default: '300' } } });
const jobs = Number(values.jobs);
const idle = Number(values.idle);
const parallel = Number(values.parallel);
const dataDir = mkdtempSync(join(tmpdir(), 'rf-bench-gcp-'));
const gce = await startGceEmulator({ dataDir: join(dataDir, 'gce'), bootDelayMs: Number(values['boot-ms']) });
const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 3 });
const config = parseConfig(`
shard: bench-gcp
database: { url: "pglite:memory" }
http: { listen: "127.0.0.1:0" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms }
classes:
  saas-linux-small-amd64:
    runnerToken: bench-token
    provider: gcp
    pool: { idle: ${idle}, max: ${idle + parallel + 2} }
    bootTimeout: 60s
    machine:
      machineType: n2d-standard-2
      image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64
      zones: [us-central1-a, us-central1-b]
providers:
  gcp: { project: bench-project, endpoint: "${gce.url}", requestsPerSecond: 200 }
dataDir: "${dataDir}"
secrets: { key: "bench-secret-key-0123456789abcdef" }
log: { level: warn }
`);
const shard = await startShard({ config, log: createLogger({ level: 'warn' }), http: false, defaultMetrics: false, connectOverride: gce.connectOverride });
const ready = async () => (await shard.store.liveVms()).filter((v) => v.state === 'ready').length;
while ((await ready()) < idle) await new Promise((r) => setTimeout(r, 50));
gce.resetCalls();

const started = Date.now();
let next = 0;
async function worker() {
  while (next < jobs) {
    next++;
    const id = gitlab.enqueue({ runnerToken: 'bench-token', script: ['echo hi'], git: false });
    const final = await gitlab.waitForFinal(id, 120_000);
    if (final.state !== 'success') throw new Error(`job ${id} ended ${final.state}`);
  }
}
await Promise.all(Array.from({ length: parallel }, worker));
// Let the last deletes and replacements settle, so every job's calls are counted.
const settle = Date.now() + 30_000;
while (Date.now() < settle && ((await ready()) < idle || (await shard.store.liveVms()).some((v) => v.state !== 'ready'))) await new Promise((r) => setTimeout(r, 100));
const wall = (Date.now() - started) / 1000;
const calls = { ...gce.calls } as Record<GceCall, number>;

const groups: Record<string, GceCall[]> = {
  creates: ['insert', 'bulkInsert', 'setMetadata', 'setLabels'],
  deletes: ['delete'],
  polls: ['aggregatedList', 'list', 'get'],
  'operation waits': ['operationsWait', 'operationsGet'],
  other: ['stop', 'start', 'serialPort'],
};
const total = Object.values(calls).reduce((a, b) => a + b, 0);
console.log(`${jobs} jobs, ${parallel} at a time, idle ${idle}, pool tick 500 ms, emulator boot ${values['boot-ms']} ms: ${wall.toFixed(1)} s, ${(jobs / wall).toFixed(1)} jobs/s`);
console.log('| group | methods | calls | per job |');
console.log('|---|---|---|---|');
for (const [g, ms] of Object.entries(groups)) {
  const n = ms.reduce((a, m) => a + (calls[m] ?? 0), 0);
  if (n === 0 && g === 'other') continue;
  console.log(`| ${g} | ${ms.filter((m) => calls[m]).map((m) => `${m} ${calls[m]}`).join(', ') || '-'} | ${n} | ${(n / jobs).toFixed(2)} |`);
}
console.log(`| total | | ${total} | ${(total / jobs).toFixed(2)} |`);
const vms = await shard.store.db.selectFrom('vms').select(['failure']).where('shard', '=', 'bench-gcp').execute();
const failures = vms.filter((v) => v.failure).map((v) => v.failure!.slice(0, 80));
console.log(`VMs created: ${vms.length} (${failures.length} failed${failures.length ? `: ${[...new Set(failures)].join('; ')}` : ''})`);
await shard.drain({ timeoutMs: 30_000 });
await gitlab.close();
await gce.close();
rmSync(dataDir, { recursive: true, force: true });
process.exit(0);
