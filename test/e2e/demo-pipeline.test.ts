// The demo's two-stage pipeline on the demo's own config: build (in an image where Docker Engine
// runs) fills the cache and hands out/ on as an artifact, test gets it, and the next build finds
// the cache the first one saved in the bucket emulator.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { demoConfigYaml } from '../../src/cli/demo.js';
import { startBucketEmulator, type BucketEmulator } from '../../src/emulators/buckets/server.js';
import { BUSYBOX_IMAGE, dockerUnavailable, ensureBusyboxImage } from '../../src/emulators/docker-image.js';
import { pipelineJobs } from '../../src/emulators/gitlab/demo-jobs.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';

const docker = dockerUnavailable() === null;

describe(`the demo pipeline (${docker ? 'docker' : 'shell'} executor)`, () => {
  let gitlab: GitLabEmulator;
  let buckets: BucketEmulator;
  let shard: Shard;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-demo-pipeline-'));
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    buckets = await startBucketEmulator();
    writeFileSync(join(dataDir, 'cache-sa.json'), JSON.stringify(buckets.gcsKey));
    if (docker) ensureBusyboxImage();
    const config = parseConfig(demoConfigYaml({ gitlabUrl: gitlab.url, listen: '127.0.0.1:0', dataDir, bootDelay: '0s', bucketUrl: buckets.url, docker }));
    shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, demo: true, http: false });
  }, 60_000);

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await buckets?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('passes the artifact from build to test, and the second build restores the cache', async () => {
    const runnerToken = docker ? 'demo-docker-token' : 'demo-small-token';
    const jobs = pipelineJobs(docker ? BUSYBOX_IMAGE : null);
    const build = gitlab.enqueue({ ...jobs.build, runnerToken });
    const b = await gitlab.waitForFinal(build, 60_000);
    expect(b.state, b.trace).toBe('success');
    expect(b.trace).toContain('cache miss: fetching dependencies');
    const test = gitlab.enqueue({ ...jobs.test(build), runnerToken });
    const t = await gitlab.waitForFinal(test, 60_000);
    expect(t.state, t.trace).toBe('success');
    expect(t.trace).toContain(`testing: app built by job ${build}`);
    const again = await gitlab.waitForFinal(gitlab.enqueue({ ...jobs.build, runnerToken }), 60_000);
    expect(again.state, again.trace).toBe('success');
    expect(again.trace).toContain(`dependencies from the cache: deps fetched by job ${build}`);
    if (docker) expect(b.trace).toContain(`Using Docker executor with image ${BUSYBOX_IMAGE}`);
  });
});
