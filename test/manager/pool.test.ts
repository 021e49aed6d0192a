// The pool against a scriptable in-memory cloud and a real database: warm-pool upkeep, the max
// cap, and the failure paths (create errors, boot timeouts, failed deletes) ending in deletion.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import pino from 'pino';
import type { ShardConfig } from '../../src/config/types.js';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { realClock } from '../../src/manager/clock.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { Pool } from '../../src/manager/pool.js';
import { Store } from '../../src/manager/store.js';
import { ProviderError, type CreateResult, type VmRef, type VmSpec } from '../../src/providers/provider.js';
import { waitUntil } from '../helpers/shard.js';
import { MemoryCloud, config, fakeSession } from './pool-fixtures.js';

/** A memory cloud with a standby tier whose stop calls end when the test says. */
class StandbyCloud extends MemoryCloud {
  override readonly capabilities = { ...new MemoryCloud().capabilities, stopStart: true };
  constructor(private readonly held: (done: () => void) => void) {
    super();
  }
  async stop(refs: VmRef[]) {
    await new Promise<void>((done) => this.held(done));
    for (const r of refs) this.vms.get(r.name)!.state = 'stopped';
  }
  async start(refs: VmRef[]) {
    for (const r of refs) this.vms.get(r.name)!.state = 'running';
  }
}

describe('Pool', () => {
  let close: () => Promise<void>;
  let store: Store;
  let cloud: MemoryCloud;
  let pool: Pool | undefined;

  beforeEach(async () => {
    const database = await openDatabase('pglite:memory', { log: pino({ level: 'silent' }) });
    await migrateToLatest(database.db, pino({ level: 'silent' }));
    store = new Store(database.db, 'pool-test', Buffer.alloc(32, 7));
    cloud = new MemoryCloud();
    close = database.close;
  });
  afterEach(async () => {
    await pool?.stop();
    pool = undefined;
    await close();
  });

  let metrics: ReturnType<typeof createMetrics>;
  function start(cfg: ShardConfig, probe = async () => fakeSession) {
    metrics = createMetrics({ shard: 'pool-test', defaultMetrics: false });
    pool = new Pool({ config: cfg, store, providers: new Map([['memory', cloud]]), metrics, log: pino({ level: 'silent' }), clock: realClock, probe, tickMs: 20 });
    pool.start();
    return pool;
  }

  const states = async () => (await store.liveVms()).map((v) => v.state).sort();

  it('fills the warm pool to idle and no further', async () => {
    start(config({ idle: 3, max: 10 }));
    await waitUntil(async () => (await states()).join() === 'ready,ready,ready', 5000, 'three warm VMs');
    await new Promise((r) => setTimeout(r, 200));
    expect(cloud.creates).toBe(3);
  });

  it('replaces a VM taken for a job, within max', async () => {
    const p = start(config({ idle: 2, max: 3 }));
    await waitUntil(async () => (await states()).join() === 'ready,ready', 5000, 'two warm VMs');
    const vm = p.reserve('small')!;
    expect(vm).not.toBeNull();
    await store.db.transaction().execute((trx) => store.transition(vm.id, 'ready', 'assigned', {}, null, trx));
    await waitUntil(async () => (await states()).join() === 'assigned,ready,ready', 5000, 'a replacement');
    const vm2 = p.reserve('small')!;
    await store.transition(vm2.id, 'ready', 'assigned');
    await new Promise((r) => setTimeout(r, 300));
    expect((await states()).join()).toBe('assigned,assigned,ready'); // max 3: no fourth VM
  });

  it('never hands out a VM bound since its last tick: a released VM that is no longer ready is not reserved again', async () => {
    const p = start(config({ idle: 4, max: 10 }));
    await waitUntil(async () => (await states()).join() === 'ready,ready,ready,ready', 15_000, 'four warm VMs');
    for (let i = 0; i < 3; i++) {
      const a = p.reserve('small')!;
      await store.transition(a.id, 'ready', 'assigned');
      p.release(a.id);
      // At once, as a second request slot would: the tick's rows may still say `a` is ready.
      const b = p.reserve('small');
      expect(b?.id).not.toBe(a.id);
      if (b) p.release(b.id);
    }
  });

  it('records every transition of a VM in vm_events', async () => {
    start(config({ idle: 1, max: 1 }));
    await waitUntil(async () => (await states()).join() === 'ready', 5000, 'a warm VM');
    const [vm] = await store.liveVms();
    const events = await store.db.selectFrom('vm_events').select(['from_state', 'to_state']).where('vm_id', '=', vm!.id).orderBy('id').execute();
    expect(events.map((e) => `${e.from_state}>${e.to_state}`)).toEqual(['null>requested', 'requested>creating', 'creating>booting', 'booting>ready']);
  });

  it('fails a VM whose creation the cloud refuses, and deletes it', async () => {
    cloud.failCreate = new ProviderError('fatal', 'machine type not found');
    start(config({ idle: 1, max: 1 }));
    await waitUntil(async () => (await store.db.selectFrom('vm_events').select('to_state').where('to_state', '=', 'deleted').execute()).length > 0, 5000, 'a deleted VM');
    const failed = await store.db.selectFrom('vms').select(['failure']).where('failure', 'is not', null).execute();
    expect(failed[0]?.failure).toContain('machine type not found');
  });

  it('stops growing a class whose quota is exhausted, and says so in a metric', async () => {
    cloud.failCreate = new ProviderError('quota', "Quota 'CPUS' exceeded. Limit: 8.0 in region us-central1.");
    start(config({ idle: 2, max: 4 }));
    await waitUntil(() => cloud.creates >= 1, 5000, 'a first create');
    // Ticks run every 20 ms: without the stop, the pool would retry a create at nearly every tick.
    await new Promise((r) => setTimeout(r, 600));
    expect(cloud.creates).toBeLessThanOrEqual(2); // one batch of two VMs at most
    const gauge = await metrics.registry.getSingleMetricAsString('runner_fleet_class_growth_blocked');
    expect(gauge).toMatch(/runner_fleet_class_growth_blocked\{[^}]*class="small"[^}]*reason="quota"[^}]*\} 1/);
  });

  it('fails and replaces a VM that never becomes reachable within bootTimeout', async () => {
    cloud.neverRunning = true;
    start(config({ idle: 1, max: 2 }, 300));
    await waitUntil(async () => (await store.db.selectFrom('vms').select('failure').where('failure', '=', 'boot timeout').execute()).length > 0, 5000, 'a boot timeout');
    // The failed VM is replaced at a later tick.
    await waitUntil(() => cloud.creates >= 2, 5000, 'a replacement VM');
  });

  it('retries a failed cloud delete until it succeeds', async () => {
    const p = start(config({ idle: 1, max: 1 }));
    await waitUntil(async () => (await states()).join() === 'ready', 5000, 'a warm VM');
    cloud.failDelete = 1;
    p.freeze(); // draining: warm VMs are retired
    await waitUntil(async () => (await states()).length === 0, 15_000, 'the VM deleted after a retry');
    expect(cloud.deletes).toBe(2);
    expect(cloud.vms.size).toBe(0);
  });

  it('counts a VM being stopped into standby once: no VM beyond max while its stop call runs', async () => {
    const stops: (() => void)[] = [];
    cloud = new StandbyCloud((done) => stops.push(done));
    const cfg = config({ idle: 1, max: 2 });
    cfg.classes['small']!.pool.standby = 1;
    start(cfg);
    try {
      await waitUntil(() => stops.length === 1, 5000, 'the standby VM being stopped');
      await new Promise((r) => setTimeout(r, 300)); // ~15 ticks with the stop call in flight
      expect(cloud.creates).toBe(2); // one hot, one for standby: max 2
    } finally {
      for (const done of stops) done(); // else stopping the pool waits for the call
    }
    await waitUntil(async () => (await states()).join() === 'ready,stopped', 5000, 'one hot and one standby VM');
    expect(cloud.creates).toBe(2);
  });

  it('keeps VMs still booting for standby hot when hot falls short, instead of stopping and resuming them', async () => {
    let open!: () => void;
    const booted = new Promise<void>((r) => (open = r));
    const stops: (() => void)[] = [];
    cloud = new StandbyCloud((done) => {
      stops.push(done);
      done();
    });
    const cfg = config({ idle: 0, max: 10 });
    cfg.classes['small']!.pool.standby = 2;
    start(cfg, async () => {
      await booted; // every boot probe waits: the VMs stay booting
      return fakeSession;
    });
    await waitUntil(() => cloud.creates === 2, 5000, 'two VMs made for standby');
    const first = (await store.liveVms()).map((v) => v.id);
    // Hot now wants two while both still boot for standby: they are kept hot, and standby gets new ones.
    cfg.classes['small']!.pool.idle = 2;
    await waitUntil(() => cloud.creates === 4, 5000, 'two new VMs for standby');
    await new Promise((r) => setTimeout(r, 200));
    expect(cloud.creates).toBe(4); // none for hot
    open();
    await waitUntil(async () => (await states()).join() === 'ready,ready,stopped,stopped', 5000, 'two hot and two standby VMs');
    const rows = await store.liveVms();
    expect(rows.filter((v) => first.includes(v.id)).map((v) => v.state)).toEqual(['ready', 'ready']);
    expect(stops).toHaveLength(2); // only the new ones were stopped; none resumed
  });

  it('boots a VM of a batch as soon as its own create result comes, not when the batch ends', async () => {
    // A batch cloud (gcp's bulkInsert): the first VM's result is known early, the rest are held.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const batchCloud = Object.assign(cloud, { capabilities: { ...cloud.capabilities, batchCreate: true } });
    batchCloud.createMany = async (specs: VmSpec[], onResult?: (r: CreateResult) => void) => {
      const results: CreateResult[] = [];
      for (const [i, spec] of specs.entries()) {
        const r: CreateResult = { ok: true, vm: await cloud.create(spec) };
        results.push(r);
        if (i === 0) {
          onResult?.(r);
          await held;
        }
      }
      for (const r of results.slice(1)) onResult?.(r);
      return results;
    };
    start(config({ idle: 3, max: 3 }));
    try {
      await waitUntil(async () => (await states()).join() === 'creating,creating,ready', 5000, 'the first VM ready while the batch is held');
    } finally {
      release();
    }
    await waitUntil(async () => (await states()).join() === 'ready,ready,ready', 5000, 'all three ready');
    expect(cloud.creates).toBe(3);
  });

  it('claims cold-start room atomically: claims between two ticks never pass max', async () => {
    const cfg = config({ idle: 0, max: 2 });
    metrics = createMetrics({ shard: 'pool-test', defaultMetrics: false });
    pool = new Pool({ config: cfg, store, providers: new Map([['memory', cloud]]), metrics, log: pino({ level: 'silent' }), clock: realClock, probe: async () => fakeSession, tickMs: 60_000 });
    const cls = cfg.classes['small']!;
    expect(pool.claimRoom(cls)).toBeNull(); // no counts before the first tick
    await pool.kick();
    const a = pool.claimRoom(cls);
    const b = pool.claimRoom(cls);
    expect(a).not.toBeNull();
    expect(b).not.toBeNull();
    expect(pool.claimRoom(cls)).toBeNull();
    pool.releaseRoom('small', a!);
    expect(pool.claimRoom(cls)).not.toBeNull();
    expect(pool.claimRoom(cls)).toBeNull();
    await pool.kick(); // claims outlive a tick until the VMs they became are read
    expect(pool.claimRoom(cls)).toBeNull();
  });

  it("counts the VMs its own tick created against cold-start room until a tick reads them", async () => {
    const cfg = config({ idle: 1, max: 2 });
    metrics = createMetrics({ shard: 'pool-test', defaultMetrics: false });
    pool = new Pool({ config: cfg, store, providers: new Map([['memory', cloud]]), metrics, log: pino({ level: 'silent' }), clock: realClock, probe: async () => fakeSession, tickMs: 60_000 });
    const cls = cfg.classes['small']!;
    // Hold the create call so no follow-up tick refreshes the counts.
    const creating = new Promise<void>((r) => setTimeout(r, 300));
    const create = cloud.create.bind(cloud);
    cloud.create = async (spec) => (await creating, create(spec));
    await pool.kick(); // counts say 0 VMs; the tick then creates one for idle
    expect(cloud.creates).toBe(0);
    expect(pool.claimRoom(cls)).not.toBeNull();
    expect(pool.claimRoom(cls)).toBeNull();
    await pool.settle();
  });
});
