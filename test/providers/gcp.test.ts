// The GCP provider through the real @google-cloud/compute clients against the GCE emulator.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startGceEmulator, type GceEmulator } from '../../emulators/gce/server.js';
import { parseGcpConfig } from '../../src/providers/gcp/config.js';
import '../../src/providers/gcp/index.js';
import { GcpProvider } from '../../src/providers/gcp/provider.js';
import { createLogger } from '../../src/isolation/redact.js';
import { LABEL_SHARD, LABEL_VM, providerFactory, type VmSpec } from '../../src/providers/provider.js';
import { connectSsh } from '../../src/connect/ssh.js';
import { providerContract } from './contract.js';
import { makeSpec, waitRunning } from './local-fixture.js';

const ZONES = ['us-central1-a', 'us-central1-b', 'us-central1-c'];
const machine = { machineType: 'e2-standard-2', image: 'projects/debian-cloud/global/images/family/debian-12', zones: ZONES, labels: { team: 'ci' } };

interface Fixture {
  emu: GceEmulator;
  provider: GcpProvider;
  shard: string;
  cleanup(): Promise<void>;
}

async function fixture(config: Record<string, unknown> = {}): Promise<Fixture> {
  const dataDir = mkdtempSync(join(tmpdir(), 'rf-gce-'));
  const emu = await startGceEmulator({ host: '127.0.0.1', port: 0, dataDir, bootDelayMs: 0 });
  const shard = `g${randomBytes(3).toString('hex')}`;
  const provider = new GcpProvider(
    parseGcpConfig({ project: 'test-proj', endpoint: emu.url, callTimeout: '3s', retryBase: '20ms', retries: 3, requestsPerSecond: 1000, bulkInsertMin: 2, ...config }),
    { shard, dataDir, log: createLogger({ level: 'silent' }), connectOverride: emu.connectOverride },
  );
  return {
    emu,
    provider,
    shard,
    async cleanup() {
      try {
        const all = (await provider.list({})).vms;
        await provider.delete(all.map((vm) => ({ vmId: vm.vmId ?? vm.name, name: vm.name, zone: vm.zone ?? null })));
      } finally {
        await provider.close();
        await emu.close();
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
  };
}

providerContract('gcp', async () => {
  const fx = await fixture();
  const { faults } = fx.emu;
  const fault = (on: () => void, off: () => void) => (spec: VmSpec) => (on(), { spec, restore: off });
  return {
    provider: fx.provider, machine, cleanup: fx.cleanup,
    partial(zone) {
      faults.unreachableZones.set(zone, Infinity);
      return () => faults.unreachableZones.delete(zone);
    },
    restart: async () => new GcpProvider(fx.provider.cfg, { shard: fx.shard, dataDir: '/nonexistent', log: createLogger({ level: 'silent' }), connectOverride: fx.emu.connectOverride }),
    loseAnswers() {
      Object.assign(faults, { errorAfterRate: 1, lostShare: 1 });
      return () => Object.assign(faults, { errorAfterRate: 0, lostShare: 0 });
    },
    failures: {
      transient: fault(() => (faults.errorRate = 1), () => (faults.errorRate = 0)),
      stockout: fault(() => ZONES.forEach((z) => faults.stockoutZones.add(z)), () => faults.stockoutZones.clear()),
      quota: fault(() => (faults.quotaExceeded = true), () => (faults.quotaExceeded = false)),
    },
    badSpec: (spec) => ({ ...spec, machine: { ...machine, zones: ['atlantis'] } }),
  };
});

describe('gcp provider against the GCE emulator', () => {
  const fixtures: Fixture[] = [];
  const setup = async (config: Record<string, unknown> = {}) => {
    const fx = await fixture(config);
    fixtures.push(fx);
    return fx;
  };
  afterEach(async () => {
    for (const fx of fixtures.splice(0)) await fx.cleanup();
  });

  it('forgets every VM it created once deleted: per-VM maps back to empty', async () => {
    const fx = await setup();
    const specs = Array.from({ length: 6 }, () => makeSpec(fx.shard, machine).spec);
    await fx.provider.createMany(specs);
    await fx.provider.list({ [LABEL_SHARD]: fx.shard });
    expect(fx.provider.tracked()['seen']).toBe(6);
    await fx.provider.delete(specs.map((s) => ({ vmId: s.vmId, name: s.name })));
    expect(fx.provider.tracked()).toEqual({ seen: 0, shardOf: 0, deleting: 0, listCache: 0 });
  });

  it('is registered under "gcp"', () => {
    expect(providerFactory('gcp')).toBeTypeOf('function');
  });

  it('sends an isolated insert body: no external IP, no service account, own key, max run duration', async () => {
    const fx = await setup();
    const t = makeSpec(fx.shard, machine);
    const vm = await fx.provider.create(t.spec);
    expect(vm.zone).toBe('us-central1-a');
    const body = fx.emu.inserted(t.spec.name) as Record<string, any>;
    expect(body.networkInterfaces[0].accessConfigs ?? []).toEqual([]);
    expect(body.serviceAccounts ?? []).toEqual([]);
    expect(body.labels).toMatchObject({ team: 'ci', [LABEL_SHARD]: fx.shard, [LABEL_VM]: t.spec.vmId });
    expect(body.scheduling).toMatchObject({ instanceTerminationAction: 'DELETE', automaticRestart: false });
    expect(Number(body.scheduling.maxRunDuration.seconds)).toBe(600);
    const keys = (body.metadata.items as { key: string; value: string }[]).find((i) => i.key === 'ssh-keys')?.value;
    expect(keys).toBe(`runner:${t.spec.publicKey}`);
  });

  it('fails over to the next zone on a stockout and avoids the zone afterwards', async () => {
    const fx = await setup();
    fx.emu.faults.stockoutZones.add('us-central1-a');
    const a = makeSpec(fx.shard, machine);
    expect((await fx.provider.create(a.spec)).zone).toBe('us-central1-b');
    expect(fx.provider.stats.stockouts).toBe(1);
    expect(fx.provider.zoneCooldowns().has('us-central1-a')).toBe(true);
    // The stockout clears, but the zone is still cooling down: no call goes there.
    fx.emu.faults.stockoutZones.clear();
    const b = makeSpec(fx.shard, machine);
    expect((await fx.provider.create(b.spec)).zone).toBe('us-central1-b');
    expect(fx.provider.stats.stockouts).toBe(1);
    // Every zone out: a stockout error, not a hang.
    for (const z of ZONES) fx.emu.faults.stockoutZones.add(z);
    await expect(fx.provider.create(makeSpec(fx.shard, machine).spec)).rejects.toMatchObject({ kind: 'stockout' });
  });

  it('backs off on 429 with bounded retries', async () => {
    const fx = await setup({ retries: 3 });
    fx.emu.faults.rateLimitNext = 2;
    const t = makeSpec(fx.shard, machine);
    await fx.provider.create(t.spec);
    expect(fx.provider.stats.rateLimited).toBeGreaterThanOrEqual(2);
    expect((await fx.provider.list({ [LABEL_VM]: t.spec.vmId })).vms).toHaveLength(1);

    fx.emu.faults.rateLimitNext = 100;
    const started = Date.now();
    const before = fx.provider.stats.calls['instances.aggregatedList'] ?? 0;
    await expect(fx.provider.list({ [LABEL_SHARD]: `${fx.shard}-other` })).rejects.toMatchObject({ kind: 'rateLimited' });
    expect((fx.provider.stats.calls['instances.aggregatedList'] ?? 0) - before).toBe(4); // 1 + 3 retries
    expect(Date.now() - started).toBeLessThan(5000);
    fx.emu.faults.rateLimitNext = 0;
  });

  it('reports quota errors without retrying', async () => {
    const fx = await setup();
    fx.emu.faults.quotaExceeded = true;
    await expect(fx.provider.create(makeSpec(fx.shard, machine).spec)).rejects.toMatchObject({ kind: 'quota' });
    fx.emu.faults.quotaExceeded = false;
  });

  it('times out a hung call and retries it', async () => {
    const fx = await setup({ callTimeout: '1s', retries: 1 });
    fx.emu.faults.hangNext = 1;
    const t = makeSpec(fx.shard, machine);
    await fx.provider.create(t.spec);
    expect(fx.provider.stats.timeouts).toBe(1);
    expect((await fx.provider.list({ [LABEL_VM]: t.spec.vmId })).vms).toHaveLength(1);
  });

  it('creates several VMs of a class with one bulkInsert, names and labels intact', async () => {
    const fx = await setup();
    const specs = [makeSpec(fx.shard, machine), makeSpec(fx.shard, machine), makeSpec(fx.shard, machine)].map((t) => t.spec);
    const results = await fx.provider.createMany(specs);
    expect(results.every((r) => r.ok)).toBe(true);
    expect(fx.provider.stats.bulkInserts).toBe(1);
    expect(fx.provider.stats.calls['instances.insert'] ?? 0).toBe(0);
    // One setMetadata per VM (its own key), whose RUNNING operation is not waited for: the boot
    // probe checks the key took. At most the bulkInsert's own operation is waited for.
    expect(fx.provider.stats.calls['instances.setMetadata']).toBe(3);
    expect(fx.provider.stats.calls['operations.wait'] ?? 0).toBeLessThanOrEqual(1);
    const listed = (await fx.provider.list({ [LABEL_SHARD]: fx.shard })).vms;
    expect(listed.map((v) => [v.name, v.vmId]).sort()).toEqual(specs.map((s) => [s.name, s.vmId]).sort());
    // Each VM holds its own key and no other: the shared bulk body carries none.
    for (const s of specs) {
      const items = fx.emu.instance(s.name)!['metadata']['items'] as { key: string; value: string }[];
      expect(items.find((i) => i.key === 'ssh-keys')?.value).toBe(`runner:${s.publicKey}`);
    }
    expect(JSON.stringify(fx.emu.inserted(specs[0]!.name))).not.toContain(specs[1]!.publicKey.split(' ')[1]);
  });

  it('a bulk-created VM whose setMetadata operation fails later never takes a job: the boot probe cannot log in to it', async () => {
    const fx = await setup();
    fx.emu.faults.failMetadataOps = 1;
    const made = [makeSpec(fx.shard, machine), makeSpec(fx.shard, machine)];
    // The operation is not waited for, so the create reports both VMs made...
    expect((await fx.provider.createMany(made.map((t) => t.spec))).every((r) => r.ok)).toBe(true);
    const keyed = (t: (typeof made)[0]) => (fx.emu.instance(t.spec.name)!['metadata']['items'] as { key: string }[]).some((i) => i.key === 'ssh-keys');
    const bad = made.find((t) => !keyed(t));
    const good = made.find((t) => keyed(t));
    expect(bad && good).toBeTruthy();
    // ...and the boot probe is the check: the keyed VM answers, the other is refused until the
    // pool's boot timeout fails it (no job was bound to it, so no billing event).
    const vm = await waitRunning(fx.provider, good!.spec);
    (await connectSsh(fx.provider.connectInfo(vm, good!.keys.privateKey), { timeoutMs: 10_000 })).close();
    const badVm = await waitRunning(fx.provider, bad!.spec);
    await expect(connectSsh(fx.provider.connectInfo(badVm, bad!.keys.privateKey), { timeoutMs: 3000 })).rejects.toThrow();
  });

  it('reaches a bulk-created VM with its own key only', async () => {
    const fx = await setup();
    const made = [makeSpec(fx.shard, machine), makeSpec(fx.shard, machine)];
    expect((await fx.provider.createMany(made.map((t) => t.spec))).every((r) => r.ok)).toBe(true);
    const [a, b] = made as [(typeof made)[0], (typeof made)[0]];
    const vm = await waitRunning(fx.provider, a.spec);
    const session = await connectSsh(fx.provider.connectInfo(vm, a.keys.privateKey), { timeoutMs: 10_000 });
    let out = '';
    expect((await session.exec('echo own-key-works', { onData: (c) => void (out += String(c)) })).exitCode).toBe(0);
    expect(out).toContain('own-key-works');
    session.close();
    // The other VM's private key opens nothing here.
    await expect(connectSsh(fx.provider.connectInfo(vm, b.keys.privateKey), { timeoutMs: 3000 })).rejects.toThrow();
  });

  it('reports every API call and stockout zone to the shard telemetry', async () => {
    const seen: { op: string; outcome: string }[] = [];
    const stockouts: string[] = [];
    const fx = await setup();
    const provider = new GcpProvider(fx.provider.cfg, {
      shard: fx.shard, dataDir: fx.emu.sandboxRoot, log: createLogger({ level: 'silent' }), connectOverride: fx.emu.connectOverride,
      telemetry: { request: (op, outcome) => void seen.push({ op, outcome }), stockout: (z) => void stockouts.push(z) },
    });
    try {
      fx.emu.faults.stockoutAsHttp = true;
      fx.emu.faults.stockoutZones.add('us-central1-a');
      fx.emu.faults.rateLimitNext = 1;
      await provider.create(makeSpec(fx.shard, machine).spec);
      expect(stockouts).toEqual(['us-central1-a']);
      expect(seen).toContainEqual({ op: 'instances.insert', outcome: 'rateLimited' });
      expect(seen).toContainEqual({ op: 'instances.insert', outcome: 'stockout' });
      expect(seen).toContainEqual({ op: 'instances.insert', outcome: 'ok' });
    } finally {
      fx.emu.faults.stockoutZones.clear();
      await provider.close();
    }
  });

  it('describes with one list call per poll, shared with list in the same tick', async () => {
    const fx = await setup();
    const specs = [makeSpec(fx.shard, machine).spec, makeSpec(fx.shard, machine).spec];
    await fx.provider.createMany(specs);
    const count = (m: string) => fx.provider.stats.calls[m] ?? 0;
    const [lists, gets] = [count('instances.aggregatedList'), count('instances.get')];
    expect((await fx.provider.describe(specs)).vms).toHaveLength(2);
    await fx.provider.list({ [LABEL_SHARD]: fx.shard });
    expect(count('instances.aggregatedList') - lists).toBe(1);
    expect(count('instances.get') - gets).toBe(0); // never one get per VM
  });

  it('reaches a running VM on its internal address: port 22, or the port the test tool\'s connect override knows', async () => {
    const fx = await setup();
    const t = makeSpec(fx.shard, machine);
    await fx.provider.create(t.spec);
    const vm = await waitRunning(fx.provider, t.spec);
    const info = fx.provider.connectInfo(vm, t.keys.privateKey);
    expect(info).toMatchObject({ protocol: 'ssh', os: 'linux', host: vm.internalIp, username: 'runner' });
    expect(info.port).not.toBe(22);
    // The executor's path: a ref plus the stored address, no CloudVm.
    expect(fx.provider.connectInfo({ vmId: t.spec.vmId, name: t.spec.name, internalIp: vm.internalIp! }, 'k').port).toBe(info.port);
    // Without the override (production) nothing from the cloud moves the port off 22.
    const plain = new GcpProvider(fx.provider.cfg, { shard: fx.shard, dataDir: fx.emu.sandboxRoot, log: createLogger({ level: 'silent' }) });
    try {
      await plain.describe([{ vmId: t.spec.vmId, name: t.spec.name }]);
      expect(plain.connectInfo(vm, 'k')).toMatchObject({ host: vm.internalIp, port: 22 });
    } finally {
      await plain.close();
    }
  });

  it('retrieves a Windows password through windows-keys and serial port 4', async () => {
    const fx = await setup();
    const win = { ...machine, os: 'windows', windowsAccess: 'password', image: 'projects/windows-cloud/global/images/family/windows-2022' };
    const t = makeSpec(fx.shard, win);
    await fx.provider.create(t.spec);
    await waitRunning(fx.provider, t.spec);
    const password = await fx.provider.windowsPassword(t.spec, 'runner', { timeoutMs: 15_000, pollMs: 100 });
    expect(password.length).toBeGreaterThanOrEqual(8);
  });
});
