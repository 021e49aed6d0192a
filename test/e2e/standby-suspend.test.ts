// The standby tier by suspend on the live manager, through the real @google-cloud/compute client
// and the GCE emulator (a suspended instance's sandbox is frozen, memory kept): a class with
// `standbyMode: suspend` holds hot VMs and suspended ones, resumes suspended ones (never `start`)
// when jobs take the hot ones, and the resumed VMs run jobs like fresh ones.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGceShard, type GceShard } from '../helpers/gce-shard.js';
import { expectJobCleanedUp, waitUntil } from '../helpers/shard.js';

const TOKEN = 'e2e-suspend-token';

describe('standby tier (suspend/resume) on the gcp provider', () => {
  let env: GceShard;
  beforeAll(async () => {
    env = await startGceShard({ shard: 'e2e-suspend', className: 'linux-gce', token: TOKEN, pool: '{ idle: 1, standby: 2, standbyMode: suspend, max: 6, idleTime: 0s }', bootDelayMs: 300 });
  });
  afterAll(async () => {
    await env?.close();
  });

  const states = async () => (await env.shard.store.liveVms()).map((v) => v.state).sort();

  it('holds one hot and two suspended VMs, resumes suspended ones as jobs take hot ones', { timeout: 180_000 }, async () => {
    let last: string[] = [];
    await waitUntil(async () => JSON.stringify((last = await states())) === JSON.stringify(['ready', 'stopped', 'stopped']), 60_000, 'one hot and two standby VMs').catch((err: Error) => {
      throw new Error(`${err.message}; last seen ${JSON.stringify(last)}`);
    });
    await waitUntil(() => env.gce.instances().filter((i) => i['status'] === 'SUSPENDED').length === 2, 10_000, 'two SUSPENDED instances');
    expect(env.gce.calls.stop).toBe(0);
    const resumesBefore = env.gce.calls.resume;

    const jobs = [1, 2, 3].map((n) => env.gitlab.enqueue({ runnerToken: TOKEN, name: `suspend-${n}`, script: ['echo "job $CI_JOB_NAME"', 'sleep 1'], git: false }));
    for (const id of jobs) expect((await env.gitlab.waitForFinal(id, 60_000)).state).toBe('success');
    expect(env.gce.calls.resume).toBeGreaterThan(resumesBefore); // standby resumed, not only fresh boots
    expect(env.gce.calls.start).toBe(0); // a suspended VM is resumed, never started
    for (const id of jobs) await expectJobCleanedUp(env.shard, id, (vmId) => env.instanceOf(vmId) === undefined);
    const vmIds = await Promise.all(jobs.map(async (id) => (await env.shard.store.job(id))!.vm_id));
    expect(new Set(vmIds).size).toBe(3);
    const text = await env.shard.metrics.registry.metrics();
    expect(text).toMatch(/runner_fleet_vm_resume_seconds_count\{[^}]*\} [1-9]/);
    const events = await env.shard.store.db.selectFrom('vm_events').select(['detail']).where('to_state', '=', 'stopped').execute();
    expect(events.every((e) => /\(suspend\)$/.test(e.detail ?? ''))).toBe(true);
    await waitUntil(async () => JSON.stringify(await states()) === JSON.stringify(['ready', 'stopped', 'stopped']), 60_000, 'tiers refilled');
  });
});
