// Crash safety: a manager killed with SIGKILL mid-job and started again leaves no VM behind
// and no job unfinished in GitLab, and the job has exactly one billing event. The job itself
// runs on (detached on its VM) and the new manager reports its real outcome (see reattach.test.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard } from '../../src/manager/shard.js';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { LABEL_SHARD, LABEL_VM, providerFactory } from '../../src/providers/provider.js';
import '../../src/providers/builtin.js';
import { databaseKinds, freshDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

describe.each(databaseKinds())('restart after SIGKILL on %s', (kind) => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it('re-attaches to the interrupted job, reports its real outcome, bills it once and deletes every VM', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'rf-restart-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const db = await freshDatabase(kind, `pglite:${join(dataDir, 'db')}`);
    cleanups.push(() => db.drop());
    const gitlab: GitLabEmulator = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    cleanups.push(() => gitlab.close());
    const shardName = `restart-${kind}`;
    const yaml = shardYaml({ shard: shardName, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 1, max: 3 });
    const configPath = join(dataDir, 'shard.yaml');
    writeFileSync(configPath, yaml);

    // First manager: a separate process we can SIGKILL.
    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'start', '--config', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += String(c)));
    cleanups.push(() => void child.kill('SIGKILL'));

    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo started', 'sleep 4', 'echo finished-after-the-restart'], git: false });
    await waitUntil(() => gitlab.job(id).trace.includes('started'), 60_000, `job running (manager stderr: ${stderr})`);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));

    // The VMs outlive the manager, as cloud VMs would.
    const provider = await providerFactory('local')!({}, { shard: shardName, dataDir, log: createLogger({ level: 'silent' }) });
    cleanups.push(() => provider.close());
    expect((await provider.list({ [LABEL_SHARD]: shardName })).vms.length).toBeGreaterThanOrEqual(1);
    expect(gitlab.job(id).state).toBe('running');

    // Second manager, in-process: recovers, then drains.
    const shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain('finished-after-the-restart');
    const events = await shard.store.db.selectFrom('billing_events').selectAll().where('job_id', '=', String(id)).execute();
    expect(events).toHaveLength(1);
    expect(events[0]!.billable).toBe(true);

    await shard.drain({ timeoutMs: 20_000 });
    expect((await provider.list({ [LABEL_SHARD]: shardName })).vms).toEqual([]);
  });

  it('deletes at start-up a VM of its shard that the database does not know', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'rf-orphan-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const db = await freshDatabase(kind);
    cleanups.push(() => db.drop());
    const shardName = `orphan-${kind}`;
    const provider = await providerFactory('local')!({}, { shard: shardName, dataDir, log: createLogger({ level: 'silent' }) });
    cleanups.push(() => provider.close());
    const keys = generateVmKeyPair('orphan');
    const foreign = { vmId: 'not-in-db', name: `rf-${shardName}-not-in-db`, shard: shardName, className: 'x', labels: { [LABEL_SHARD]: shardName, [LABEL_VM]: 'not-in-db' }, publicKey: keys.publicKey, machine: {}, maxRunSeconds: 600 };
    const other = { ...foreign, vmId: 'other-shard', name: 'rf-someone-else-1', shard: 'someone-else', labels: { [LABEL_SHARD]: 'someone-else', [LABEL_VM]: 'other-shard' } };
    await provider.create(foreign);
    await provider.create(other);
    cleanups.push(() => provider.delete([other]));

    const config = parseConfig(shardYaml({ shard: shardName, gitlabUrl: 'http://127.0.0.1:9', dbUrl: db.url, dataDir, idle: 0, max: 1 }));
    const shard = await startShard({ config, log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, http: false });
    cleanups.push(() => shard.close());
    const names = (await provider.list({})).vms.map((c) => c.name);
    expect(names).not.toContain(foreign.name);
    expect(names).toContain(other.name); // another shard's VM is not ours to delete
  });
});
