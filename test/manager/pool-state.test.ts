// The pool's view of the shard at scale, against a real database (PGlite, and PostgreSQL when
// DATABASE_URL is set): rows read do not grow with ticks, a boot stampede does not exhaust a
// small connection pool, and a database failure is never taken for an unreachable VM.
import { afterEach, describe, expect, it } from 'vitest';
import pino from 'pino';
import { sql } from 'kysely';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { realClock } from '../../src/manager/clock.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { Pool } from '../../src/manager/pool.js';
import { Store } from '../../src/manager/store.js';
import type { VmState } from '../../src/manager/vm-states.js';
import { databaseKinds, freshDatabase } from '../helpers/database.js';
import { waitUntil } from '../helpers/shard.js';
import { MemoryCloud, config, fakeSession } from './pool-fixtures.js';

const silent = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.each(databaseKinds())('Pool state at scale (%s)', (kind) => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A fresh store on a database whose pool has two connections (one for PGlite) and a short wait for one. */
  async function world(connectTimeoutMs = 10_000) {
    const tdb = await freshDatabase(kind);
    const database = await openDatabase(tdb.url, { log: silent, poolSize: 2, connectTimeoutMs });
    cleanups.push(() => tdb.drop());
    cleanups.push(() => database.close());
    await migrateToLatest(database.db, silent);
    const store = new Store(database.db, 'pool-test', Buffer.alloc(32, 7));
    // Every VM row read from the table, whoever reads it.
    const read = { rows: 0 };
    const liveVms = store.liveVms.bind(store);
    store.liveVms = async () => {
      const rows = await liveVms();
      read.rows += rows.length;
      return rows;
    };
    return { store, read, cloud: new MemoryCloud() };
  }

  function startPool(w: Awaited<ReturnType<typeof world>>, cfg: ReturnType<typeof config>, opts: { probe?: () => Promise<typeof fakeSession>; resyncMs?: number; log?: pino.Logger } = {}) {
    const pool = new Pool({
      config: cfg,
      store: w.store,
      providers: new Map([['memory', w.cloud]]),
      metrics: createMetrics({ shard: 'pool-test', defaultMetrics: false }),
      log: opts.log ?? silent,
      clock: realClock,
      probe: opts.probe ?? (async () => fakeSession),
      tickMs: 20,
      ...(opts.resyncMs ? { resyncMs: opts.resyncMs } : {}),
    });
    pool.start();
    cleanups.push(() => pool.stop());
    return pool;
  }

  const stateCounts = async (store: Store) =>
    Object.fromEntries((await store.db.selectFrom('vms').select(['state', sql<number>`count(*)::int`.as('n')]).groupBy('state').execute()).map((r) => [r.state, r.n]));

  it('reads the VM table once at start, not at every tick, while jobs come and go', async () => {
    const w = await world();
    const pool = startPool(w, config({ idle: 50, max: 60 }));
    await waitUntil(() => pool.snapshot().filter((r) => r.state === 'ready').length === 50, 60_000, '50 warm VMs');
    const readAtWarm = w.read.rows;
    // 20 jobs, as the executor writes them: bound, then closed (delete intent); the pool replaces each.
    for (let i = 0; i < 20; i++) {
      const vm = pool.reserve('small')!;
      expect(vm).not.toBeNull();
      await w.store.transition(vm.id, 'ready', 'assigned', {}, `job ${i}`);
      pool.release(vm.id);
      await w.store.transition(vm.id, 'assigned', 'deleting', {}, `job ${i} success`);
      pool.deleteNow(vm.id);
    }
    await waitUntil(async () => (await stateCounts(w.store))['deleted'] === 20 && pool.snapshot().filter((r) => r.state === 'ready').length === 50, 60_000, 'the 20 VMs deleted and replaced');
    await sleep(500); // ~25 more idle ticks
    const perJob = (w.read.rows - readAtWarm) / 20;
    console.log(`[${kind}] VM rows read: ${readAtWarm} while warming 50 VMs, ${w.read.rows - readAtWarm} over 20 jobs (${perJob} per job)`);
    expect(w.read.rows - readAtWarm).toBe(0);
    expect(w.cloud.creates).toBe(70);
  });

  it('boots 200 VMs at once on a two-connection database pool: all ready, none failed', async () => {
    // A query waits at most 400 ms for a connection: 200 probe writes at once used to exhaust it.
    const w = await world(400);
    const pool = startPool(w, config({ idle: 200, max: 200 }, 120_000));
    await waitUntil(() => pool.snapshot().filter((r) => r.state === 'ready').length === 200, 120_000, '200 warm VMs');
    expect(await stateCounts(w.store)).toEqual({ ready: 200 });
    expect(w.cloud.creates).toBe(200);
    const failed = await w.store.db.selectFrom('vm_events').select('vm_id').where('to_state', '=', 'failed').execute();
    expect(failed).toEqual([]);
  });

  it('keeps a VM whose ready write fails on the database, and logs a database error with its cause', async () => {
    const w = await world();
    const lines: { msg: string; err?: { type?: string; message?: string } }[] = [];
    const log = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    // The first six booting -> ready writes fail as an exhausted pg pool fails them: more than one probe retries.
    let failures = 6;
    const transition = w.store.transition.bind(w.store);
    w.store.transition = async (id, from, to, ...rest) => {
      if (to === 'ready' && failures > 0) {
        failures--;
        throw new Error('timeout exceeded when trying to connect');
      }
      return transition(id, from as VmState, to, ...rest);
    };
    const pool = startPool(w, config({ idle: 1, max: 1 }), { log });
    await waitUntil(() => pool.snapshot().some((r) => r.state === 'ready'), 30_000, 'a warm VM');
    expect(failures).toBe(0);
    expect(w.cloud.creates).toBe(1);
    expect(await stateCounts(w.store)).toEqual({ ready: 1 });
    expect(lines.filter((l) => l.msg === 'VM failed')).toEqual([]);
    const dbErr = lines.find((l) => l.msg.startsWith('database error recording a ready VM'));
    expect(dbErr?.err?.type).toBe('PoolDatabaseError');
    expect(dbErr?.err?.message).toContain('timeout exceeded when trying to connect');
  });

  it('fails an unreachable VM with the SSH cause in the log', async () => {
    const w = await world();
    const lines: { msg: string; why?: string; err?: { message?: string } }[] = [];
    const log = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    let refused = 1;
    const probe = async () => {
      if (refused-- > 0) throw new Error('connect ECONNREFUSED 127.0.0.1:22', { cause: new Error('socket closed') });
      return fakeSession;
    };
    const pool = startPool(w, config({ idle: 1, max: 1 }), { log, probe });
    await waitUntil(() => pool.snapshot().some((r) => r.state === 'ready'), 30_000, 'a replacement warm VM');
    const failed = lines.find((l) => l.msg === 'VM failed');
    expect(failed?.why).toBe('not reachable over SSH: connect ECONNREFUSED 127.0.0.1:22');
    expect(failed?.err?.message).toBe('connect ECONNREFUSED 127.0.0.1:22: socket closed'); // the cause, kept
    expect(w.cloud.creates).toBe(2);
  });

  it('picks up a row changed behind the store at its next re-read', async () => {
    const w = await world();
    const pool = startPool(w, config({ idle: 1, max: 1 }), { resyncMs: 300 });
    await waitUntil(() => pool.snapshot().some((r) => r.state === 'ready'), 30_000, 'a warm VM');
    const [vm] = pool.snapshot();
    // Another process (an operator's SQL) marks it for deletion: no announcement reaches the pool.
    await w.store.db.updateTable('vms').set({ state: 'deleting' }).where('id', '=', vm!.id).execute();
    await waitUntil(async () => (await stateCounts(w.store))['deleted'] === 1, 30_000, 'the VM deleted after a re-read');
    await waitUntil(() => pool.snapshot().some((r) => r.state === 'ready' && r.id !== vm!.id), 30_000, 'a replacement');
  });
});
