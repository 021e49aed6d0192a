// The reconciler's sweep: which cloud VMs of the shard are orphans, which rows are lost, which
// are stuck mid-creation; partial lists, failing providers and overlapping sweeps.
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ShardConfig } from '../../src/config/types.js';
import type { GitLabClient } from '../../src/gitlab/client.js';
import { realClock, type Clock } from '../../src/manager/clock.js';
import { createMetrics, type Metrics } from '../../src/manager/metrics.js';
import { Reconciler } from '../../src/manager/reconciler.js';
import { Store } from '../../src/manager/store.js';
import type { VmState } from '../../src/manager/vm-states.js';
import { LABEL_SHARD, LABEL_VM, ProviderError, createEach, type CloudVm, type Provider, type VmRef } from '../../src/providers/provider.js';
import { databaseKinds, migratedDatabase } from '../helpers/database.js';

class ListedCloud implements Provider {
  readonly capabilities = { batchCreate: true, stopStart: false, gpu: false, windows: false, nestedVms: false };
  vms: CloudVm[] = [];
  unreachable: string[] = [];
  deleted: string[] = [];
  lists = 0;
  failList?: Error;
  failDelete?: Error;
  /** While set, list waits for it. */
  gate?: Promise<void>;
  constructor(readonly name = 'memory') {}
  async create(): Promise<never> {
    throw new Error('not used');
  }
  createMany(specs: Parameters<Provider['createMany']>[0]) {
    return createEach(this, specs);
  }
  async describe() {
    return { vms: [], unreachable: [] };
  }
  async list() {
    this.lists++;
    await this.gate;
    if (this.failList) throw this.failList;
    return { vms: this.vms, unreachable: this.unreachable };
  }
  async delete(refs: VmRef[]) {
    if (this.failDelete) throw this.failDelete;
    this.deleted.push(...refs.map((r) => r.name));
  }
  connectInfo(): never {
    throw new Error('not used');
  }
  async close() {}
}

const SHARD = 'sweep-test';
const config = { shard: SHARD, classes: { small: { bootTimeoutMs: 5 * 60_000 } }, providers: { memory: {}, other: {} } } as unknown as ShardConfig;
const cloudVm = (name: string, vmId?: string, zone?: string): CloudVm => ({
  name, cloudId: name, state: 'running', labels: { [LABEL_SHARD]: SHARD, ...(vmId ? { [LABEL_VM]: vmId } : {}) }, ...(vmId ? { vmId } : {}), ...(zone ? { zone } : {}),
});

describe.each(databaseKinds())('reconciler sweep on %s', (kind) => {
  let store: Store;
  let close: () => Promise<void>;
  let cloud: ListedCloud;
  let other: ListedCloud;
  let metrics: Metrics;
  /** The sweep's clock runs `ahead` ms ahead of the rows' timestamps. */
  let ahead: number;
  const clock: Clock = { now: () => Date.now() + ahead, sleep: realClock.sleep };
  const reconciler = (providers: ListedCloud[] = [cloud], lostGraceMs?: number) =>
    new Reconciler({
      config, store, providers: new Map(providers.map((p) => [p.name, p])), gitlab: {} as GitLabClient, metrics,
      log: pino({ level: 'silent' }), clock, ...(lostGraceMs !== undefined ? { lostGraceMs } : {}),
    });

  beforeEach(async () => {
    const database = await migratedDatabase(kind);
    store = new Store(database.db, SHARD, Buffer.alloc(32, 3));
    close = database.close;
    cloud = new ListedCloud('memory');
    other = new ListedCloud('other');
    metrics = createMetrics({ shard: SHARD, defaultMetrics: false });
    ahead = 0;
  });
  afterEach(() => close());

  const PATH: VmState[] = ['requested', 'creating', 'booting', 'ready', 'assigned', 'running'];
  const row = async (id: string, state: VmState, opts: { provider?: string; zone?: string } = {}) => {
    await store.insertVm({ id, class: 'small', provider: opts.provider ?? 'memory', name: `rf-${SHARD}-${id}`, publicKey: 'ssh-ed25519 AAAA x', privateKey: 'k', hostKeyFingerprint: 'SHA256:pinned' });
    for (let i = 1; i <= PATH.indexOf(state); i++) await store.transition(id, PATH[i - 1]!, PATH[i]!, PATH[i] === 'booting' ? { zone: opts.zone ?? null } : {});
  };
  const stateOf = async (id: string) => (await store.vm(id))?.state;
  const failures = async (reason: string) => (await metrics.vmFailures.get()).values.filter((v) => v.labels.reason === reason).reduce((n, v) => n + v.value, 0);

  it('recover deletes a warm VM without a pinned host key (made before sql/006) and keeps a pinned one', async () => {
    await row('p1', 'ready');
    await row('u1', 'ready');
    await store.db.updateTable('vms').set({ host_key_fingerprint: null }).where('id', '=', 'u1').execute();
    cloud.vms = [cloudVm(`rf-${SHARD}-p1`, 'p1'), cloudVm(`rf-${SHARD}-u1`, 'u1')];
    await reconciler([cloud], 0).recover();
    expect(await stateOf('p1')).toBe('ready');
    expect(await stateOf('u1')).toBe('deleting');
  });

  it('deletes VMs the database does not know, and keeps those it knows by label or by name', async () => {
    await row('a1', 'ready');
    await row('b2', 'booting');
    cloud.vms = [cloudVm(`rf-${SHARD}-a1`, 'a1'), cloudVm(`rf-${SHARD}-b2` /* label not set yet */), cloudVm(`rf-${SHARD}-zz`, 'zz'), cloudVm('stranger')];
    expect(await reconciler([cloud], 0).sweep()).toBe(2);
    expect(cloud.deleted.sort()).toEqual([`rf-${SHARD}-zz`, 'stranger']);
    expect(await stateOf('b2')).toBe('booting'); // present by name: not lost
  });

  it('spares an unlabelled instance while a batch create of the provider is in flight, never a labelled stray', async () => {
    await row('c3', 'creating');
    cloud.vms = [cloudVm('i-0123456789abcdef0'), cloudVm(`rf-${SHARD}-gone`, 'gone')];
    expect(await reconciler().sweep()).toBe(1);
    expect(cloud.deleted).toEqual([`rf-${SHARD}-gone`]);
    await store.transition('c3', 'creating', 'failed');
    expect(await reconciler().sweep()).toBe(2);
  });

  it('marks a warm VM that vanished from a complete list as failed once past the grace period', async () => {
    await row('d4', 'ready');
    await reconciler().sweep();
    expect(await stateOf('d4')).toBe('ready'); // within grace: EC2 lists lag new instances
    ahead = 4 * 60_000; // past the default grace
    await reconciler().sweep();
    expect(await stateOf('d4')).toBe('failed');
    expect(await failures('lost')).toBe(1);
  });

  it('never takes absence from a partial list as gone: VMs in the unreachable zone or of unknown zone stay', async () => {
    await row('e1', 'ready', { zone: 'zone-a' });
    await row('e2', 'running', { zone: 'zone-b' });
    await row('e3', 'ready'); // zone unknown
    cloud.unreachable = ['zones/zone-a'];
    await reconciler([cloud], 0).sweep();
    expect(await stateOf('e1')).toBe('ready');
    expect(await stateOf('e3')).toBe('ready');
    // zone-b answered: its running VM is known gone, and is failed (its job is the executor's).
    expect(await stateOf('e2')).toBe('failed');
    expect(cloud.deleted).toEqual([]);
  });

  it('fails rows stuck in requested or creating past the boot timeout, and they stop sparing unlabelled strays', async () => {
    await row('s1', 'creating');
    await row('s2', 'requested');
    cloud.vms = [cloudVm('i-0fedcba987654321f')];
    expect(await reconciler().sweep()).toBe(0);
    expect(await stateOf('s1')).toBe('creating');
    ahead = 5 * 60_000 + 61_000; // bootTimeout + margin
    expect(await reconciler().sweep()).toBe(1);
    expect(await stateOf('s1')).toBe('failed');
    expect(await stateOf('s2')).toBe('failed');
    expect(await failures('stuck')).toBe(2);
  });

  it('a provider whose list or delete fails does not stop the sweep of the others', async () => {
    await row('f1', 'ready', { provider: 'other' });
    cloud.failList = new ProviderError('retryable', 'list exploded');
    other.vms = [cloudVm(`rf-${SHARD}-orphan`, 'orphan')];
    const r = reconciler([cloud, other], 0);
    expect(await r.sweep()).toBe(1);
    expect(other.deleted).toEqual([`rf-${SHARD}-orphan`]);
    expect(await stateOf('f1')).toBe('failed'); // absent from other's complete list

    // A delete that fails still lets the lost VMs be judged, and the next provider run.
    await row('f2', 'ready');
    cloud.failList = undefined;
    cloud.failDelete = new ProviderError('retryable', 'delete exploded');
    cloud.vms = [cloudVm(`rf-${SHARD}-orphan2`, 'orphan2')];
    other.vms = [cloudVm(`rf-${SHARD}-orphan3`, 'orphan3')];
    expect(await r.sweep()).toBe(1);
    expect(await stateOf('f2')).toBe('failed');
    expect(other.deleted).toContain(`rf-${SHARD}-orphan3`);
  });

  it('runs one sweep at a time: overlapping calls share it and list each provider once', async () => {
    let open!: () => void;
    cloud.gate = new Promise<void>((r) => (open = r));
    cloud.vms = [cloudVm(`rf-${SHARD}-x`, 'x')];
    const r = reconciler([cloud, other]);
    const first = r.sweep();
    const second = r.sweep();
    expect(second).toBe(first);
    open();
    expect(await Promise.all([first, second])).toEqual([1, 1]);
    expect(cloud.lists).toBe(1);
    expect(other.lists).toBe(1);
    cloud.gate = undefined;
    await r.sweep(); // a later call is a new sweep
    expect(cloud.lists).toBe(2);
  });
});
