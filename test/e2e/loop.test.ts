// The spine end to end: GitLab emulator -> intake -> warm local VM -> job over real SSH ->
// trace and state back to GitLab -> VM deleted -> exactly one billing event. Runs on PGlite,
// and on real PostgreSQL when DATABASE_URL is set.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { LABEL_SHARD, providerFactory } from '../../src/providers/provider.js';
import '../../src/providers/builtin.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { expectJobCleanedUp, shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

describe.each(databaseKinds())('job loop on %s', (kind) => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;
  // Every log line of the shard, to prove no secret reaches a log.
  const logLines: string[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-e2e-'));
    db = await freshDatabase(kind);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: `e2e-${kind}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir }));
    const destination = { write: (line: string) => void logLines.push(line) };
    shard = await startShard({ config, log: createLogger({ level: 'debug', destination }), tickMs: 100, defaultMetrics: false });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function expectCleanedUp(jobId: number) {
    const provider = await providerFactory('local')!({}, { shard: shard.config.shard, dataDir, log: createLogger({ level: 'silent' }) });
    try {
      return await expectJobCleanedUp(shard, jobId, async (vmId) => !(await provider.list({ [LABEL_SHARD]: shard.config.shard })).vms.some((c) => c.vmId === vmId));
    } finally {
      await provider.close();
    }
  }

  it('runs a passing job: the trace holds its output and GitLab sees success', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo "hello from $CI_JOB_NAME"', 'test -f README.md && echo repo-checked-out', 'echo "runner tags: $CI_RUNNER_TAGS"'], name: 'greet' });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain('hello from greet');
    expect(final.trace).toContain('runner tags: ["linux", "amd64"]'); // as GitLab sends it with the job
    expect(final.trace).toContain('repo-checked-out');
    const { event } = await expectCleanedUp(id);
    expect(event.billable).toBe(true);
    expect(event.outcome).toBe('success');
    // minutes = duration / 60 x cost factor (2)
    expect(Number(event.compute_minutes)).toBeCloseTo((Number(event.duration_seconds) / 60) * 2, 5);
  });

  it('fails a job whose script exits 3 with script_failure and exit code 3', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo before', 'exit 3', 'echo never'], afterScript: ['echo after-ran'], git: false });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('failed');
    expect(final.failureReason).toBe('script_failure');
    expect(final.exitCode).toBe(3);
    expect(final.trace).toContain('before');
    expect(final.trace).not.toMatch(/^never$/m);
    expect(final.trace).toContain('after-ran');
    await expectCleanedUp(id);
  });

  it('masks a masked variable in the trace, even when echoed', async () => {
    const secret = 'pa55-w0rd-Zq8x';
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      script: ['echo "the secret is $MY_SECRET"', 'printf "%s" "$MY_SECRET" | fold -w 3'],
      variables: [{ key: 'MY_SECRET', value: secret, masked: true }],
      git: false,
    });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain('the secret is [MASKED]');
    expect(final.trace).not.toContain(secret);
    await expectCleanedUp(id);
  });

  it('masks URL-encoded forms and overlapping values, warns of masked values too short to mask, and bills GitLab\'s namespace', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      script: [
        "printf 'url=%s\\n' 'https://bot:us3r%3Ap%40ss%2Fw0rd%2Bx@example.com/repo.git'",
        "printf 'overlap=%s\\n' abcdefgh12345678",
        'echo "short=$SHORT_ONE"',
      ],
      variables: [
        { key: 'URL_SECRET', value: 'us3r:p@ss/w0rd+x', masked: true },
        { key: 'OVER_A', value: 'abcdefgh12', masked: true },
        { key: 'OVER_B', value: 'gh12345678', masked: true },
        { key: 'SHORT_ONE', value: 'abc', masked: true },
        // A job's own definitions of the predefined ids must not move the bill.
        { key: 'CI_PROJECT_NAMESPACE_ID', value: '998' },
        { key: 'CI_PROJECT_ROOT_NAMESPACE_ID', value: '999' },
      ],
      git: false,
    });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    expect(final.trace).toMatch(/^url=https:\/\/bot:\[MASKED\]@example\.com\/repo\.git$/m);
    expect(final.trace).toMatch(/^overlap=\[MASKED\]$/m);
    expect(final.trace).not.toMatch(/%2Fw0rd|abcdefgh|12345678/);
    expect(final.trace).toContain('WARNING: masked variable SHORT_ONE shorter than 8 characters');
    expect(final.trace).toMatch(/^short=abc$/m);
    const { job, event } = await expectCleanedUp(id);
    // The emulator's predefined values, in the job row (quotas) and the billing event alike.
    expect([Number(job.namespace_id), Number(job.root_namespace_id)]).toEqual([7, 3]);
    const payload = (typeof event.payload === 'string' ? JSON.parse(event.payload) : event.payload) as { namespaceId: number; rootNamespaceId: number };
    expect([payload.namespaceId, payload.rootNamespaceId]).toEqual([7, 3]);
  });

  it('refuses a job with more masked values than it masks, before it takes a VM', async () => {
    const variables = Array.from({ length: 1001 }, (_, i) => ({ key: `MANY_${i}`, value: `many-masked-value-${String(i).padStart(5, '0')}`, masked: true }));
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo should-not-run'], variables, git: false });
    const final = await gitlab.waitForFinal(id, 20_000);
    expect(final.state).toBe('failed');
    expect(final.failureReason).toBe('runner_unsupported');
    expect(final.trace).toContain('the job has 1,002 masked values; runner-fleet masks at most 1,000');
    expect(final.trace).not.toContain('should-not-run');
    expect((await shard.store.job(id))?.vm_id ?? null).toBeNull();
  });

  it('cancels a running job when GitLab says canceling, and deletes its VM', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo started', 'sleep 60', 'echo not-reached'], git: false });
    await gitlab.waitFor(id, (j) => j.trace.includes('started'), 20_000);
    gitlab.cancel(id);
    const final = await gitlab.waitForFinal(id, 20_000);
    expect(final.state).toBe('canceled');
    expect(final.trace).not.toContain('not-reached');
    const { job } = await expectCleanedUp(id);
    expect(job.result).toBe('canceled');
  });

  it('a cancel runs after_script on the VM with CI_JOB_STATUS=canceled, the job variables and files, in the project dir, then ends canceled', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      script: ['echo started', 'sleep 60', 'echo not-reached'],
      afterScript: ['echo "after status=$CI_JOB_STATUS word=$WORD file=$(cat "$MY_FILE") dir=$PWD"'],
      variables: [{ key: 'WORD', value: 'w-1' }, { key: 'MY_FILE', value: 'file-content', file: true }],
    });
    await gitlab.waitFor(id, (j) => j.trace.includes('started'), 30_000);
    gitlab.cancel(id);
    const final = await gitlab.waitForFinal(id, 20_000);
    expect(final.state).toBe('canceled');
    const t = final.trace;
    expect(t).toMatch(/after status=canceled word=w-1 file=file-content dir=\S+\/demo\/project\n/);
    expect(t).not.toContain('not-reached');
    expect(t.indexOf('started')).toBeLessThan(t.indexOf('after status=canceled'));
    expect(t.indexOf('after status=canceled')).toBeLessThan(t.indexOf('ERROR: Job was canceled'));
    expect(t).toMatch(/section_start:\d+:after_script\r/);
    expect(t.match(/Running with runner-fleet on /g)?.length).toBe(1);
    const { job } = await expectCleanedUp(id);
    expect(job.result).toBe('canceled');
  });

  it('the after_script of a cancel is stopped past RUNNER_AFTER_SCRIPT_TIMEOUT', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      git: false,
      script: ['echo started-bounded', 'sleep 60'],
      afterScript: ['echo after-begins', 'sleep 60', 'echo after-not-reached'],
      variables: [{ key: 'RUNNER_AFTER_SCRIPT_TIMEOUT', value: '2s' }],
    });
    await gitlab.waitFor(id, (j) => j.trace.includes('started-bounded'), 30_000);
    const t0 = Date.now();
    gitlab.cancel(id);
    const final = await gitlab.waitForFinal(id, 20_000);
    expect(final.state).toBe('canceled');
    expect(Date.now() - t0).toBeLessThan(12_000);
    expect(final.trace).toContain('after-begins');
    expect(final.trace).toContain('WARNING: after_script did not end within 2 s (RUNNER_AFTER_SCRIPT_TIMEOUT): stopped');
    expect(final.trace).not.toContain('after-not-reached');
    await expectCleanedUp(id);
  });

  it('fails a job past its timeout with job_execution_timeout, running no after_script (as gitlab-runner)', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo working', 'sleep 60'], afterScript: ['echo "after status=$CI_JOB_STATUS"'], timeoutS: 2, git: false });
    const final = await gitlab.waitForFinal(id, 20_000);
    expect(final.state).toBe('failed');
    expect(final.failureReason).toBe('job_execution_timeout');
    expect(final.trace).toContain('execution took longer than 2 seconds');
    expect(final.trace).not.toContain('after status=');
    await expectCleanedUp(id);
  });

  it('fails a malformed job payload back to GitLab with the field named, and keeps running', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: [], git: false, mutate: (p: Record<string, unknown>) => ({ ...p, steps: 'not-a-list' }) });
    const final = await gitlab.waitForFinal(id, 20_000);
    expect(final.state).toBe('failed');
    expect(final.trace).toContain('steps');
    const ok = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo still-alive'], git: false });
    expect((await gitlab.waitForFinal(ok, 30_000)).state).toBe('success');
  });

  it('never logs a job token, a masked value or a private key', async () => {
    const secret = 'l0g-me-n0t-Qx7';
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo "$LOG_SECRET"'], variables: [{ key: 'LOG_SECRET', value: secret, masked: true }] });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    const all = logLines.join('');
    expect(logLines.length).toBeGreaterThan(10);
    expect(all).toContain(`"job":${id}`);
    expect(all).not.toContain(secret);
    expect(all).not.toMatch(/glcbt-[0-9a-f]{8}/); // the emulator's job tokens
    expect(all).not.toContain(TOKEN);
    expect(all).not.toContain('PRIVATE KEY');
  });

  it('keeps the warm pool at idle and exports the SLO metrics', async () => {
    await waitUntil(async () => (await shard.store.liveVms()).filter((v) => v.state === 'ready').length === 2, 20_000, 'two warm VMs');
    const res = await fetch(`${shard.url}/metrics`);
    const text = await res.text();
    expect(text).toMatch(/runner_fleet_job_start_latency_seconds_bucket\{[^}]*le="120"[^}]*class="saas-linux-small-amd64"/);
    expect(text).toMatch(/runner_fleet_jobs_total\{[^}]*result="success"/);
    expect(text).toMatch(/runner_fleet_vms\{[^}]*state="ready"[^}]*\} 2/);
    const unauth = await fetch(`${shard.url}/v1/vms`);
    expect(unauth.status).toBe(401);
    const vms = await fetch(`${shard.url}/v1/vms`, { headers: { authorization: 'Bearer test-admin' } });
    expect(vms.status).toBe(200);
    expect(JSON.stringify(await vms.json())).not.toContain('private_key');
  });
});

