// Dedicated Hosts in the EC2 emulator, through the real EC2Client, on a virtual clock: the facts
// the mac provider is built on (one instance per host, scrubbing, the 24-hour minimum).
import { AllocateHostsCommand, DescribeHostsCommand, EC2Client, ReleaseHostsCommand, RunInstancesCommand, TerminateInstancesCommand } from '@aws-sdk/client-ec2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEc2Emulator, type Ec2Emulator } from '../../../emulators/ec2/server.js';

const H = 3600_000;

describe('EC2 emulator: Mac dedicated hosts', () => {
  let emu: Ec2Emulator;
  let ec2: EC2Client;
  let clock = 1_800_000_000_000;

  beforeAll(async () => {
    emu = await startEc2Emulator({ now: () => clock, scrubMs: 2 * H });
    ec2 = new EC2Client({ endpoint: emu.url, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' }, maxAttempts: 1 });
  });
  afterAll(async () => {
    ec2?.destroy();
    await emu?.close();
  });

  const hostState = async (id: string) => (await ec2.send(new DescribeHostsCommand({ HostIds: [id] }))).Hosts?.[0]?.State;
  const runOn = (hostId: string) =>
    ec2.send(new RunInstancesCommand({ ImageId: 'ami-0123456789abcdef0', InstanceType: 'mac2.metal', MinCount: 1, MaxCount: 1, SubnetId: 'subnet-0aaa1111', Placement: { Tenancy: 'host', HostId: hostId } }));

  it('allocates idempotently by ClientToken, and refuses a zone without capacity', async () => {
    const a = await ec2.send(new AllocateHostsCommand({ InstanceType: 'mac2.metal', AvailabilityZone: 'us-east-1a', Quantity: 1, ClientToken: 'host-token-1', TagSpecifications: [{ ResourceType: 'dedicated-host', Tags: [{ Key: 'runner-fleet-shard', Value: 's1' }] }] }));
    const again = await ec2.send(new AllocateHostsCommand({ InstanceType: 'mac2.metal', AvailabilityZone: 'us-east-1a', Quantity: 1, ClientToken: 'host-token-1' }));
    expect(again.HostIds).toEqual(a.HostIds);
    const described = await ec2.send(new DescribeHostsCommand({ Filter: [{ Name: 'tag:runner-fleet-shard', Values: ['s1'] }] }));
    expect(described.Hosts?.map((h) => [h.HostId, h.State, h.HostProperties?.InstanceType])).toEqual([[a.HostIds![0], 'available', 'mac2.metal']]);
    emu.faults.noHostCapacityZones.add('us-east-1b');
    await expect(ec2.send(new AllocateHostsCommand({ InstanceType: 'mac2.metal', AvailabilityZone: 'us-east-1b', Quantity: 1 }))).rejects.toMatchObject({ name: 'InsufficientHostCapacity' });
  });

  it('takes one Mac instance per host, scrubs after it, and releases only after 24 hours', async () => {
    const [hostId] = (await ec2.send(new AllocateHostsCommand({ InstanceType: 'mac2.metal', AvailabilityZone: 'us-east-1a', Quantity: 1 }))).HostIds!;
    const run = await runOn(hostId!);
    const instanceId = run.Instances![0]!.InstanceId!;
    expect(run.Instances![0]!.Placement).toMatchObject({ Tenancy: 'host', HostId: hostId });
    await expect(runOn(hostId!)).rejects.toMatchObject({ name: 'InsufficientHostCapacity' });
    // Release refused while an instance runs on it.
    let rel = await ec2.send(new ReleaseHostsCommand({ HostIds: [hostId!] }));
    expect(rel.Unsuccessful?.[0]?.Error?.Message).toMatch(/still has instance/);

    await ec2.send(new TerminateInstancesCommand({ InstanceIds: [instanceId] }));
    expect(await hostState(hostId!)).toBe('pending'); // scrubbing: takes nothing
    await expect(runOn(hostId!)).rejects.toMatchObject({ name: 'InsufficientHostCapacity' });
    clock += 2 * H + 1;
    expect(await hostState(hostId!)).toBe('available');

    rel = await ec2.send(new ReleaseHostsCommand({ HostIds: [hostId!] }));
    expect(rel.Unsuccessful?.[0]?.Error?.Message).toMatch(/24 hours after allocation/);
    clock += 22 * H;
    rel = await ec2.send(new ReleaseHostsCommand({ HostIds: [hostId!] }));
    expect(rel.Successful).toEqual([hostId]);
    expect(await hostState(hostId!)).toBe('released');
  });
});
