// Running jobs survive the manager's death: a manager process is SIGKILLed while four jobs run
// on local VMs (real SSH sandboxes); a new manager re-attaches to each. GitLab gets the whole
// trace in order and the real exit code; a cancel and a timeout still work after the re-attach
// (the timeout counted from pick-up, as recorded); a job whose VM was deleted meanwhile fails as
// our fault. Runs on PGlite, and on real PostgreSQL when DATABASE_URL is set.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { openDatabase } from '../../src/db/connect.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { LABEL_SHARD, providerFactory, type Provider } from '../../src/providers/provider.js';
import '../../src/providers/builtin.js';
import { databaseKinds, freshDatabase } from '../helpers/database.js';
import { expectJobCleanedUp, shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

const LINES = 50;

/** Processes still running a command line containing `marker`. */
function running(marker: string): string[] {
  return execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(marker) && !l.includes('ps -eo'));
}

describe.each(databaseKinds())('re-attach after SIGKILL on %s', (kind) => {
  const cleanups: (() => Promise<void> | void)[] = [];
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let provider: Provider;
  let dataDir: string;
  const ids = { lines: 0, cancel: 0, timeout: 0, gone: 0 };
  let restartedAt = 0;
  // Unique per run, so a leftover process of another run cannot pass or fail the test.
  const tag = `${process.pid}${Date.now() % 100000}`;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-reattach-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const db = await freshDatabase(kind, `pglite:${join(dataDir, 'db')}`);
    cleanups.push(() => db.drop());
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    cleanups.push(() => gitlab.close());
    const shardName = `reattach-${kind}`;
    const yaml = `${shardYaml({ shard: shardName, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 4, max: 6 })}jobs: { unreachableTimeout: 5s }\n`;
    const configPath = join(dataDir, 'shard.yaml');
    writeFileSync(configPath, yaml);
    provider = await providerFactory('local')!({}, { shard: shardName, dataDir, log: createLogger({ level: 'silent' }) });
    cleanups.push(() => provider.close());

    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'start', '--config', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += String(c)));
    cleanups.push(() => void child.kill('SIGKILL'));

    ids.lines = gitlab.enqueue({ runnerToken: TOKEN, script: [`for i in $(seq 1 ${LINES}); do echo "line $i of ${LINES}"; sleep 0.2; done`, 'exit 3'], git: false });
    ids.cancel = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo cancel-me', `sleep 1${tag}1`], git: false });
    ids.timeout = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo time-me-out', `sleep 1${tag}2`], git: false, timeoutS: 12 });
    ids.gone = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo lose-my-vm', `sleep 1${tag}3`], git: false });
    await waitUntil(() => gitlab.job(ids.lines).trace.includes('line 8 of'), 60_000, `jobs running (manager stderr: ${stderr.slice(-1000)})`);
    for (const [id, text] of [[ids.cancel, 'cancel-me'], [ids.timeout, 'time-me-out'], [ids.gone, 'lose-my-vm']] as const) {
      await waitUntil(() => gitlab.job(id).trace.includes(text), 30_000, `job ${id} started`);
    }
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));

    // While no manager runs: the cloud deletes one job's VM.
    const database = await openDatabase(db.url, { log: createLogger({ level: 'silent' }) });
    const row = await database.db.selectFrom('jobs').innerJoin('vms', 'vms.id', 'jobs.vm_id').select(['vms.name', 'vms.id', 'vms.cloud_id']).where('jobs.id', '=', String(ids.gone)).executeTakeFirstOrThrow();
    await database.close();
    await provider.delete([{ vmId: row.id, name: row.name, cloudId: row.cloud_id }]);

    restartedAt = Date.now();
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false, reportPollMs: 200 });
    cleanups.push(() => shard.close());
  }, 120_000);

  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  const vmGone = async (vmId: string) => !(await provider.list({ [LABEL_SHARD]: shard.config.shard })).vms.some((c) => c.vmId === vmId);

  it('the job that ran on reports its real exit code and GitLab holds every line once, in order', async () => {
    const final = await gitlab.waitForFinal(ids.lines, 60_000);
    expect({ state: final.state, exitCode: final.exitCode, reason: final.failureReason }).toEqual({ state: 'failed', exitCode: 3, reason: 'script_failure' });
    const lines = final.trace.split('\n').filter((l) => /^line \d+ of/.test(l));
    expect(lines).toEqual(Array.from({ length: LINES }, (_, i) => `line ${i + 1} of ${LINES}`));
    expect(final.trace.match(/Running with runner-fleet \(shard/g)).toHaveLength(1);
    expect(final.trace.endsWith('\nERROR: Job failed: exit code 3\n')).toBe(true);
    expect(final.traceValid).toBe(true); // checksum and size of the trace GitLab holds
    const { event } = await expectJobCleanedUp(shard, ids.lines, vmGone);
    expect(event.billable).toBe(true);
    expect(event.outcome).toBe('failed');
  });

  it('a cancel after the re-attach kills the job on its VM', async () => {
    gitlab.cancel(ids.cancel);
    const final = await gitlab.waitForFinal(ids.cancel, 30_000);
    expect(final.state).toBe('canceled');
    expect(final.trace).toContain('cancel-me');
    await expectJobCleanedUp(shard, ids.cancel, vmGone);
    await waitUntil(() => running(`sleep 1${tag}1`).length === 0, 10_000, 'the canceled job process gone');
  });

  it('a timeout after the re-attach counts from pick-up, as the database recorded it', async () => {
    const final = await gitlab.waitForFinal(ids.timeout, 40_000);
    expect(final.failureReason).toBe('job_execution_timeout');
    expect(final.trace).toContain('execution took longer than 12 seconds');
    // Ended near pick-up + 12 s, not 12 s after the new manager started.
    expect(final.finishedAt! - final.pickedAt!).toBeLessThan(12_000 + 4_000);
    expect(final.finishedAt! - restartedAt).toBeLessThan(12_000);
    await expectJobCleanedUp(shard, ids.timeout, vmGone);
    await waitUntil(() => running(`sleep 1${tag}2`).length === 0, 10_000, 'the timed-out job process gone');
  });

  it('a job whose VM was deleted while no manager ran fails as our fault, not billed', async () => {
    const final = await gitlab.waitForFinal(ids.gone, 40_000);
    expect({ state: final.state, reason: final.failureReason }).toEqual({ state: 'failed', reason: 'runner_system_failure' });
    expect(final.trace).toContain('lose-my-vm');
    expect(final.trace).toMatch(/ERROR: Job failed \(system failure\): the job's VM is gone/);
    const { event } = await expectJobCleanedUp(shard, ids.gone, vmGone);
    expect(event.billable).toBe(false);
    expect(running(`sleep 1${tag}3`)).toEqual([]);
  });
});
