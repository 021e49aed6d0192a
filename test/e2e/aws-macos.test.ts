// macOS jobs end to end on the mac provider: the shard allocates an EC2 Mac host (EC2 emulator,
// real EC2Client), launches its macOS instance, clones a fresh VM per job with Tart on it (the
// Tart double), runs the job in that VM through the host as an SSH jump, deletes the VM after the
// job, and a restarted manager carries on with the same host and its warm VMs.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { installTartDouble } from '../fixtures/tart/install.js';
import { expectJobCleanedUp, waitUntil } from '../helpers/shard.js';

const TOKEN = 'e2e-macos-token';
const SHARD = 'e2e-mac';

describe('macOS jobs in nested VMs on an EC2 Mac host', () => {
  let dir: string;
  let ec2: Ec2Emulator;
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let yaml: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rf-e2e-mac-'));
    const tart = installTartDouble(dir, ['macos-sequoia-xcode']);
    ec2 = await startEc2Emulator({ dataDir: join(dir, 'ec2'), sandboxPathDir: tart.bin });
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    yaml = `
shard: ${SHARD}
database: { url: "pglite:${join(dir, 'db')}" }
http: { listen: "127.0.0.1:0" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  saas-macos-medium-m1:
    runnerToken: "${TOKEN}"
    provider: mac
    costFactor: 6
    pool: { idle: 1, max: 2 }
    bootTimeout: 60s
    machine:
      instanceType: mac2.metal
      hostImageId: ami-0123456789abcdef0
      subnets: [{ id: subnet-0aaa1111, zone: us-east-1a }]
      securityGroupIds: [sg-0ccc3333]
      hosts: { min: 1, max: 1 }
      vm: { image: macos-sequoia-xcode, username: runner, sshPort: 2222 }
providers:
  mac: { region: us-east-1, endpoint: "${ec2.url}", retryBase: 20ms, pollInterval: 300ms, hostPollInterval: 300ms }
dataDir: "${dir}"
secrets: { key: "e2e-mac-secret-key-0123456789abcdef" }
log: { level: warn }
`;
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false, connectOverride: ec2.connectOverride });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 30_000 });
    await gitlab?.close();
    await ec2?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The nested VM's Tart directory is gone from every host. */
  const gone = (vmId: string) => !readdirSync(join(dir, 'ec2'), { recursive: true }).some((p) => String(p).endsWith(join('.tart', 'vms', `rf-${SHARD}-${vmId}`)));
  const warm = async (s: Shard) => (await s.store.liveVms()).filter((v) => v.state === 'ready');

  it('runs a job in a fresh nested VM through the host and deletes the VM after it', async () => {
    await waitUntil(async () => (await warm(shard)).length >= 1, 60_000, 'a warm nested VM');
    const id = gitlab.enqueue({ runnerToken: TOKEN, name: 'xcode-build', script: ['echo "building on $(uname -s) as $USER in $CI_JOB_NAME"'], git: false });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain('as runner in xcode-build');
    const { event, job } = await expectJobCleanedUp(shard, id, gone);
    expect(event).toMatchObject({ provider: 'mac', machine_type: 'mac2.metal', outcome: 'success' });
    const vm = await shard.store.vm(job.vm_id!);
    expect(vm?.cloud_id).toMatch(/^[0-9a-f-]{36}\/rf-e2e-mac-/); // <host record>/<nested VM>
    expect(ec2.hosts()).toHaveLength(1);
    const text = await shard.metrics.registry.metrics();
    expect(text).toMatch(/runner_fleet_mac_hosts\{[^}]*state="(ready|busy)"[^}]*\} 1/);
    expect(text).toMatch(/runner_fleet_mac_nested_vm_ready_seconds_count\{[^}]*\} [1-9]/);
  });

  it('after a restart uses the same host and its warm VM, allocating nothing', async () => {
    await waitUntil(async () => (await warm(shard)).length >= 1, 60_000, 'the pool refilled');
    const before = (await warm(shard)).map((v) => v.id);
    await shard.close(); // not a drain: the host and the warm VM stay, as after a crash
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false, connectOverride: ec2.connectOverride });
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo second'], git: false });
    expect((await gitlab.waitForFinal(id, 60_000)).state).toBe('success');
    const job = await shard.store.job(id);
    expect(before).toContain(job!.vm_id);
    await expectJobCleanedUp(shard, id, gone);
    expect(ec2.calls.AllocateHosts).toBe(1);
    expect(existsSync(join(dir, 'ec2'))).toBe(true);
  });
});
