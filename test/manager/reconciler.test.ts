// The reconciler's sweep: which cloud VMs of the shard are orphans, and which rows are lost.
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ShardConfig } from '../../src/config/types.js';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { GitLabClient } from '../../src/gitlab/client.js';
import { realClock } from '../../src/manager/clock.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { Reconciler } from '../../src/manager/reconciler.js';
import { Store } from '../../src/manager/store.js';
import { LABEL_SHARD, LABEL_VM, createEach, type CloudVm, type Provider, type VmRef } from '../../src/providers/provider.js';

class ListedCloud implements Provider {
  readonly name = 'memory';
  readonly capabilities = { batchCreate: true, stopStart: false, gpu: false, windows: false, nestedVms: false };
  vms: CloudVm[] = [];
  deleted: string[] = [];
  async create(): Promise<never> {
    throw new Error('not used');
  }
  createMany(specs: Parameters<Provider['createMany']>[0]) {
    return createEach(this, specs);
  }
  async describe() {
    return [];
  }
  async list() {
    return this.vms;
  }
  async delete(refs: VmRef[]) {
    this.deleted.push(...refs.map((r) => r.name));
  }
  connectInfo(): never {
    throw new Error('not used');
  }
  async close() {}
}

const config = { shard: 'sweep-test', classes: {}, providers: { memory: {} } } as unknown as ShardConfig;
const cloudVm = (name: string, vmId?: string): CloudVm => ({ name, cloudId: name, state: 'running', labels: { [LABEL_SHARD]: 'sweep-test', ...(vmId ? { [LABEL_VM]: vmId } : {}) }, ...(vmId ? { vmId } : {}) });

describe('reconciler sweep', () => {
  let store: Store;
  let close: () => Promise<void>;
  let cloud: ListedCloud;
  let reconciler: Reconciler;

  beforeEach(async () => {
    const database = await openDatabase('pglite:memory', { log: pino({ level: 'silent' }) });
    await migrateToLatest(database.db, pino({ level: 'silent' }));
    store = new Store(database.db, 'sweep-test', Buffer.alloc(32, 3));
    close = database.close;
    cloud = new ListedCloud();
    reconciler = new Reconciler({ config, store, providers: new Map([['memory', cloud]]), gitlab: {} as GitLabClient, metrics: createMetrics({ shard: 'sweep-test', defaultMetrics: false }), log: pino({ level: 'silent' }), clock: realClock });
  });
  afterEach(() => close());

  const row = async (id: string, state: 'creating' | 'booting' | 'ready') => {
    await store.insertVm({ id, class: 'small', provider: 'memory', name: `rf-sweep-test-${id}`, publicKey: 'ssh-ed25519 AAAA x', privateKey: 'k' });
    if (state !== 'creating') {
      await store.transition(id, 'requested', 'creating');
      if (state === 'booting' || state === 'ready') await store.transition(id, 'creating', 'booting');
      if (state === 'ready') await store.transition(id, 'booting', 'ready');
    } else {
      await store.transition(id, 'requested', 'creating');
    }
  };

  it('deletes VMs the database does not know, and keeps those it knows by label or by name', async () => {
    await row('a1', 'ready');
    await row('b2', 'booting');
    cloud.vms = [cloudVm('rf-sweep-test-a1', 'a1'), cloudVm('rf-sweep-test-b2' /* label not set yet */), cloudVm('rf-sweep-test-zz', 'zz'), cloudVm('stranger')];
    expect(await reconciler.sweep()).toBe(2);
    expect(cloud.deleted.sort()).toEqual(['rf-sweep-test-zz', 'stranger']);
    expect((await store.vm('b2'))?.state).toBe('booting'); // present by name: not lost
  });

  it('spares an unlabelled instance while a batch create of the provider is in flight', async () => {
    await row('c3', 'creating');
    cloud.vms = [cloudVm('i-0123456789abcdef0')];
    expect(await reconciler.sweep()).toBe(0);
    await store.transition('c3', 'creating', 'failed');
    expect(await reconciler.sweep()).toBe(1);
  });

  it('marks a warm VM that vanished from the cloud as failed', async () => {
    await row('d4', 'ready');
    cloud.vms = [];
    await reconciler.sweep();
    expect((await store.vm('d4'))?.state).toBe('failed');
  });
});
