// GcpProvider's orchestration over in-memory client doubles (no HTTP): zone failover, retries,
// timeouts, idempotent create, one list per poll. The wire-level tests live in gcp.test.ts.
import { describe, expect, it } from 'vitest';
import { parseGcpConfig } from '../../src/providers/gcp/config.js';
import { GcpProvider, type GcpClients } from '../../src/providers/gcp/provider.js';
import { createLogger } from '../../src/isolation/redact.js';
import { LABEL_SHARD, LABEL_VM } from '../../src/providers/provider.js';
import { makeSpec } from './local-fixture.js';

const machine = { machineType: 'e2-standard-2', image: 'projects/debian-cloud/global/images/family/debian-12', zones: ['us-central1-a', 'us-central1-b'] };
const httpError = (status: number, reason: string) => Object.assign(new Error(JSON.stringify({ error: { code: status, message: reason, errors: [{ reason, message: reason }] } })), { status });

function fakeCloud() {
  const vms = new Map<string, { name: string; zone: string; labels: Record<string, string>; id: string; status: string }>();
  const faults = { stockout: new Set<string>(), rateLimitNext: 0, hangNext: 0 };
  const calls: Record<string, number> = {};
  let n = 0;
  const gate = async (m: string) => {
    calls[m] = (calls[m] ?? 0) + 1;
    if (faults.hangNext > 0) {
      faults.hangNext--;
      return new Promise<never>(() => {});
    }
    if (faults.rateLimitNext > 0) {
      faults.rateLimitNext--;
      throw httpError(429, 'rateLimitExceeded');
    }
  };
  const op = (zone: string, targetId?: string) => [{ latestResponse: { name: `op-${++n}`, status: 'DONE', zone, ...(targetId ? { targetId } : {}) } }];
  const clients = {
    instances: {
      async insert(req: any) {
        await gate('insert');
        if (faults.stockout.has(req.zone)) return [{ latestResponse: { name: 'op-x', status: 'DONE', error: { errors: [{ code: 'ZONE_RESOURCE_POOL_EXHAUSTED', message: 'no capacity' }] } } }];
        const key = `${req.zone}/${req.instanceResource.name}`;
        if (vms.has(key)) throw httpError(409, 'alreadyExists');
        const id = String(1000 + ++n);
        vms.set(key, { name: req.instanceResource.name, zone: req.zone, labels: req.instanceResource.labels, id, status: 'RUNNING' });
        return op(req.zone, id);
      },
      async get(req: any) {
        await gate('get');
        const vm = vms.get(`${req.zone}/${req.instance}`);
        if (!vm) throw httpError(404, 'notFound');
        return [{ ...vm, zone: `projects/p/zones/${vm.zone}` }];
      },
      async delete(req: any) {
        await gate('delete');
        if (!vms.delete(`${req.zone}/${req.instance}`)) throw httpError(404, 'notFound');
        return op(req.zone);
      },
      aggregatedListAsync(_req: any) {
        return (async function* () {
          await gate('aggregatedList');
          for (const vm of vms.values()) yield [`zones/${vm.zone}`, { instances: [{ ...vm, zone: `projects/p/zones/${vm.zone}`, networkInterfaces: [{ networkIP: '10.0.0.2' }] }] }];
          // As GCE does, an empty answer still names the zones (with a warning).
          if (vms.size === 0) yield ['zones/us-central1-a', { warning: { code: 'NO_RESULTS_ON_PAGE' } }];
        })();
      },
      async bulkInsert() {
        await gate('bulkInsert');
        throw httpError(400, 'unsupported');
      },
      async close() {},
    },
    operations: { async wait() { throw new Error('all operations are DONE at once'); }, async close() {} },
  } as unknown as GcpClients;
  return { clients, vms, faults, calls };
}

function provider(cloud: ReturnType<typeof fakeCloud>, config: Record<string, unknown> = {}) {
  return new GcpProvider(parseGcpConfig({ project: `p-${Math.random().toString(36).slice(2, 10)}`, retryBase: '5ms', callTimeout: '200ms', bulkInsertMin: 2, ...config }), { shard: 's', dataDir: '/nonexistent', log: createLogger({ level: 'silent' }) }, { clients: cloud.clients });
}

describe('gcp provider orchestration', () => {
  it('fails over to the next zone on a stockout operation error', async () => {
    const cloud = fakeCloud();
    cloud.faults.stockout.add('us-central1-a');
    const p = provider(cloud);
    const t = makeSpec('s', machine);
    expect(await p.create(t.spec)).toMatchObject({ vmId: t.spec.vmId, zone: 'us-central1-b' });
    expect(p.zoneCooldowns().has('us-central1-a')).toBe(true);
    expect(cloud.calls['insert']).toBe(2);
  });

  it('is idempotent: the same spec twice is one VM with one id', async () => {
    const cloud = fakeCloud();
    const p = provider(cloud);
    const t = makeSpec('s', machine);
    const a = await p.create(t.spec);
    const b = await p.create(t.spec);
    expect(b.cloudId).toBe(a.cloudId);
    expect(cloud.vms.size).toBe(1);
    // A fresh process (nothing remembered) gets alreadyExists and treats it as success.
    const again = await provider(cloud).create(t.spec);
    expect(again.cloudId).toBe(a.cloudId);
  });

  it('retries 429 a bounded number of times', async () => {
    const cloud = fakeCloud();
    const p = provider(cloud, { retries: 2 });
    cloud.faults.rateLimitNext = 2;
    await p.create(makeSpec('s', machine).spec);
    expect(p.stats.rateLimited).toBe(2);
    cloud.faults.rateLimitNext = 10;
    await expect(p.list({ x: 'y' })).rejects.toMatchObject({ kind: 'rateLimited' });
    expect(cloud.calls['aggregatedList']).toBe(3);
  });

  it('times out a hung call and retries it', async () => {
    const cloud = fakeCloud();
    const p = provider(cloud, { callTimeout: '100ms', retries: 1 });
    cloud.faults.hangNext = 1;
    await p.create(makeSpec('s', machine).spec);
    expect(p.stats.timeouts).toBe(1);
    cloud.faults.hangNext = 5;
    await expect(p.list({})).rejects.toMatchObject({ kind: 'retryable' });
  });

  it('falls back to one insert per VM when bulkInsert fails, keeping order', async () => {
    const cloud = fakeCloud();
    const p = provider(cloud);
    const specs = [makeSpec('s', machine).spec, makeSpec('s', machine).spec, makeSpec('s', machine).spec];
    const r = await p.createMany(specs);
    expect(r.map((x) => (x.ok ? x.vm.vmId : x.vmId))).toEqual(specs.map((s) => s.vmId));
    expect(r.every((x) => x.ok)).toBe(true);
    expect(p.stats.bulkFallbacks).toBe(1);
    expect(cloud.calls['insert']).toBe(3);
  });

  it('describes from one list per poll, shares it with list, and deletes twice without error', async () => {
    const cloud = fakeCloud();
    const p = provider(cloud);
    const specs = [makeSpec('s', machine).spec, makeSpec('s', machine).spec];
    await p.createMany(specs);
    const before = cloud.calls['aggregatedList'] ?? 0;
    const vms = (await p.describe([...specs, { vmId: 'ghost', name: 's-ghost' }])).vms;
    expect(vms.map((v) => v.vmId).sort()).toEqual(specs.map((s) => s.vmId).sort());
    expect(vms[0]).toMatchObject({ state: 'running', internalIp: '10.0.0.2', labels: { [LABEL_SHARD]: 's' } });
    expect((await p.list({ [LABEL_SHARD]: 's' })).vms.length).toBe(2);
    expect((cloud.calls['aggregatedList'] ?? 0) - before).toBe(1);
    await p.delete(specs);
    await p.delete([...specs, { vmId: 'never', name: 's-never' }]);
    expect(cloud.vms.size).toBe(0);
    expect((await p.list({ [LABEL_VM]: specs[0]!.vmId })).vms).toEqual([]);
  });

  it('refuses a bad machine profile as a fatal error naming the field', async () => {
    const p = provider(fakeCloud());
    await expect(p.create(makeSpec('s', { ...machine, machineType: 't2a-standard-2' }).spec)).rejects.toMatchObject({ kind: 'fatal', message: expect.stringMatching(/machine\.imageArch/) });
  });
});
