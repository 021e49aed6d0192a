// The standby tier on the live manager, through the real EC2Client and the EC2 emulator: the pool
// holds hot VMs and stopped ones (StopInstances), resumes stopped ones (StartInstances) when jobs
// take the hot ones, and the resumed VMs run jobs like fresh ones: they have never run a job.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEc2Shard, type Ec2Shard } from '../helpers/ec2-shard.js';
import { expectJobCleanedUp, waitUntil } from '../helpers/shard.js';

const TOKEN = 'e2e-standby-token';

describe('standby tier (stop/start) on the aws provider', () => {
  let env: Ec2Shard;
  beforeAll(async () => {
    env = await startEc2Shard({ shard: 'e2e-standby', className: 'linux-ec2', token: TOKEN, pool: '{ idle: 1, standby: 2, max: 6, idleTime: 0s }' });
  });
  afterAll(async () => {
    await env?.close();
  });

  const states = async () => (await env.shard.store.liveVms()).map((v) => v.state).sort();

  it('holds one hot and two stopped VMs, resumes stopped ones as jobs take hot ones', { timeout: 180_000 }, async () => {
    let last: string[] = [];
    await waitUntil(async () => JSON.stringify((last = await states())) === JSON.stringify(['ready', 'stopped', 'stopped']), 60_000, 'one hot and two standby VMs').catch((err: Error) => {
      throw new Error(`${err.message}; last seen ${JSON.stringify(last)}`);
    });
    expect(env.ec2.instances().filter((i) => i.state === 'stopped')).toHaveLength(2);
    expect(env.ec2.calls.StopInstances).toBeGreaterThanOrEqual(2);
    const startsBefore = env.ec2.calls.StartInstances;

    const jobs = [1, 2, 3].map((n) => env.gitlab.enqueue({ runnerToken: TOKEN, name: `standby-${n}`, script: ['echo "job $CI_JOB_NAME"', 'sleep 1'], git: false }));
    for (const id of jobs) expect((await env.gitlab.waitForFinal(id, 60_000)).state).toBe('success');
    expect(env.ec2.calls.StartInstances).toBeGreaterThan(startsBefore); // standby resumed, not only fresh boots
    for (const id of jobs) await expectJobCleanedUp(env.shard, id, env.gone);
    // Each job ran on its own VM.
    const vmIds = await Promise.all(jobs.map(async (id) => (await env.shard.store.job(id))!.vm_id));
    expect(new Set(vmIds).size).toBe(3);
    const text = await env.shard.metrics.registry.metrics();
    expect(text).toMatch(/runner_fleet_vm_resume_seconds_count\{[^}]*\} [1-9]/);
    // And the tiers refill.
    await waitUntil(async () => JSON.stringify(await states()) === JSON.stringify(['ready', 'stopped', 'stopped']), 60_000, 'tiers refilled');
  });
});
