// `runner-fleet demo`: the GitLab emulator with a stream of sample jobs (and a two-stage pipeline
// with artifacts and a cache), a bucket emulator for the cache, and one shard on its embedded
// defaults (PGlite, local SSH sandboxes; a docker class where Docker Engine runs).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../config/load.js';
import { startDemoFeed } from '../emulators/gitlab/demo-jobs.js';
import { startGitLabEmulator } from '../emulators/gitlab/server.js';
import { startBucketEmulator } from '../emulators/buckets/server.js';
import { BUSYBOX_IMAGE, dockerUnavailable, ensureBusyboxImage } from '../emulators/docker-image.js';
import { createLogger } from '../isolation/redact.js';
import { tuneHeap } from './heap.js';
import { startShard } from '../manager/shard.js';
import { untilSignal } from './signals.js';

export function demoConfigYaml(o: { gitlabUrl: string; listen: string; dataDir: string; bootDelay: string; bucketUrl?: string; docker?: boolean }): string {
  return `
shard: demo-1
database: { url: "pglite:${o.dataDir}/db" }  # on disk in the demo's temp dir: initdb runs in a worker (721 -> 330 MiB idle RSS)
http: { listen: "${o.listen}", adminToken: "\${RUNNER_FLEET_ADMIN_TOKEN:-demo-admin-token}" }
gitlab:
  url: "${o.gitlabUrl}"
  pollInterval: 1s
classes:
  saas-linux-small-amd64:
    runnerToken: "demo-small-token"
    provider: local
    costFactor: 1
    pool: { idle: 2, max: 6 }
    jobTimeout: 1h
  saas-linux-medium-amd64:
    runnerToken: "demo-medium-token"
    provider: local
    costFactor: 2
    pool: { idle: 1, max: 4 }
    jobTimeout: 1h
${
    o.docker
      ? `  saas-linux-docker-amd64:
    runnerToken: "demo-docker-token"
    provider: local
    costFactor: 1
    pool: { idle: 1, max: 4 }
    jobTimeout: 1h
    executor: docker
    defaultImage: "${BUSYBOX_IMAGE}"
    pullPolicy: if-not-present
`
      : ''
  }providers:
  local: { bootDelay: "${o.bootDelay}" }
dataDir: "${o.dataDir}"
${o.bucketUrl ? `cache: { type: gcs, bucket: demo-cache, prefix: demo-1, credentialsFile: "${o.dataDir}/cache-sa.json", endpoint: "${o.bucketUrl}" }
` : ''}`;
}

export async function runDemo(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      listen: { type: 'string', default: process.env['RUNNER_FLEET_LISTEN'] ?? '127.0.0.1:8080' },
      'boot-delay': { type: 'string', default: '2s' },
      jobs: { type: 'string' },
    },
    strict: true,
  });
  const log = createLogger({ level: process.env['LOG_LEVEL'] ?? 'info', shard: 'demo-1' });
  const dataDir = mkdtempSync(join(tmpdir(), 'runner-fleet-demo-'));
  const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
  log.info({ url: gitlab.url }, 'GitLab emulator listening');
  // The distributed cache: a bucket emulator, with the service account key it made.
  const buckets = await startBucketEmulator();
  writeFileSync(join(dataDir, 'cache-sa.json'), JSON.stringify(buckets.gcsKey), { mode: 0o600 });
  // Docker jobs where this machine has Docker Engine (the local VMs use it); else the pipeline runs in the shell.
  const noDocker = dockerUnavailable();
  if (noDocker) log.info(`no docker class in the demo: ${noDocker}; the two-stage pipeline runs with the shell executor`);
  else ensureBusyboxImage();
  const config = parseConfig(demoConfigYaml({ gitlabUrl: gitlab.url, listen: values.listen!, dataDir, bootDelay: values['boot-delay']!, bucketUrl: buckets.url, docker: !noDocker }));
  // demo: no secrets key needed (a key kept in the database, with a warning).
  tuneHeap();
  const shard = await startShard({ config, log, demo: true });
  const feed = startDemoFeed(gitlab, {
    runnerTokens: { 'saas-linux-small-amd64': 'demo-small-token', 'saas-linux-medium-amd64': 'demo-medium-token' },
    ...(values.jobs ? { limit: Number(values.jobs) } : {}),
    log,
    pipeline: noDocker ? { runnerToken: 'demo-small-token', image: null } : { runnerToken: 'demo-docker-token', image: BUSYBOX_IMAGE },
  });
  log.info(
    { status: `${shard.url}/`, metrics: `${shard.url}/metrics`, vms: `${shard.url}/v1/vms`, jobs: `${shard.url}/v1/jobs` },
    `demo running: the status page, Prometheus metrics and the admin API are served here (admin API: Authorization: Bearer ${config.http.adminToken === 'demo-admin-token' ? 'demo-admin-token' : '<RUNNER_FLEET_ADMIN_TOKEN>'}); Ctrl-C drains and exits`,
  );
  const code = await untilSignal(shard, log, async () => {
    feed.stop();
  });
  await gitlab.close();
  await buckets.close();
  rmSync(dataDir, { recursive: true, force: true });
  return code;
}
