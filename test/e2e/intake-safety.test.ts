// A job GitLab handed out is never dropped: a bind the database does not take is retried, an
// earlier attempt that committed but lost its answer counts as bound, and a job that still cannot
// be recorded (this manager lost the shard) is failed back to GitLab at once with a trace line.
// And a burst of cold starts between two pool ticks never takes the class past its max.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { FencedError } from '../../src/db/fence.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

describe.each(databaseKinds())('intake safety on %s', (kind) => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let dataDir: string;
  let db: TestDatabase;
  let realBind: Shard['store']['bindJob'];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-intake-'));
    db = await freshDatabase(kind);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const yaml = shardYaml({ shard: `intake-${kind}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 1, max: 3 });
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, http: false, sweepMs: 500 });
    realBind = shard.store.bindJob.bind(shard.store);
  });

  // These tests patch the warm-VM bind; a job that arrives while no warm VM is ready takes the
  // cold-start bind instead, so each waits for the pool first.
  const warmVmReady = () => waitUntil(async () => (await shard.store.liveVms()).some((v) => v.state === 'ready'), 60_000, 'a warm VM');

  afterAll(async () => {
    shard.store.bindJob = realBind;
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('retries a bind the database refused with a deadlock, then runs the job', async () => {
    await warmVmReady();
    let failures = 0;
    shard.store.bindJob = async (input) => {
      if (failures++ < 2) throw Object.assign(new Error('deadlock detected'), { code: '40P01' });
      return realBind(input);
    };
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo bound after retries'], git: false });
    const final = await gitlab.waitForFinal(id, 30_000);
    shard.store.bindJob = realBind;
    expect(final.state).toBe('success');
    expect(final.trace).toContain('bound after retries');
    expect(failures).toBe(3);
  });

  it('takes a bind that committed but lost its answer as bound, and runs the job once', async () => {
    await warmVmReady();
    let calls = 0;
    shard.store.bindJob = async (input) => {
      calls++;
      const ok = await realBind(input);
      if (calls === 1) throw Object.assign(new Error('Connection terminated unexpectedly'), { code: '08006' });
      return ok;
    };
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo once'], git: false });
    const final = await gitlab.waitForFinal(id, 30_000);
    shard.store.bindJob = realBind;
    expect(final.state).toBe('success');
    expect(final.trace.match(/^once$/gm)).toHaveLength(1);
    const events = await shard.store.db.selectFrom('billing_events').selectAll().where('job_id', '=', String(id)).execute();
    expect(events).toHaveLength(1);
  });

  it('fails a job it cannot record back to GitLab at once, saying why, with one non-billable event', async () => {
    await warmVmReady();
    shard.store.bindJob = async () => {
      throw new FencedError(shard.config.shard, 1, 2);
    };
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo never runs'], git: false });
    const final = await gitlab.waitForFinal(id, 30_000);
    shard.store.bindJob = realBind;
    expect(final.state).toBe('failed');
    expect(final.failureReason).toBe('runner_system_failure');
    expect(final.trace).toContain('could not be recorded: this manager lost the shard');
    expect(final.trace).not.toContain('never runs');
    await waitUntil(async () => (await shard.store.db.selectFrom('billing_events').select('billable').where('job_id', '=', String(id)).execute()).length === 1, 10_000, 'billing event');
    const [event] = await shard.store.db.selectFrom('billing_events').select('billable').where('job_id', '=', String(id)).execute();
    expect(event!.billable).toBe(false);
    const metrics = await shard.metrics.registry.metrics();
    expect(metrics).toMatch(/runner_fleet_jobs_failed_back_total\{[^}]*reason="fenced"[^}]*\} 1/);
  });

  it('fails back a job handed to a manager that died before binding it (its handout row is all that is left)', async () => {
    // A manager that took this job from GitLab, recorded the handout, and was killed.
    const id = gitlab.enqueue({ runnerToken: 'dead-manager-token', script: ['echo never runs'], git: false });
    const res = await fetch(`${gitlab.url}/api/v4/jobs/request`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'dead-manager-token' }) });
    const payload = (await res.json()) as { id: number; token: string };
    expect(payload.id).toBe(id);
    await shard.store.recordHandout(id, 'saas-linux-small-amd64', payload.token, new Date(Date.now() - 60_000));
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('failed');
    expect(final.failureReason).toBe('runner_system_failure');
    expect(final.trace).toContain('stopped before it could start it');
    expect(await shard.store.strandedHandouts(new Date())).toEqual([]);
    const events = await shard.store.db.selectFrom('billing_events').select('billable').where('job_id', '=', String(id)).execute();
    expect(events).toEqual([{ billable: false }]);
  });

  it('leaves no handout behind for the jobs it bound', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo bound'], git: false });
    expect((await gitlab.waitForFinal(id, 30_000)).state).toBe('success');
    expect(await shard.store.strandedHandouts(new Date(Date.now() + 1000))).toEqual([]);
  });
});

describe('cold-start bursts', () => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-burst-'));
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const yaml = shardYaml({ shard: 'burst', gitlabUrl: gitlab.url, dbUrl: 'pglite:memory', dataDir, idle: 0, max: 2 }).replace('pool: { idle: 0, max: 2 }', 'pool: { idle: 0, max: 2, intake: coldStart }');
    // A slow pool tick: the counts it leaves behind are stale for seconds while intake takes jobs.
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'silent' }), tickMs: 3000, defaultMetrics: false, http: false });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('never holds more VMs than max while a burst of jobs waits, and runs them all', async () => {
    const ids = Array.from({ length: 6 }, (_, i) => gitlab.enqueue({ runnerToken: TOKEN, script: [`echo burst ${i}`, 'sleep 1'], git: false }));
    let most = 0;
    let done = false;
    const sampler = (async () => {
      while (!done) {
        const live = await shard.store.liveVms();
        most = Math.max(most, live.length);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const finals = await Promise.all(ids.map((id) => gitlab.waitForFinal(id, 90_000)));
    done = true;
    await sampler;
    expect(finals.map((f) => f.state)).toEqual(ids.map(() => 'success'));
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(2);
  });
});
