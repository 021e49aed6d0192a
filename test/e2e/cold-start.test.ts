// Cold start on the live manager: a class that holds no warm VM (idle 0, intake auto) asks GitLab
// for jobs and makes a fresh VM for each; the job's log says so, the job runs once its VM is up,
// the VM is deleted after it and the job has one billing event. A job whose VM cannot be made
// (here: it never boots within bootTimeout) fails as our fault (runner_system_failure, not
// billable), and its VM is cleaned up.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { expectJobCleanedUp, shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

describe('cold start (no warm VM)', () => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-cold-'));
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const yaml = shardYaml({ shard: 'cold', gitlabUrl: gitlab.url, dbUrl: 'pglite:memory', dataDir, idle: 0, max: 3 })
      .replace('providers:\n  local: {}', 'providers:\n  local: { bootDelay: 1s }')
      // A second class whose VMs never boot in time (5 s boots, 1 s boot timeout).
      .replace('providers:', `  slow-class:\n    runnerToken: "slow-token"\n    provider: local\n    pool: { idle: 0, max: 1 }\n    bootTimeout: 1s\n    machine: { bootDelay: 5s }\nproviders:`);
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, http: false });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const gone = async (vmId: string) => (await shard.store.vm(vmId))?.state === 'deleted';

  it('makes a fresh VM for each job when the class holds none', async () => {
    expect(shard.pool.snapshot()).toEqual([]); // nothing warm, nothing coming
    const a = gitlab.enqueue({ runnerToken: TOKEN, name: 'cold-a', script: ['echo "ran $CI_JOB_NAME"'], git: false });
    const b = gitlab.enqueue({ runnerToken: TOKEN, name: 'cold-b', script: ['echo "ran $CI_JOB_NAME"'], git: false });
    for (const id of [a, b]) {
      const final = await gitlab.waitForFinal(id, 60_000);
      expect(final.state).toBe('success');
      expect(final.trace).toContain('creating a fresh one for this job (cold start)');
      expect(final.trace).toContain(`ran ${id === a ? 'cold-a' : 'cold-b'}`);
      const { event } = await expectJobCleanedUp(shard, id, gone);
      expect(event).toMatchObject({ outcome: 'success', billable: true });
    }
    const vms = await shard.store.db.selectFrom('vms').select(['job_id', 'state']).where('class', '=', 'saas-linux-small-amd64').execute();
    expect(vms.map((v) => v.job_id).sort()).toEqual([String(a), String(b)].sort()); // one VM per job, made for it
    await waitUntil(() => shard.pool.snapshot().length === 0, 10_000, 'no VM kept warm');
  });

  it('fails a job whose VM cannot be made as our fault, and bills nothing for it', async () => {
    const id = gitlab.enqueue({ runnerToken: 'slow-token', script: ['echo never'], git: false });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final).toMatchObject({ state: 'failed', failureReason: 'runner_system_failure' });
    expect(final.trace).toContain('the VM made for the job failed');
    await waitUntil(async () => (await shard.store.job(id))?.reported_at != null, 10_000, 'reported');
    const ev = await shard.store.db.selectFrom('billing_events').select(['billable']).where('job_id', '=', String(id)).execute();
    expect(ev).toEqual([{ billable: false }]);
    const job = await shard.store.job(id);
    await waitUntil(async () => ['deleted'].includes((await shard.store.vm(job!.vm_id!))?.state ?? ''), 15_000, 'the failed VM cleaned up');
  });
});
