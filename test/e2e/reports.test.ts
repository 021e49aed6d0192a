// Closing reports: a final state GitLab refuses for a while (5xx) is delivered by the report
// outbox while the manager runs, without a restart; and a manager that loses the race to close
// a job (another manager closed it first) tells GitLab nothing. Local VMs over real SSH, PGlite
// and real PostgreSQL when DATABASE_URL is set.
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
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

describe.each(databaseKinds())('closing reports on %s', (kind) => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-reports-'));
    db = await freshDatabase(kind);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: `reports-${kind}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 1, max: 3 }));
    shard = await startShard({ config, log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, http: false, reportPollMs: 200 });
  });

  afterAll(async () => {
    await shard?.close();
    const provider = await providerFactory('local')!({}, { shard: `reports-${kind}`, dataDir, log: createLogger({ level: 'silent' }) });
    await provider.delete((await provider.list({ [LABEL_SHARD]: `reports-${kind}` })).vms.map((c) => ({ vmId: c.vmId ?? c.name, name: c.name, cloudId: c.cloudId })));
    await provider.close();
    await gitlab?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const pending = async () => (await shard.metrics.jobReportsPending.get()).values[0]?.value ?? 0;

  it('a final state GitLab refuses with 503 for a while is delivered by the outbox, without a restart', async () => {
    gitlab.faults.finalUpdateStatus = 503;
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo report-me'], git: false });
    await waitUntil(async () => (await shard.store.job(id))?.state === 'finished', 30_000, 'job closed in the database');
    await waitUntil(async () => (await pending()) >= 1, 10_000, 'the outbox counting the refused report');
    await new Promise((r) => setTimeout(r, 2000));
    expect(gitlab.job(id).state).toBe('running'); // GitLab refused every attempt so far
    expect((await shard.store.job(id))?.reported_at).toBeNull();
    gitlab.faults.finalUpdateStatus = undefined;
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain('report-me');
    expect(final.traceValid).toBe(true);
    await waitUntil(async () => (await shard.store.job(id))?.reported_at != null, 10_000, 'job marked reported');
    await waitUntil(async () => (await pending()) === 0, 10_000, 'the outbox empty');
  });

  it('the loser of a close race does not report: the job another manager closed stays as that manager left it', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo racing', 'sleep 2', 'echo done-racing'], git: false });
    await gitlab.waitFor(id, (j) => j.trace.includes('racing'), 30_000);
    // Another manager (this shard's new active one) closes and reports the job first; its
    // report is its own business, recorded as done.
    await shard.store.db
      .updateTable('jobs')
      .set({ state: 'finished', result: 'failed', failure_reason: 'runner_system_failure', finished_at: new Date(), reported_at: new Date() })
      .where('id', '=', String(id))
      .where('shard', '=', shard.config.shard)
      .execute();
    // Our executor sees the script end, writes its closing line and loses the closing transaction.
    await gitlab.waitFor(id, (j) => j.trace.includes('Job succeeded'), 30_000);
    await new Promise((r) => setTimeout(r, 2500));
    expect(gitlab.job(id).state).toBe('running'); // no success from the loser
    const row = await shard.store.job(id);
    expect({ result: row?.result, reason: row?.failure_reason }).toEqual({ result: 'failed', reason: 'runner_system_failure' });
    const events = await shard.store.db.selectFrom('billing_events').selectAll().where('job_id', '=', String(id)).execute();
    expect(events).toHaveLength(0); // the loser wrote none (the winner's is its own)
  });
});
