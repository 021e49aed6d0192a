// The isolation audit on aws through the real EC2Client against the EC2 emulator: one
// DescribeSecurityGroups for every class's groups; each class is audited against its own groups'
// inbound rules, where a rule referencing one of the VMs' groups is VM-to-VM traffic.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { parseCidr } from '../../src/isolation/cidr.js';
import { createLogger } from '../../src/isolation/redact.js';
import { parseAwsConfig } from '../../src/providers/aws/config.js';
import { AwsProvider } from '../../src/providers/aws/provider.js';

const machine = (groups: string[]) => ({ instanceType: 'c6i.large', imageId: 'ami-0123456789abcdef0', subnets: ['subnet-0aaa1111'], securityGroupIds: groups });
const MANAGER = [parseCidr('10.0.0.5/32')];
const SSH_FROM_MANAGER = { protocol: 'tcp', fromPort: 22, toPort: 22, cidrs: ['10.0.0.5/32'] };

describe('isolation audit on aws', () => {
  let emu: Ec2Emulator;
  let provider: AwsProvider;
  beforeAll(async () => {
    emu = await startEc2Emulator({ bootDelayMs: 0 });
    provider = new AwsProvider(parseAwsConfig({ region: 'us-east-1', endpoint: emu.url, callTimeout: '3s', retryBase: '20ms', retries: 1, requestsPerSecond: 1000 }), {
      shard: 'iso', dataDir: '/nonexistent', log: createLogger({ level: 'silent' }),
      classes: { small: machine(['sg-0aaa0001']), large: machine(['sg-0aaa0001', 'sg-0bbb0002']) },
    });
  });
  afterAll(async () => {
    await provider?.close();
    await emu?.close();
  });

  it('finds nothing when the groups let only the manager in, on SSH', async () => {
    emu.setSecurityGroups([
      { groupId: 'sg-0aaa0001', groupName: 'runner-ssh', ingress: [SSH_FROM_MANAGER] },
      { groupId: 'sg-0bbb0002', groupName: 'runner-large', ingress: [] },
      { groupId: 'sg-0fff9999', groupName: 'unrelated', ingress: [{ protocol: '-1', cidrs: ['0.0.0.0/0'] }] },
    ]);
    emu.resetCalls();
    expect(await provider.auditIsolation(MANAGER)).toEqual([]);
    expect(emu.calls.DescribeSecurityGroups).toBe(1);
  });

  it('names a self-referencing group (VM-to-VM), wide ranges, IPv6 sources, and a manager shut out', async () => {
    emu.setSecurityGroups([
      { groupId: 'sg-0aaa0001', groupName: 'runner-ssh', ingress: [SSH_FROM_MANAGER, { protocol: '-1', groups: ['sg-0aaa0001'] }] },
      { groupId: 'sg-0bbb0002', groupName: 'runner-large', ingress: [{ protocol: 'tcp', fromPort: 8000, toPort: 8100, cidrs: ['10.0.0.0/16'], ipv6Cidrs: ['::/0'] }, { protocol: 'icmp', fromPort: -1, toPort: -1, groups: ['sg-0ddd0004'] }] },
    ]);
    const found = await provider.auditIsolation(MANAGER);
    expect(found.map((f) => [f.kind, f.classes, f.message])).toEqual([
      ['vm-to-vm', ['small', 'large'], 'security group sg-0aaa0001 (runner-ssh) lets members of sg-0aaa0001 (the job VMs themselves) reach the job VMs on all traffic'],
      ['others-can-reach', ['large'], 'security group sg-0bbb0002 (runner-large) lets ::/0 reach the job VMs on tcp:8000-8100'],
      ['others-can-reach', ['large'], 'security group sg-0bbb0002 (runner-large) lets 10.0.0.0/16 reach the job VMs on tcp:8000-8100; only the manager (10.0.0.5/32) should'],
      ['others-can-reach', ['large'], 'security group sg-0bbb0002 (runner-large) lets members of sg-0ddd0004 reach the job VMs on icmp:all'],
    ]);
    emu.setSecurityGroups([{ groupId: 'sg-0aaa0001', ingress: [] }, { groupId: 'sg-0bbb0002', ingress: [] }]);
    expect((await provider.auditIsolation(MANAGER)).map((f) => [f.kind, f.classes])).toEqual([['manager-cannot-reach', ['small', 'large']]]);
  });

  it('a group that does not exist is an error naming it, not a clean audit', async () => {
    emu.setSecurityGroups([{ groupId: 'sg-0aaa0001', ingress: [SSH_FROM_MANAGER] }]);
    await expect(provider.auditIsolation(MANAGER)).rejects.toThrow(/sg-0bbb0002/);
  });
});
