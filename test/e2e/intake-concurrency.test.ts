// classes.<name>.requestConcurrency: a class asks GitLab for several jobs at once, each request
// holding its own reserved warm VM, so a burst is handed out in overlapping round trips; an idle
// GitLab still sees one slot's polling, every job handed out is bound to a VM of its own, and a
// drain ends every request in flight.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import '../../src/providers/builtin.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

const SLOTS = 4;
const WARM = 8;
const DELAY_MS = 250;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.each(databaseKinds())('concurrent job requests on %s', (kind) => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-intakeconc-'));
    db = await freshDatabase(kind);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const yaml = shardYaml({ shard: `conc-${kind}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: WARM, max: WARM + 2, requestConcurrency: SLOTS }).replace('requestTimeout: 5s', 'requestTimeout: 30s');
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, http: false });
    await waitUntil(async () => (await shard.store.liveVms()).filter((v) => v.state === 'ready').length >= WARM, 90_000, `${WARM} warm VMs`);
  }, 120_000);

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }, 60_000);

  const inFlight = async () => (await shard.metrics.intakeRequestsInFlight.get()).values.reduce((n, v) => n + v.value, 0);

  it('polls an idle GitLab from one slot only', async () => {
    const before = gitlab.stats().requests;
    await sleep(2000);
    // One slot polls every 200 ms (pollInterval); four polling slots would make about 40 requests.
    expect(gitlab.stats().requests - before).toBeLessThanOrEqual(14);
    expect(gitlab.stats().maxRequestsInFlight).toBe(1);
  });

  it('hands out a burst over overlapping requests, each job bound to a VM of its own', async () => {
    gitlab.faults.requestDelayMs = DELAY_MS;
    const ids = Array.from({ length: WARM }, (_, i) => gitlab.enqueue({ runnerToken: TOKEN, script: [`echo burst-${i}`, 'sleep 1'], git: false }));
    await waitUntil(() => ids.every((id) => gitlab.job(id).pickedAt !== undefined), 30_000, 'every job picked up');
    // Overlap seen by GitLab itself (one request loop never has two in flight); wall-clock
    // figures live in bench/intake-concurrency.ts, not here, where the CPU is shared.
    const most = gitlab.stats().maxRequestsInFlight;
    expect(most).toBeGreaterThan(1);
    expect(most).toBeLessThanOrEqual(SLOTS);
    gitlab.faults.requestDelayMs = 0;

    // Every job GitLab handed out is recorded and bound to its own VM, and runs.
    const finals = await Promise.all(ids.map((id) => gitlab.waitForFinal(id, 60_000)));
    expect(finals.map((f) => f.state)).toEqual(ids.map(() => 'success'));
    ids.forEach((id, i) => expect(finals[i]!.trace).toContain(`burst-${i}`));
    const rows = await Promise.all(ids.map((id) => shard.store.job(id)));
    const vms = rows.map((r) => r?.vm_id);
    expect(vms.every((v) => typeof v === 'string')).toBe(true);
    expect(new Set(vms).size).toBe(WARM);
    // The extra slots parked again: at most slot 0's idle poll can be in flight at this instant.
    expect(await inFlight()).toBeLessThanOrEqual(1);
  }, 90_000);

  it('ends every request in flight on drain, and asks no more', async () => {
    await waitUntil(async () => (await shard.store.liveVms()).filter((v) => v.state === 'ready').length >= SLOTS + 1, 60_000, 'warm VMs again');
    // Long requests, and the gate open (a job just came): every slot has one in flight.
    gitlab.faults.requestDelayMs = 15_000; // under the 30 s requestTimeout
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo opener'], git: false });
    await gitlab.waitFor(id, (j) => j.pickedAt !== undefined, 40_000);
    await waitUntil(async () => (await inFlight()) === SLOTS, 12_000, `${SLOTS} requests in flight`);
    const draining = shard.drain({ timeoutMs: 20_000 });
    // Aborted, not answered: GitLab is still holding them.
    await waitUntil(async () => (await inFlight()) === 0, 5000, 'requests aborted');
    expect(gitlab.stats().requestsInFlight).toBeGreaterThan(0);
    const asked = gitlab.stats().requests;
    await sleep(1000);
    expect(gitlab.stats().requests).toBe(asked);
    await draining;
    expect((await gitlab.waitForFinal(id, 10_000)).state).toBe('success');
  }, 90_000);
});
