// Burst hand-out with classes.<name>.requestConcurrency: `--jobs` jobs released at once onto as
// many warm local VMs, through the GitLab emulator (optionally answering /jobs/request after
// `--delay` ms, like a loaded GitLab) and a shard on PGlite. Prints the time until GitLab had
// handed out every job and until every job printed its first line.
//   node --import tsx bench/intake-concurrency.ts [--jobs 100] [--concurrency 8] [--delay 0]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/config/load.js';
import { startGitLabEmulator } from '../src/emulators/gitlab/server.js';
import { createLogger } from '../src/isolation/redact.js';
import { startShard } from '../src/manager/shard.js';

const { values } = parseArgs({ options: { jobs: { type: 'string', default: '100' }, concurrency: { type: 'string', default: '8' }, delay: { type: 'string', default: '0' } } });
const jobs = Number(values.jobs);
const dataDir = mkdtempSync(join(tmpdir(), 'rf-bench-'));
const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
const config = parseConfig(`
shard: bench
database: { url: "pglite:memory" }
http: { listen: "127.0.0.1:0" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms, requestTimeout: 30s }
classes:
  saas-linux-small-amd64:
    runnerToken: bench-token
    provider: local
    costFactor: 1
    pool: { idle: ${jobs}, max: ${jobs + 2} }
    bootTimeout: 10m
    requestConcurrency: ${Number(values.concurrency)}
providers: { local: {} }
dataDir: "${dataDir}"
secrets: { key: "bench-secret-key-0123456789abcdef" }
log: { level: warn }
`);
const shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, http: false, defaultMetrics: false });
const warmStart = Date.now();
while ((await shard.store.liveVms()).filter((v) => v.state === 'ready').length < jobs) await new Promise((r) => setTimeout(r, 200));
const warmSeconds = (Date.now() - warmStart) / 1000;
await new Promise((r) => setTimeout(r, 1000)); // let the pool settle after warm-up

gitlab.faults.requestDelayMs = Number(values.delay);
const released = Date.now();
const ids = Array.from({ length: jobs }, () => gitlab.enqueue({ runnerToken: 'bench-token', script: ['echo hi', 'sleep 2'], git: false }));
while (!ids.every((id) => gitlab.job(id).pickedAt !== undefined)) await new Promise((r) => setTimeout(r, 10));
const handedOutMs = Math.max(...ids.map((id) => gitlab.job(id).pickedAt!)) - released;
let started: Date[] = [];
for (;;) {
  const rows = await shard.store.db.selectFrom('jobs').select('started_at').where('shard', '=', 'bench').execute();
  started = rows.flatMap((r) => (r.started_at ? [r.started_at] : []));
  if (started.length >= jobs) break;
  await new Promise((r) => setTimeout(r, 20));
}
const allStartedMs = Math.max(...started.map((d) => d.getTime())) - released;
console.log(
  JSON.stringify({
    jobs,
    requestConcurrency: Number(values.concurrency),
    requestDelayMs: Number(values.delay),
    warmSeconds,
    allHandedOutMs: handedOutMs,
    handoutsPerSecond: Math.round((jobs / handedOutMs) * 1000 * 10) / 10,
    allStartedMs,
    maxRequestsInFlight: gitlab.stats().maxRequestsInFlight,
  }),
);
await Promise.all(ids.map((id) => gitlab.waitForFinal(id, 120_000)));
await shard.drain({ timeoutMs: 60_000 });
await gitlab.close();
rmSync(dataDir, { recursive: true, force: true });
process.exit(0);
