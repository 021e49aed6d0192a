// Linux jobs end to end on the aws provider: GitLab emulator -> intake -> warm VM launched through
// the real EC2Client against the EC2 emulator (instances are SSH sandboxes on loopback) -> job over
// real SSH -> trace and state back to GitLab -> instance terminated -> one billing event.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEc2Shard, type Ec2Shard } from '../helpers/ec2-shard.js';
import { expectJobCleanedUp, waitUntil } from '../helpers/shard.js';

const TOKEN = 'e2e-aws-token';

describe('Linux jobs on the aws provider (EC2 emulator)', () => {
  let env: Ec2Shard;
  beforeAll(async () => {
    env = await startEc2Shard({ shard: 'e2e-aws', className: 'linux-small-ec2', token: TOKEN, pool: '{ idle: 2, max: 4 }', subnets: '[subnet-0aaa1111, subnet-0bbb2222]' });
  });
  afterAll(async () => {
    await env?.close();
  });

  it('runs a passing job and a failing one, terminating each instance after its job', async () => {
    await waitUntil(async () => (await env.shard.store.liveVms()).filter((v) => v.state === 'ready').length >= 2, 30_000, 'two warm VMs');
    const ok = env.gitlab.enqueue({ runnerToken: TOKEN, name: 'ec2-greet', script: ['echo "hello from $CI_JOB_NAME"'], git: false });
    const bad = env.gitlab.enqueue({ runnerToken: TOKEN, script: ['exit 3'], git: false });
    expect((await env.gitlab.waitForFinal(ok, 30_000)).trace).toContain('hello from ec2-greet');
    expect(await env.gitlab.waitForFinal(bad, 30_000)).toMatchObject({ state: 'failed', failureReason: 'script_failure', exitCode: 3 });
    const { event } = await expectJobCleanedUp(env.shard, ok, env.gone);
    expect(event).toMatchObject({ provider: 'aws', machine_type: 'c6i.large', outcome: 'success' });
    await expectJobCleanedUp(env.shard, bad, env.gone);
  });
});
