// A docker class's VM must provide Docker Engine: the boot probe asks it (until the boot
// deadline, as the engine may start after sshd) and fails a VM whose engine never answers,
// before any job reaches it. gcp class on the GCE emulator, whose VMs get a `docker` that fails.
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGceShard, type GceShard } from '../helpers/gce-shard.js';
import { waitUntil } from '../helpers/shard.js';

describe('docker executor boot check', () => {
  let env: GceShard;
  const shimDir = mkdtempSync(join(tmpdir(), 'rf-nodocker-'));

  beforeAll(async () => {
    writeFileSync(join(shimDir, 'docker'), '#!/bin/sh\necho "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2\nexit 1\n');
    chmodSync(join(shimDir, 'docker'), 0o755);
    env = await startGceShard({ shard: 'e2e-nodocker', className: 'docker-linux', token: 'nodocker-token', pool: '{ idle: 1, max: 2 }', extraPathDir: shimDir, classExtra: '    executor: docker\n    defaultImage: alpine\n', bootTimeout: '4s' });
  }, 60_000);

  afterAll(async () => {
    await env?.close();
    rmSync(shimDir, { recursive: true, force: true });
  });

  it('fails a VM whose Docker Engine does not answer (reason docker) and never makes it ready', async () => {
    const failures = async () => (await env.shard.metrics.vmFailures.get()).values.filter((v) => v.labels['reason'] === 'docker').reduce((a, v) => a + v.value, 0);
    await waitUntil(async () => (await failures()) >= 1, 30_000, 'a VM failed for want of Docker Engine');
    expect((await env.shard.store.liveVms()).every((v) => v.state !== 'ready')).toBe(true);
    expect((await env.shard.metrics.vmBoot.get()).values.filter((v) => v.metricName?.endsWith('_count')).reduce((a, v) => a + v.value, 0)).toBe(0);
  });
});
