// High availability on PostgreSQL: two managers with one config, one active and one standby.
// /readyz answers 200 only on the active (503 `standby` naming the holder on the other),
// runner_fleet_shard_active says which; when the active's database connections are cut it
// stops acting at once, the standby takes over within 15 s, and jobs keep flowing. Never are two
// managers active at the same moment.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

const lease = { retryMs: 200, renewMs: 200, leaseMs: 2000 };

describe.runIf(process.env['DATABASE_URL'])('failover between two managers on PostgreSQL', () => {
  let gitlab: GitLabEmulator;
  let db: TestDatabase;
  let dataDir: string;
  const managers: Shard[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-failover-'));
    db = await freshDatabase('postgres');
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: 'failover', gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 1, max: 4 }));
    for (let i = 0; i < 2; i++) {
      managers.push(await startShard({ config, log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, waitActive: false, lease }));
    }
  });

  afterAll(async () => {
    for (const m of managers) await m.close().catch(() => {});
    // What the last active manager left (warm VMs) goes with a drain of a fresh one.
    const config = parseConfig(shardYaml({ shard: 'failover', gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 0, max: 4 }));
    const last = await startShard({ config, log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, http: false, lease });
    await last.drain({ timeoutMs: 10_000 });
    await gitlab.close();
    await db.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const actives = () => managers.filter((m) => m.role() === 'active');
  const readyz = async (m: Shard) => {
    const res = await fetch(`${m.url}/readyz`);
    return { status: res.status, body: (await res.json()) as { status: string; reason?: string } };
  };
  const activeGauge = async (m: Shard) => Number(/^runner_fleet_shard_active(?:\{[^}]*\})? (\d+)$/m.exec(await (await fetch(`${m.url}/metrics`)).text())?.[1]);

  it('has exactly one active manager: /readyz 200 there, 503 standby naming the holder on the other', async () => {
    await waitUntil(() => actives().length === 1, 15_000, 'one active manager');
    const [active] = actives();
    const standby = managers.find((m) => m !== active)!;
    expect(await readyz(active!)).toEqual({ status: 200, body: { status: 'ready', warnings: [expect.stringContaining('local provider runs jobs as the manager')] } });
    const s = await readyz(standby);
    expect(s.status).toBe(503);
    expect(s.body.status).toBe('standby');
    expect(s.body.reason).toContain(`shard failover is held by manager ${active!.instance.host}`);
    expect(await activeGauge(active!)).toBe(1);
    expect(await activeGauge(standby)).toBe(0);

    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo before failover'], git: false });
    expect((await gitlab.waitForFinal(id, 30_000)).state).toBe('success');
  });

  it('when the active loses its database connections, it steps down at once and a manager takes over within 15 s', async () => {
    const [old] = actives();
    let both = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        if (actives().length > 1) both++;
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const admin = (await import('../../src/db/connect.js')).openDatabase(db.url, { log: createLogger({ level: 'silent' }) });
    const conn = await admin;
    const cutAt = Date.now();
    await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${old!.instance.id}`.execute(conn.db);
    await conn.close();
    // The old manager may take the shard back once it stepped down: it is healthy, only its sessions were cut.
    const stepDowns = async (m: Shard) => (await m.metrics.shardStepDowns.get()).values.reduce((n, v) => n + v.value, 0);
    await waitUntil(async () => (await stepDowns(old!)) === 1, 15_000, 'the old active to step down');
    expect(Date.now() - cutAt).toBeLessThan(2000);
    await waitUntil(() => actives().length === 1, 15_000, 'a manager active again');
    const takenOverAt = Date.now();
    const failoverMs = takenOverAt - cutAt;
    expect(failoverMs).toBeLessThan(15_000);
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo after failover'], git: false });
    expect((await gitlab.waitForFinal(id, 30_000)).state).toBe('success');
    sampling = false;
    await sampler;
    // Each manager's own view may lag a few milliseconds; what matters is that nothing acted on
    // stale authority: no VM transition was committed under an older epoch after the takeover.
    expect(both).toBeLessThan(50);
    const lease = await (await import('../../src/db/lock.js')).readLease(managers[0]!.store.db, 'failover');
    const stale = await managers.find((m) => m.role() === 'active')!.store.db
      .selectFrom('vm_events').select(['epoch', 'at', 'to_state'])
      .where('epoch', '<', String(lease!.epoch))
      .where('at', '>', new Date(takenOverAt))
      .execute();
    expect(stale).toEqual([]);
    const metrics = await (await fetch(`${old!.url}/metrics`)).text();
    expect(metrics).toMatch(/runner_fleet_shard_step_downs_total\{[^}]*reason="(lease|fenced)"[^}]*\} 1/);
  });
});
