// Pick-up to first script line on a warm local VM: the part of start latency the manager owns.
// Runs N jobs through the GitLab emulator and a shard on PGlite with the local provider, one
// pipeline of `--parallel` jobs at a time so a warm VM is always waiting, then reads
// jobs.started_at - jobs.picked_at from the database.
//   node --import tsx bench/pickup-latency.ts [--jobs 120] [--parallel 2] [--idle 4]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/config/load.js';
import { startGitLabEmulator } from '../src/emulators/gitlab/server.js';
import { createLogger } from '../src/isolation/redact.js';
import { startShard } from '../src/manager/shard.js';

const { values } = parseArgs({ options: { jobs: { type: 'string', default: '120' }, parallel: { type: 'string', default: '2' }, idle: { type: 'string', default: '4' } } });
const jobs = Number(values.jobs);
const parallel = Number(values.parallel);
const dataDir = mkdtempSync(join(tmpdir(), 'rf-bench-'));
const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
const config = parseConfig(`
shard: bench
database: { url: "pglite:memory" }
http: { listen: "127.0.0.1:0" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms }
classes:
  saas-linux-small-amd64:
    runnerToken: bench-token
    provider: local
    costFactor: 1
    pool: { idle: ${Number(values.idle)}, max: ${Number(values.idle) + parallel + 2} }
providers: { local: {} }
dataDir: "${dataDir}"
secrets: { key: "bench-secret-key-0123456789abcdef" }
log: { level: warn }
`);
const shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, http: false, defaultMetrics: false });

async function warm(n: number) {
  while ((await shard.store.liveVms()).filter((v) => v.state === 'ready').length < n) await new Promise((r) => setTimeout(r, 50));
}

const started = Date.now();
for (let done = 0; done < jobs; done += parallel) {
  await warm(Math.min(parallel, Number(values.idle)));
  const ids = Array.from({ length: Math.min(parallel, jobs - done) }, () => gitlab.enqueue({ runnerToken: 'bench-token', script: ['echo hi'], git: false }));
  await Promise.all(ids.map((id) => gitlab.waitForFinal(id, 60_000)));
}
const rows = await shard.store.db
  .selectFrom('jobs')
  .innerJoin('vm_events', (j) => j.onRef('vm_events.vm_id', '=', 'jobs.vm_id').on('vm_events.to_state', '=', 'assigned'))
  .select(['jobs.picked_at', 'jobs.started_at', 'vm_events.at as bound_at'])
  .where('jobs.shard', '=', 'bench')
  .execute();
const done = rows.filter((r) => r.started_at);
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
  return { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: s[s.length - 1]! };
};
console.log(
  JSON.stringify({
    jobs: done.length,
    pickupToFirstLineMs: stats(done.map((r) => r.started_at!.getTime() - r.picked_at.getTime())),
    // the two parts: binding the job in the database, then SSH exec to the first output byte
    bindMs: stats(done.map((r) => r.bound_at.getTime() - r.picked_at.getTime())),
    execToFirstLineMs: stats(done.map((r) => r.started_at!.getTime() - r.bound_at.getTime())),
    wallSeconds: (Date.now() - started) / 1000,
  }),
);
await shard.drain({ timeoutMs: 30_000 });
await gitlab.close();
rmSync(dataDir, { recursive: true, force: true });
process.exit(0);
