// The EC2 emulator's eventual consistency and after-the-fact failures, through the real EC2Client:
// what AWS documents (a just-launched instance unknown to DescribeInstances for a while; a
// mutation done although its answer was an error) so the providers can be tested against it.
import { DescribeInstancesCommand, EC2Client, RunInstancesCommand } from '@aws-sdk/client-ec2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startEc2Emulator, type Ec2Emulator } from '../../../emulators/ec2/server.js';

describe('EC2 emulator: eventual consistency and chaos', () => {
  let emu: Ec2Emulator;
  let ec2: EC2Client;
  let seq = 0;

  beforeAll(async () => {
    emu = await startEc2Emulator();
    ec2 = new EC2Client({ endpoint: emu.url, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' }, maxAttempts: 1 });
  });
  afterEach(() => Object.assign(emu.faults, { listLagMs: 0, errorRate: 0, errorAfterRate: 0, lostShare: 0 }));
  afterAll(async () => {
    ec2?.destroy();
    await emu?.close();
  });

  const launch = (tag: string, token?: string) =>
    ec2.send(new RunInstancesCommand({
      ImageId: 'ami-0123456789abcdef0', InstanceType: 't3.micro', MinCount: 1, MaxCount: 1, SubnetId: 'subnet-0aaa1111',
      TagSpecifications: [{ ResourceType: 'instance', Tags: [{ Key: 'consistency', Value: tag }] }], ...(token ? { ClientToken: token } : {}),
    }));
  const listed = async (tag: string) =>
    ((await ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: 'tag:consistency', Values: [tag] }] }))).Reservations ?? []).flatMap((r) => r.Instances ?? []).map((i) => i.InstanceId);

  it('hides a just-launched instance from filtered lists and answers NotFound by its id until the lag passes', async () => {
    emu.faults.listLagMs = 600;
    const tag = `lag-${++seq}`;
    const id = (await launch(tag)).Instances![0]!.InstanceId!;
    expect(await listed(tag)).toEqual([]);
    await expect(ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }))).rejects.toMatchObject({ name: 'InvalidInstanceID.NotFound' });
    await new Promise((r) => setTimeout(r, 700));
    expect(await listed(tag)).toEqual([id]);
    const byId = await ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
    expect(byId.Reservations?.[0]?.Instances?.[0]?.InstanceId).toBe(id);
  });

  it('launches although the answer is a 503, and the retry with the same ClientToken finds that instance', async () => {
    const tag = `after-${++seq}`;
    emu.faults.errorAfterRate = 1;
    await expect(launch(tag, `tok-${tag}`)).rejects.toMatchObject({ $metadata: { httpStatusCode: 503 } });
    expect(await listed(tag)).toHaveLength(1);
    emu.faults.errorAfterRate = 0;
    const again = await launch(tag, `tok-${tag}`);
    expect(await listed(tag)).toEqual([again.Instances![0]!.InstanceId]);
  });

  it('can lose the answer of a mutation that was done: the connection drops', async () => {
    const tag = `lost-${++seq}`;
    Object.assign(emu.faults, { errorAfterRate: 1, lostShare: 1 });
    const err = await launch(tag).then(() => undefined, (e: unknown) => e as Error & { $metadata?: { httpStatusCode?: number } });
    expect(err).toBeDefined();
    expect(err?.$metadata?.httpStatusCode).toBeUndefined(); // no answer at all, not an HTTP error
    Object.assign(emu.faults, { errorAfterRate: 0, lostShare: 0 });
    expect(await listed(tag)).toHaveLength(1);
  });

  it('answers a share of calls with throttling or unavailability before acting', async () => {
    const tag = `rate-${++seq}`;
    emu.faults.errorRate = 1;
    await expect(launch(tag)).rejects.toMatchObject({ $metadata: { httpStatusCode: 503 } });
    emu.faults.errorRate = 0;
    expect(await listed(tag)).toEqual([]);
  });
});
