// providers.mac and mac machine profiles: defaults, and errors that name their field.
import { describe, expect, it } from 'vitest';
import { parseMacConfig, parseMacMachine, validateMacMachine } from '../../src/providers/mac/config.js';

const machine = {
  instanceType: 'mac2.metal',
  hostImageId: 'ami-0123456789abcdef0',
  subnets: [{ id: 'subnet-0aaa1111', zone: 'us-east-1a' }, { id: 'subnet-0bbb2222', zone: 'us-east-1b' }],
  securityGroupIds: ['sg-0ccc3333'],
  hosts: { min: 1, max: 4 },
  vm: { image: 'ghcr.io/cirruslabs/macos-sequoia-xcode:latest', cpu: 4, memoryMb: 8192 },
};

describe('mac config', () => {
  it('applies defaults', () => {
    expect(parseMacMachine('m1', machine)).toMatchObject({ perJob: 'vm', hostUsername: 'ec2-user', vm: { username: 'admin', sshPort: 22, cpu: 4 }, hosts: { min: 1, max: 4 } });
    expect(parseMacConfig({ region: 'us-east-1', hostLaunchTimeout: '40m' })).toMatchObject({ region: 'us-east-1', hostLaunchTimeoutMs: 40 * 60_000, retries: 4 });
  });

  it('names every bad field', () => {
    expect(validateMacMachine('m1', { ...machine, instanceType: 'c6i.large', hosts: { min: 3, max: 2 }, perJob: 'container', vm: { image: 'x y', colour: 1 } })).toEqual([
      expect.stringMatching(/^classes\.m1\.machine\.instanceType: expected an EC2 Mac instance type/),
      expect.stringMatching(/^classes\.m1\.machine\.hosts: expected \{ min/),
      expect.stringMatching(/^classes\.m1\.machine\.perJob: expected "vm"/),
      expect.stringMatching(/^classes\.m1\.machine\.vm\.colour: not a known field/),
      expect.stringMatching(/^classes\.m1\.machine\.vm\.image: expected a Tart image/),
    ]);
    expect(validateMacMachine('m1', { ...machine, subnets: ['subnet-0aaa1111'] })).toEqual([expect.stringMatching(/^classes\.m1\.machine\.subnets\[0\]: expected \{ id: subnet-\.\.\., zone: us-east-1a \}, got "subnet-0aaa1111"$/)]);
    expect(() => parseMacConfig({ region: 'nowhere' })).toThrow(/^providers\.mac\.region: expected an AWS region/);
    expect(() => parseMacConfig({ region: 'us-east-1', hostLaunchTimeout: 'soon' })).toThrow(/providers\.mac\.hostLaunchTimeout/);
  });

  it('needs no VM image when each job gets a whole instance', () => {
    expect(validateMacMachine('m1', { ...machine, perJob: 'instance', vm: undefined })).toEqual([]);
  });
});
