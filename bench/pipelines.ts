// Real pipelines' costs on this machine (local VMs over real SSH, real Docker Engine, the GitLab
// and bucket emulators on loopback), each the median of --runs:
//  - start: pick-up -> the first line of the user's script, shell class vs docker class (image
//    present, pull_policy if-not-present): the docker executor's extra start latency;
//  - artifacts: a job writing --mib MiB of random data with and without `artifacts:` (zip +
//    POST), and a job with and without it as a dependency (GET + unzip): the difference per MiB;
//  - cache: a job restoring a --mib MiB cache vs the same job without a cache.
//   npm run bench:pipelines -- [--runs 3] [--mib 100]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/config/load.js';
import { startBucketEmulator } from '../src/emulators/buckets/server.js';
import { BUSYBOX_IMAGE, dockerUnavailable, ensureBusyboxImage } from '../src/emulators/docker-image.js';
import { startGitLabEmulator, type EmuJob, type EnqueueSpec } from '../src/emulators/gitlab/server.js';
import { createLogger } from '../src/isolation/redact.js';
import { startShard } from '../src/manager/shard.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' }, mib: { type: 'string', default: '100' } } });
const RUNS = Number(values.runs);
const MIB = Number(values.mib);
const noDocker = dockerUnavailable();
if (!noDocker) ensureBusyboxImage();

const dataDir = mkdtempSync(join(tmpdir(), 'rf-bench-pipelines-'));
const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1, maxArtifactBytes: (MIB + 64) * 1024 * 1024 });
const buckets = await startBucketEmulator();
writeFileSync(join(dataDir, 'sa.json'), JSON.stringify(buckets.gcsKey));
const config = parseConfig(`
shard: bench-pipelines
database: { url: "pglite:memory" }
gitlab: { url: "${gitlab.url}", pollInterval: 100ms, requestTimeout: 30s }
classes:
  shell:
    runnerToken: shell-token
    provider: local
    pool: { idle: 2, max: 4 }
${
  noDocker
    ? ''
    : `  docker:
    runnerToken: docker-token
    provider: local
    pool: { idle: 2, max: 4 }
    executor: docker
    defaultImage: "${BUSYBOX_IMAGE}"
    pullPolicy: if-not-present
`
}providers: { local: {} }
dataDir: "${dataDir}"
secrets: { key: "bench-secret-key-0123456789abcdef" }
cache: { type: gcs, bucket: bench-cache, credentialsFile: "${join(dataDir, 'sa.json')}", endpoint: "${buckets.url}" }
log: { level: warn }
`);
const shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, http: false, defaultMetrics: false });
const ready = async (n: number) => {
  while ((await shard.store.liveVms()).filter((v) => v.state === 'ready').length < n) await new Promise((r) => setTimeout(r, 100));
};
await ready(noDocker ? 2 : 4);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function run(spec: Omit<EnqueueSpec, 'runnerToken'>, token = 'shell-token'): Promise<EmuJob> {
  await ready(noDocker ? 2 : 4);
  const id = gitlab.enqueue({ git: false, ...spec, runnerToken: token });
  const j = await gitlab.waitForFinal(id, 10 * 60_000);
  if (j.state !== 'success') throw new Error(`job ${id} ${j.state}: ${j.trace.slice(-800)}`);
  return j;
}

/**
 * Seconds from pick-up to the user's first command. It prints the host's /proc/uptime (a
 * container sees the host's, at 10 ms; busybox date has no sub-second format), turned into epoch
 * time with this machine's boot time.
 */
const bootEpoch = Date.now() / 1000 - Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
function scriptStart(j: EmuJob): number {
  const m = /^rf-start ([\d.]+)$/m.exec(j.trace);
  return bootEpoch + Number(m![1]) - j.pickedAt! / 1000;
}
const duration = (j: EmuJob) => (j.finishedAt! - j.pickedAt!) / 1000;

const results: string[] = [];
const START = { script: ['read u _ < /proc/uptime; echo "rf-start $u"'] };
const shellStarts: number[] = [];
const dockerStarts: number[] = [];
for (let i = 0; i < RUNS * 2; i++) {
  shellStarts.push(scriptStart(await run(START)));
  if (!noDocker) dockerStarts.push(scriptStart(await run(START, 'docker-token')));
}
results.push(`start (pick-up -> first script line), median of ${RUNS * 2}: shell ${median(shellStarts).toFixed(3)} s; docker ${noDocker ? `n/a (${noDocker})` : `${median(dockerStarts).toFixed(3)} s (+${(median(dockerStarts) - median(shellStarts)).toFixed(3)} s)`}`);

const MAKE = { script: [`head -c ${MIB * 1024 * 1024} /dev/urandom > blob.bin`] };
const plain: number[] = [];
const withArtifacts: number[] = [];
let producer = 0;
for (let i = 0; i < RUNS; i++) {
  plain.push(duration(await run(MAKE)));
  const j = await run({ ...MAKE, name: 'producer', artifacts: [{ paths: ['blob.bin'], artifact_type: 'archive', artifact_format: 'zip' }] });
  withArtifacts.push(duration(j));
  producer = j.id;
}
const up = median(withArtifacts) - median(plain);
const noDep: number[] = [];
const withDep: number[] = [];
for (let i = 0; i < RUNS; i++) {
  noDep.push(duration(await run({ script: ['true'] })));
  withDep.push(duration(await run({ script: ['test -s blob.bin'], dependencies: [producer] })));
}
const down = median(withDep) - median(noDep);
results.push(`artifacts of ${MIB} MiB (random, so zip stores it): upload (collect + zip + POST) +${up.toFixed(2)} s = ${(MIB / up).toFixed(0)} MiB/s; download (GET + unzip) +${down.toFixed(2)} s = ${(MIB / down).toFixed(0)} MiB/s`);

const CACHE = { key: 'bench-1-non_protected', paths: ['blob.bin'] };
await run({ ...MAKE, cache: [{ ...CACHE, policy: 'push' }] });
const restore: number[] = [];
for (let i = 0; i < RUNS; i++) restore.push(duration(await run({ script: ['test -s blob.bin'], cache: [{ ...CACHE, policy: 'pull' }] })));
const restoreS = median(restore) - median(noDep);
results.push(`cache restore of ${MIB} MiB (signed GET + unzip): +${restoreS.toFixed(2)} s = ${(MIB / restoreS).toFixed(0)} MiB/s`);

console.log(results.join('\n'));
await shard.drain({ timeoutMs: 30_000 });
await gitlab.close();
await buckets.close();
rmSync(dataDir, { recursive: true, force: true });
process.exit(0);
