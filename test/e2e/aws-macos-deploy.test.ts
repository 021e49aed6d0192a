// A deploy of a shard with aws Linux and mac classes (as deploy/examples/aws-macos-shard.yaml)
// while no Mac host is ready yet: the macOS jobs queued meanwhile wait in GitLab (the class asks
// for no job while it has no room on a host) and run once the host is up, none failed for want
// of a slot; the aws provider's sweeps, running all along, never touch the Mac host's instance
// (it carries no job-VM tag), so the host that bills 24 h at least is never sent to scrub.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { installTartDouble } from '../fixtures/tart/install.js';

const SHARD = 'e2e-mac-deploy';

describe('deploying an aws + mac shard with no Mac host ready', () => {
  let dir: string;
  let ec2: Ec2Emulator;
  let gitlab: GitLabEmulator;
  let shard: Shard;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rf-e2e-mac-deploy-'));
    const tart = installTartDouble(dir, ['macos-sequoia-xcode']);
    // Every instance, the Mac host's included, takes seconds to come up: the host's capacity appears late.
    ec2 = await startEc2Emulator({ dataDir: join(dir, 'ec2'), sandboxPathDir: tart.bin, bootDelayMs: 6000, subnets: { 'subnet-0aaa1111': 'us-east-1a' } });
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const yaml = `
shard: ${SHARD}
database: { url: "pglite:memory" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  saas-macos-medium-m1:
    runnerToken: mac-token
    provider: mac
    pool: { idle: 0, max: 2 }
    bootTimeout: 60s
    machine:
      instanceType: mac2.metal
      hostImageId: ami-0123456789abcdef0
      subnets: [{ id: subnet-0aaa1111, zone: us-east-1a }]
      securityGroupIds: [sg-0ccc3333]
      hosts: { min: 1, max: 1 }
      vm: { image: macos-sequoia-xcode, username: runner, sshPort: 2222 }
  saas-linux-small-amd64:
    runnerToken: linux-token
    provider: aws
    pool: { idle: 1, max: 3 }
    bootTimeout: 60s
    machine: { instanceType: c6i.large, imageId: ami-0fedcba9876543210, subnets: [subnet-0aaa1111], securityGroupIds: [sg-0ccc3333], username: runner }
providers:
  mac: { region: us-east-1, endpoint: "${ec2.url}", retryBase: 20ms, pollInterval: 300ms, hostPollInterval: 300ms }
  aws: { region: us-east-1, endpoint: "${ec2.url}", retryBase: 20ms, pollInterval: 300ms }
dataDir: "${dir}"
secrets: { key: "e2e-mac-secret-key-0123456789abcdef" }
log: { level: warn }
`;
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'warn' }), tickMs: 100, sweepMs: 500, defaultMetrics: false, http: false, connectOverride: ec2.connectOverride });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 30_000 });
    await gitlab?.close();
    await ec2?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('queues macOS jobs until a host is up, runs them all, and never terminates the host instance', async () => {
    const mac = [1, 2].map((i) => gitlab.enqueue({ runnerToken: 'mac-token', script: [`echo "macos job ${i}"`], git: false }));
    const linux = gitlab.enqueue({ runnerToken: 'linux-token', script: ['echo linux job'], git: false });
    // While no host is ready, no macOS job is taken (nothing to fail).
    await new Promise((r) => setTimeout(r, 3000));
    expect(mac.map((id) => gitlab.job(id).state)).toEqual(['pending', 'pending']);
    const finals = await Promise.all([...mac, linux].map((id) => gitlab.waitForFinal(id, 120_000)));
    expect(finals.map((f) => f.state)).toEqual(['success', 'success', 'success']);
    for (const f of finals) expect(f.trace).not.toContain('no free macOS VM slot');
    expect(finals[0]!.trace).toContain('macos job 1');
    // The aws class swept all along (every 500 ms); the host's one instance is still running.
    const hostInstances = ec2.instances().filter((i) => i.hostId);
    expect(hostInstances).toHaveLength(1);
    expect(hostInstances[0]!.state).toBe('running');
    expect(ec2.calls.AllocateHosts).toBe(1);
  });
});
