// `runner-fleet start --handover`: one SIGTERM ends the manager at once (a rolling restart must
// not hold the shard for as long as its longest job runs), leaving its running job and its warm
// VMs to the next manager, which finishes the job, bills it once and keeps the warm VMs.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard } from '../../src/manager/shard.js';
import { LABEL_SHARD, providerFactory } from '../../src/providers/provider.js';
import '../../src/providers/builtin.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

describe('start --handover', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it('exits at the first SIGTERM without waiting for the running job; the next manager finishes it and keeps the warm VMs', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'rf-handover-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const gitlab: GitLabEmulator = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    cleanups.push(() => gitlab.close());
    const shardName = 'handover';
    const yaml = shardYaml({ shard: shardName, gitlabUrl: gitlab.url, dbUrl: `pglite:${join(dataDir, 'db')}`, dataDir, idle: 2, max: 4 });
    const configPath = join(dataDir, 'shard.yaml');
    writeFileSync(configPath, yaml);
    const provider = await providerFactory('local')!({}, { shard: shardName, dataDir, log: createLogger({ level: 'silent' }) });
    cleanups.push(() => provider.close());
    const vmNames = async () => (await provider.list({ [LABEL_SHARD]: shardName })).vms.map((v) => v.name).sort();

    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'start', '--handover', '--config', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += String(c)));
    cleanups.push(() => void child.kill('SIGKILL'));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));

    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo started', 'sleep 12', 'echo finished-under-the-next-manager'], git: false });
    await waitUntil(() => gitlab.job(id).trace.includes('started'), 60_000, `job running (manager stderr: ${stderr})`);
    // The job's VM and two warm ones.
    await waitUntil(async () => (await vmNames()).length >= 3, 60_000, 'two warm VMs beside the job');
    const before = await vmNames();

    const t0 = Date.now();
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(8_000); // the job had about 10 s left to run
    expect(gitlab.job(id).state).toBe('running');
    expect(await vmNames()).toEqual(before); // nothing deleted: the next manager takes them over

    const shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false });
    cleanups.push(() => shard.close());
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain('finished-under-the-next-manager');
    const events = await shard.store.db.selectFrom('billing_events').selectAll().where('job_id', '=', String(id)).execute();
    expect(events).toHaveLength(1);
    // The warm VMs were adopted as they were, not deleted and made again.
    const ready = (await shard.store.db.selectFrom('vms').select(['name']).where('shard', '=', shardName).where('state', '=', 'ready').execute()).map((v) => v.name);
    expect(ready.filter((n) => before.includes(n)).length).toBe(2);
    await shard.drain({ timeoutMs: 20_000 });
    expect(await vmNames()).toEqual([]);
  }, 150_000);
});
