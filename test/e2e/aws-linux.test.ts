// Linux jobs end to end on the aws provider: GitLab emulator -> intake -> warm VM launched through
// the real EC2Client against the EC2 emulator (instances are SSH sandboxes on loopback) -> job over
// real SSH -> trace and state back to GitLab -> instance terminated -> one billing event.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startEc2Emulator, type Ec2Emulator } from '../../src/emulators/ec2/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { LABEL_VM } from '../../src/providers/provider.js';
import { expectJobCleanedUp, waitUntil } from '../helpers/shard.js';

const TOKEN = 'e2e-aws-token';

describe('Linux jobs on the aws provider (EC2 emulator)', () => {
  let dataDir: string;
  let ec2: Ec2Emulator;
  let gitlab: GitLabEmulator;
  let shard: Shard;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-e2e-aws-'));
    ec2 = await startEc2Emulator({ dataDir: join(dataDir, 'ec2'), bootDelayMs: 0 });
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(`
shard: e2e-aws
database: { url: "pglite:memory" }
http: { listen: "127.0.0.1:0" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  linux-small-ec2:
    runnerToken: "${TOKEN}"
    provider: aws
    pool: { idle: 2, max: 4 }
    bootTimeout: 30s
    machine: { instanceType: c6i.large, imageId: ami-0123456789abcdef0, subnets: [subnet-0aaa1111, subnet-0bbb2222], securityGroupIds: [sg-0ccc3333] }
providers:
  aws: { region: us-east-1, endpoint: "${ec2.url}", requestsPerSecond: 1000, retryBase: 20ms, pollInterval: 500ms }
dataDir: "${dataDir}"
secrets: { key: "e2e-aws-secret-key-0123456789abcdef" }
log: { level: warn }
`);
    shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await ec2?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const gone = (vmId: string) => !ec2.instances().some((i) => i.tags[LABEL_VM] === vmId && i.state !== 'terminated');

  it('runs a passing job and a failing one, terminating each instance after its job', async () => {
    await waitUntil(async () => (await shard.store.liveVms()).filter((v) => v.state === 'ready').length >= 2, 30_000, 'two warm VMs');
    const ok = gitlab.enqueue({ runnerToken: TOKEN, name: 'ec2-greet', script: ['echo "hello from $CI_JOB_NAME"'], git: false });
    const bad = gitlab.enqueue({ runnerToken: TOKEN, script: ['exit 3'], git: false });
    expect((await gitlab.waitForFinal(ok, 30_000)).trace).toContain('hello from ec2-greet');
    expect(await gitlab.waitForFinal(bad, 30_000)).toMatchObject({ state: 'failed', failureReason: 'script_failure', exitCode: 3 });
    const { event } = await expectJobCleanedUp(shard, ok, gone);
    expect(event).toMatchObject({ provider: 'aws', machine_type: 'c6i.large', outcome: 'success' });
    await expectJobCleanedUp(shard, bad, gone);
  });
});
