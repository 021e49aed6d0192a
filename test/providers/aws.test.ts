// The EC2 provider through the real @aws-sdk/client-ec2 EC2Client against the EC2 emulator.
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { connectSsh } from '../../src/connect/ssh.js';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { parseAwsConfig } from '../../src/providers/aws/config.js';
import { AwsProvider } from '../../src/providers/aws/provider.js';
import { TAG_HOST_RECORD } from '../../src/providers/aws/run-input.js';
import { LABEL_SHARD, LABEL_VM, type VmSpec } from '../../src/providers/provider.js';
import { providerContract } from './contract.js';
import { makeSpec, waitRunning } from './local-fixture.js';

const machine = { instanceType: 'c6i.large', imageId: 'ami-0123456789abcdef0', subnets: ['subnet-0aaa1111', 'subnet-0bbb2222'], securityGroupIds: ['sg-0ccc3333'], tags: { team: 'ci' } };

interface Fixture {
  emu: Ec2Emulator;
  provider: AwsProvider;
  shard: string;
  cleanup(): Promise<void>;
}

async function fixture(config: Record<string, unknown> = {}): Promise<Fixture> {
  const emu = await startEc2Emulator({ bootDelayMs: 0 });
  const shard = `a${randomBytes(3).toString('hex')}`;
  const provider = new AwsProvider(parseAwsConfig({ region: 'us-east-1', endpoint: emu.url, callTimeout: '3s', retryBase: '20ms', retries: 3, requestsPerSecond: 1000, ...config }), { shard, dataDir: '/nonexistent', log: createLogger({ level: 'silent' }), connectOverride: emu.connectOverride });
  return {
    emu,
    provider,
    shard,
    async cleanup() {
      await provider.close();
      await emu.close();
    },
  };
}

providerContract('aws', async () => {
  const fx = await fixture();
  const { faults } = fx.emu;
  const fault = (on: () => void, off: () => void) => (spec: VmSpec) => (on(), { spec, restore: off });
  return {
    provider: fx.provider, machine, cleanup: fx.cleanup,
    // A Mac host's instance in a shard with mac classes: the shard's tag, the host record's, no VM tag.
    foreignLabels: { [TAG_HOST_RECORD]: 'host-record-1' },
    restart: async () => new AwsProvider(fx.provider.cfg, { shard: fx.shard, dataDir: '/nonexistent', log: createLogger({ level: 'silent' }), connectOverride: fx.emu.connectOverride }),
    loseAnswers() {
      Object.assign(faults, { errorAfterRate: 1, lostShare: 1 });
      return () => Object.assign(faults, { errorAfterRate: 0, lostShare: 0 });
    },
    failures: {
      transient: fault(() => (faults.errorRate = 1), () => (faults.errorRate = 0)),
      stockout: fault(() => machine.subnets.forEach((s) => faults.noCapacitySubnets.add(s)), () => faults.noCapacitySubnets.clear()),
      quota: fault(() => (faults.instanceLimitExceeded = true), () => (faults.instanceLimitExceeded = false)),
    },
    badSpec: (spec) => ({ ...spec, machine: { ...machine, imageId: 'not-an-ami' } }),
  };
});

describe('aws provider against the EC2 emulator', () => {
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
    const created = await fx.provider.createMany(specs);
    await fx.provider.list({ [LABEL_SHARD]: fx.shard });
    expect(fx.provider.tracked()['seen']).toBe(6);
    await fx.provider.delete(created.map((r, i) => ({ vmId: specs[i]!.vmId, name: specs[i]!.name, cloudId: r.ok ? r.vm.cloudId : null })));
    await fx.provider.describe(specs.map((s) => ({ vmId: s.vmId, name: s.name }))); // terminated instances stay listed a while
    expect(fx.provider.tracked()).toEqual({ seen: 0, shardOf: 0 });
  });

  it('sends an isolated RunInstances: ClientToken, tags, no public IP, IMDSv2 hop limit 1, no profile', async () => {
    const fx = await setup();
    const t = makeSpec(fx.shard, machine);
    const vm = await fx.provider.create(t.spec);
    const p = fx.emu.runRequest(vm.cloudId)!;
    expect(p['ClientToken']).toMatch(/^rf-[0-9a-f]{40}$/);
    expect(p['NetworkInterface.1.AssociatePublicIpAddress']).toBe('false');
    expect(p['NetworkInterface.1.SubnetId']).toBe('subnet-0aaa1111');
    expect(p['MetadataOptions.HttpTokens']).toBe('required');
    expect(p['MetadataOptions.HttpPutResponseHopLimit']).toBe('1');
    expect(p['InstanceInitiatedShutdownBehavior']).toBe('terminate');
    expect(Object.keys(p).some((k) => k.startsWith('IamInstanceProfile'))).toBe(false);
    const [inst] = fx.emu.instances();
    expect(inst!.tags).toMatchObject({ [LABEL_SHARD]: fx.shard, [LABEL_VM]: t.spec.vmId, Name: t.spec.name, team: 'ci' });
    // The same create again (a retry) is the same instance: the ClientToken makes it idempotent.
    expect((await fx.provider.create(t.spec)).cloudId).toBe(vm.cloudId);
    expect(fx.emu.instances()).toHaveLength(1);
  });

  it('reaches the VM on its private address with its own key, and only that key', async () => {
    const fx = await setup();
    const a = makeSpec(fx.shard, machine);
    const b = makeSpec(fx.shard, machine);
    await fx.provider.createMany([a.spec, b.spec]);
    const vm = await waitRunning(fx.provider, a.spec);
    const session = await connectSsh(fx.provider.connectInfo(vm, a.keys.privateKey), { timeoutMs: 10_000 });
    let out = '';
    expect((await session.exec('echo ec2-ok', { onData: (c) => void (out += String(c)) })).exitCode).toBe(0);
    expect(out).toContain('ec2-ok');
    session.close();
    await expect(connectSsh(fx.provider.connectInfo(vm, b.keys.privateKey), { timeoutMs: 3000 })).rejects.toThrow();
  });

  it('launches a batch with one RunInstances, then tags each instance with its own VM', async () => {
    const fx = await setup();
    const specs = [makeSpec(fx.shard, machine), makeSpec(fx.shard, machine), makeSpec(fx.shard, machine)].map((t) => t.spec);
    const results = await fx.provider.createMany(specs);
    expect(results.every((r) => r.ok)).toBe(true);
    expect(fx.emu.calls.RunInstances).toBe(1);
    expect(fx.emu.runRequest(results[0]!.ok ? results[0]!.vm.cloudId : '')!['MaxCount']).toBe('3');
    const listed = (await fx.provider.list({ [LABEL_SHARD]: fx.shard })).vms;
    expect(listed.map((v) => [v.name, v.vmId]).sort()).toEqual(specs.map((s) => [s.name, s.vmId]).sort());
  });

  it('fails over to the next subnet on InsufficientInstanceCapacity and avoids it afterwards', async () => {
    const fx = await setup();
    fx.emu.faults.noCapacitySubnets.add('subnet-0aaa1111');
    const vm = await fx.provider.create(makeSpec(fx.shard, machine).spec);
    expect(fx.emu.runRequest(vm.cloudId)!['NetworkInterface.1.SubnetId']).toBe('subnet-0bbb2222');
    expect(fx.provider.subnetCooldowns().has('subnet-0aaa1111')).toBe(true);
    fx.emu.faults.noCapacitySubnets.clear();
    const again = await fx.provider.create(makeSpec(fx.shard, machine).spec);
    expect(fx.emu.runRequest(again.cloudId)!['NetworkInterface.1.SubnetId']).toBe('subnet-0bbb2222');
    fx.emu.faults.noCapacitySubnets.add('subnet-0bbb2222');
    await expect(fx.provider.create(makeSpec(fx.shard, machine).spec)).rejects.toMatchObject({ kind: 'stockout' });
  });

  it('backs off on RequestLimitExceeded with bounded retries', async () => {
    const fx = await setup({ retries: 2 });
    fx.emu.faults.throttleNext = 2;
    await fx.provider.create(makeSpec(fx.shard, machine).spec);
    expect(fx.provider.stats.rateLimited).toBe(2);
    fx.emu.faults.throttleNext = 100;
    const before = fx.emu.calls.DescribeInstances;
    await expect(fx.provider.list({ [LABEL_SHARD]: fx.shard })).rejects.toMatchObject({ kind: 'rateLimited' });
    expect(fx.emu.calls.DescribeInstances - before).toBe(3); // 1 + 2 retries
    fx.emu.faults.throttleNext = 0;
  });

  it('reports InstanceLimitExceeded as quota, without retrying', async () => {
    const fx = await setup();
    fx.emu.faults.instanceLimitExceeded = true;
    await expect(fx.provider.create(makeSpec(fx.shard, machine).spec)).rejects.toMatchObject({ kind: 'quota' });
    expect(fx.emu.calls.RunInstances).toBe(1);
  });

  it('times out a hung call and retries it', async () => {
    const fx = await setup({ callTimeout: '500ms', retries: 1 });
    fx.emu.faults.hangNext = 1;
    await fx.provider.create(makeSpec(fx.shard, machine).spec);
    expect(fx.provider.stats.timeouts).toBe(1);
    expect(fx.emu.instances()).toHaveLength(1); // the retry carried the same ClientToken
  });

  /** A VM launched just now in an EC2 whose answers lag its launches by 1.5 s. */
  async function launchedInLag(fx: Fixture) {
    fx.emu.faults.listLagMs = 1500;
    const { spec } = makeSpec(fx.shard, machine);
    const [created] = await fx.provider.createMany([spec]);
    if (!created?.ok) throw new Error('create failed');
    return { vmId: spec.vmId, name: spec.name, cloudId: created.vm.cloudId };
  }

  it('retries a terminate that EC2 answers NotFound right after the launch (eventual consistency), never reading it as gone', async () => {
    const fx = await setup();
    const ref = await launchedInLag(fx);
    await expect(fx.provider.delete([ref])).rejects.toMatchObject({ kind: 'retryable' });
    expect(fx.emu.instances().find((i) => i.id === ref.cloudId)?.state).not.toBe('terminated');
    await new Promise((r) => setTimeout(r, 1600));
    await fx.provider.delete([ref]);
    expect(fx.emu.instances().find((i) => i.id === ref.cloudId)?.state).toBe('terminated');
    expect(fx.provider.tracked()).toEqual({ seen: 0, shardOf: 0 });
  });

  it('after a restart, knows a VM is young from its row (createdAt): NotFound right after the launch is retried, not read as gone', async () => {
    const fx = await setup();
    const ref = { ...(await launchedInLag(fx)), createdAt: Date.now() - 200 };
    // A new manager's provider: nothing of the launch in memory, only what the database holds.
    const restarted = new AwsProvider(fx.provider.cfg, { shard: fx.shard, dataDir: '/nonexistent', log: createLogger({ level: 'silent' }), connectOverride: fx.emu.connectOverride });
    try {
      await expect(restarted.delete([ref])).rejects.toMatchObject({ kind: 'retryable' });
      expect(fx.emu.instances().find((i) => i.id === ref.cloudId)?.state).not.toBe('terminated');
      await new Promise((r) => setTimeout(r, 1600));
      await restarted.delete([ref]);
      expect(fx.emu.instances().find((i) => i.id === ref.cloudId)?.state).toBe('terminated');
    } finally {
      await restarted.close();
    }
  });

  it('terminates the other VMs of a delete while one just launched is not found yet', async () => {
    const fx = await setup();
    fx.emu.faults.listLagMs = 1500;
    const old = makeSpec(fx.shard, machine).spec;
    const [a] = await fx.provider.createMany([old]);
    await new Promise((r) => setTimeout(r, 1600));
    const young = makeSpec(fx.shard, machine).spec;
    const [b] = await fx.provider.createMany([young]);
    if (!a?.ok || !b?.ok) throw new Error('create failed');
    const refs = [{ vmId: old.vmId, name: old.name, cloudId: a.vm.cloudId }, { vmId: young.vmId, name: young.name, cloudId: b.vm.cloudId }];
    await expect(fx.provider.delete(refs)).rejects.toMatchObject({ kind: 'retryable' });
    expect(fx.emu.instances().find((i) => i.id === a.vm.cloudId)?.state).toBe('terminated');
    expect(fx.emu.instances().find((i) => i.id === b.vm.cloudId)?.state).not.toBe('terminated');
  });

  it('stops a VM launched moments ago: NotFound from EC2 eventual consistency is retried, not final', async () => {
    const fx = await setup({ retries: 6, retryBase: '200ms' });
    fx.emu.faults.listLagMs = 1000;
    const { spec } = makeSpec(fx.shard, machine);
    const [created] = await fx.provider.createMany([spec]);
    if (!created?.ok) throw new Error('create failed');
    await fx.provider.stop([{ vmId: spec.vmId, name: spec.name, cloudId: created.vm.cloudId }]);
    expect(fx.emu.instances().find((i) => i.id === created.vm.cloudId)?.state).toMatch(/^stop/);
  });

  it('describes the whole shard with one DescribeInstances and terminates what it is told', async () => {
    const fx = await setup();
    const specs = [makeSpec(fx.shard, machine).spec, makeSpec(fx.shard, machine).spec];
    await fx.provider.createMany(specs);
    fx.emu.resetCalls();
    expect((await fx.provider.describe(specs)).vms).toHaveLength(2);
    expect(fx.emu.calls.DescribeInstances).toBe(1);
    await fx.provider.delete(specs);
    expect(fx.emu.instances().every((i) => i.state === 'terminated')).toBe(true);
    await fx.provider.delete(specs); // already gone: fine
    expect((await fx.provider.list({ [LABEL_SHARD]: fx.shard })).vms).toEqual([]);
  });
});
