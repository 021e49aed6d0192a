// Exactly one billing event per job across crashes: a manager process is SIGKILLed again and
// again right as jobs finish (around the transaction that closes a job and writes its event),
// a last manager finishes the queue, and every job the manager accepted has exactly one event;
// the billing feed pages them all once.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { FEED_START, readFeed } from '../../src/manager/billing-feed.js';
import { startShard } from '../../src/manager/shard.js';
import { databaseKinds, freshDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

const JOBS = 24;
const KILLS = 3;

describe.each(databaseKinds())('billing across SIGKILLs on %s', (kind) => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it('every job the manager accepted has exactly one event, however often the manager dies', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'rf-bill-crash-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const db = await freshDatabase(kind, `pglite:${join(dataDir, 'db')}`);
    cleanups.push(() => db.drop());
    const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    cleanups.push(() => gitlab.close());
    const shardName = `bill-crash-${kind}`;
    const yaml = shardYaml({ shard: shardName, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 3, max: 4 });
    const configPath = join(dataDir, 'shard.yaml');
    writeFileSync(configPath, yaml);
    const ids = Array.from({ length: JOBS }, (_, i) => gitlab.enqueue({ runnerToken: TOKEN, script: [`echo job ${i}`, 'sleep 0.3'], git: false }));
    const final = () => ids.filter((id) => ['success', 'failed', 'canceled'].includes(gitlab.job(id).state)).length;

    for (let k = 0; k < KILLS && final() < JOBS; k++) {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'start', '--config', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (c) => (stderr += String(c)));
      cleanups.push(() => void child.kill('SIGKILL'));
      // Kill right after GitLab hears a job end: the next jobs are finishing, mid-close.
      const target = Math.min(JOBS, final() + 2);
      await waitUntil(() => final() >= target, 90_000, `${target} jobs final (manager stderr: ${stderr.slice(-500)})`);
      await new Promise((r) => setTimeout(r, Math.random() * 250));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }

    const shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'silent' }), tickMs: 100, sweepMs: 1000, defaultMetrics: false, http: false });
    cleanups.push(() => shard.close());
    // A kill while GitLab's answer to /jobs/request is still on its way loses that job to
    // GitLab's stuck-job timeout: the Runner API has no lease to take back. A job whose handout
    // was recorded but not bound is failed back by the next manager (after a grace). Every other
    // job ends, and every job the manager recorded is finished and reported.
    const known = async () => new Set((await shard.store.db.selectFrom('jobs').select('id').execute()).map((j) => Number(j.id)));
    const settled = async () => {
      if ((await shard.store.db.selectFrom('job_handouts').select('job_id').execute()).length > 0) return false;
      // Re-attached jobs close asynchronously after start-up.
      if ((await shard.store.db.selectFrom('jobs').select('id').where('state', '=', 'running').execute()).length > 0) return false;
      const k = await known();
      return ids.every((id) => ['success', 'failed', 'canceled'].includes(gitlab.job(id).state) || (gitlab.job(id).state === 'running' && !k.has(id)));
    };
    // A job GitLab has just handed to this manager looks lost (running, no row) until its handout
    // is recorded a moment later: the state must hold across a pause longer than that.
    for (let stable = false; !stable; ) {
      await waitUntil(settled, 180_000, 'every job final in GitLab, or lost in a kill before it was recorded');
      await new Promise((r) => setTimeout(r, 3000));
      stable = await settled();
    }
    await waitUntil(async () => (await shard.store.db.selectFrom('jobs').select('id').where('reported_at', 'is', null).execute()).length === 0, 30_000, 'every job reported');

    const accepted = await shard.store.db.selectFrom('jobs').select(['id', 'state']).execute();
    const lost = ids.filter((id) => !accepted.some((j) => Number(j.id) === id));
    expect(lost.length).toBeLessThanOrEqual(KILLS); // at most the request in flight at each kill
    for (const id of lost) expect(gitlab.job(id).state).toBe('running');
    expect(accepted.length).toBe(JOBS - lost.length);
    for (const j of accepted) expect(j.state).toBe('finished');
    const perJob = await sql<{ job_id: string; n: number }>`SELECT job_id::text, count(*)::int AS n FROM billing_events WHERE shard = ${shardName} GROUP BY job_id`.execute(shard.store.db);
    expect(perJob.rows.length).toBe(accepted.length);
    for (const r of perJob.rows) expect(r.n, `job ${r.job_id}`).toBe(1);
    // Jobs cut off by a kill are failed as our fault and not billed; the rest succeeded.
    for (const id of ids.filter((i) => !lost.includes(i))) {
      const ev = await shard.store.db.selectFrom('billing_events').select(['outcome', 'billable']).where('job_id', '=', String(id)).where('shard', '=', shardName).executeTakeFirstOrThrow();
      const job = gitlab.job(id);
      if (job.state === 'success') expect(ev).toEqual({ outcome: 'success', billable: true });
      else expect({ state: job.state, reason: job.failureReason, billable: ev.billable }).toEqual({ state: 'failed', reason: 'runner_system_failure', billable: false });
    }
    const page = await readFeed(shard.store.db, shardName, FEED_START, 1000);
    expect(new Set(page.events.map((e) => e.jobId))).toEqual(new Set(accepted.map((j) => Number(j.id))));
    expect(page.events.length).toBe(accepted.length);
  }, 300_000);
});
