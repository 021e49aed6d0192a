// The EC2 provider's pure parts: config checks, the RunInstances request, the user-data key
// script, and error classification.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAwsConfig, parseAwsMachine, validateAwsMachine } from '../../src/providers/aws/config.js';
import { awsErrorKind } from '../../src/providers/aws/errors.js';
import { TAG_BATCH, clientToken, hostKeysInUserData, keysInUserData, runInstancesInput, userDataScript } from '../../src/providers/aws/run-input.js';
import { generateHostKey } from '../../src/isolation/keys.js';
import { LABEL_SHARD, LABEL_VM, type VmSpec } from '../../src/providers/provider.js';

const machineRaw = { instanceType: 'c6i.large', imageId: 'ami-0123456789abcdef0', subnets: ['subnet-0aaa1111', 'subnet-0bbb2222'], securityGroupIds: ['sg-0ccc3333'], diskSizeGb: 40, tags: { team: 'ci' } };
const machine = parseAwsMachine('small', machineRaw);
const spec = (id: string): VmSpec => ({
  vmId: id, name: `rf-s1-${id}`, shard: 's1', className: 'small', labels: { [LABEL_SHARD]: 's1', [LABEL_VM]: id },
  publicKey: `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI${id} rf-s1-${id}`, machine: machineRaw, maxRunSeconds: 3600,
});
const tagMap = (tags: { Key?: string; Value?: string }[] | undefined) => Object.fromEntries((tags ?? []).map((t) => [t.Key, t.Value]));

describe('aws config', () => {
  it('names every bad field', () => {
    expect(() => parseAwsConfig({ region: 'mars', retries: 99, colour: 1 })).toThrow(/providers\.aws\.colour: not a known field[\s\S]*providers\.aws\.region: expected an AWS region[\s\S]*providers\.aws\.retries: expected an integer 0\.\.10/);
    expect(parseAwsConfig({ region: 'us-east-1', endpoint: 'http://127.0.0.1:9999/' })).toMatchObject({ region: 'us-east-1', endpoint: 'http://127.0.0.1:9999', retries: 4 });
    expect(validateAwsMachine('small', { instanceType: 'mac2.metal', imageId: 'ami-x', subnets: [] })).toEqual([
      expect.stringMatching(/^classes\.small\.machine\.instanceType: mac2\.metal is a Mac instance type/),
      expect.stringMatching(/^classes\.small\.machine\.imageId: expected an AMI id/),
      expect.stringMatching(/^classes\.small\.machine\.subnets: expected a non-empty list/),
      expect.stringMatching(/^classes\.small\.machine\.securityGroupIds: expected/),
    ]);
  });
});

describe('RunInstances request', () => {
  it('isolates one VM: no public IP, IMDSv2 with hop limit 1, no profile, terminate on shutdown, own tags', () => {
    const input = runInstancesInput([spec('a1')], machine, 'subnet-0aaa1111');
    expect(input).toMatchObject({ MinCount: 1, MaxCount: 1, ImageId: machine.imageId, InstanceType: 'c6i.large', InstanceInitiatedShutdownBehavior: 'terminate' });
    expect(input.NetworkInterfaces).toEqual([{ DeviceIndex: 0, SubnetId: 'subnet-0aaa1111', Groups: ['sg-0ccc3333'], AssociatePublicIpAddress: false, DeleteOnTermination: true }]);
    expect(input.MetadataOptions).toMatchObject({ HttpTokens: 'required', HttpPutResponseHopLimit: 1 });
    expect(input).not.toHaveProperty('IamInstanceProfile');
    expect(input).not.toHaveProperty('KeyName');
    expect(tagMap(input.TagSpecifications![0]!.Tags)).toEqual({ team: 'ci', Name: 'rf-s1-a1', [LABEL_SHARD]: 's1', [LABEL_VM]: 'a1' });
    expect(input.TagSpecifications!.map((t) => t.ResourceType)).toEqual(['instance', 'volume']);
    const script = Buffer.from(input.UserData!, 'base64').toString();
    expect([...keysInUserData(script)]).toEqual([[0, spec('a1').publicKey]]);
  });

  it('launches a batch with MinCount = MaxCount, one key per launch index, and no VM tag', () => {
    const specs = [spec('a1'), spec('b2'), spec('c3')];
    const input = runInstancesInput(specs, machine, 'subnet-0bbb2222');
    expect(input).toMatchObject({ MinCount: 3, MaxCount: 3 });
    const tags = tagMap(input.TagSpecifications![0]!.Tags);
    expect(tags[LABEL_VM]).toBeUndefined();
    expect(tags[TAG_BATCH]).toBe(input.ClientToken);
    const keys = keysInUserData(Buffer.from(input.UserData!, 'base64').toString());
    expect([...keys.values()]).toEqual(specs.map((s) => s.publicKey));
  });

  it('keys the request on VMs and subnet: a retry is the same request, another subnet a new one', () => {
    const t = clientToken([spec('a1')], 'subnet-0aaa1111');
    expect(t).toBe(clientToken([spec('a1')], 'subnet-0aaa1111'));
    expect(t).not.toBe(clientToken([spec('a1')], 'subnet-0bbb2222'));
    expect(t.length).toBeLessThanOrEqual(64);
  });

  it('the user-data script installs only the key of its own launch index', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rf-userdata-'));
    try {
      // Run the real script with curl, id, useradd, install, chown and iptables stubbed.
      const bin = join(dir, 'bin');
      mkdirSync(bin);
      const stub = (name: string, body: string) => writeFileSync(join(bin, name), `#!/bin/bash\n${body}\n`, { mode: 0o755 });
      stub('curl', 'case "$*" in *ami-launch-index*) echo 1;; *) echo token;; esac');
      for (const n of ['id', 'useradd', 'chown', 'chmod', 'iptables']) stub(n, 'exit 0');
      stub('install', 'mkdir -p "${@: -1}"');
      const script = userDataScript('runner', [spec('a1').publicKey, spec('b2').publicKey]).replaceAll('/home/', `${dir}/home/`);
      execFileSync('bash', ['-c', script], { env: { PATH: `${bin}:/usr/bin:/bin` } });
      expect(readFileSync(join(dir, 'home/runner/.ssh/authorized_keys'), 'utf8')).toBe(`${spec('b2').publicKey}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the user-data script installs the host key of its own launch index as sshd\'s and reloads sshd', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rf-userdata-'));
    try {
      const bin = join(dir, 'bin');
      mkdirSync(bin);
      mkdirSync(join(dir, 'etc/ssh'), { recursive: true });
      const stub = (name: string, body: string) => writeFileSync(join(bin, name), `#!/bin/bash\n${body}\n`, { mode: 0o755 });
      stub('curl', 'case "$*" in *ami-launch-index*) echo 1;; *) echo token;; esac');
      for (const n of ['id', 'useradd', 'chown', 'chmod', 'iptables']) stub(n, 'exit 0');
      stub('install', 'mkdir -p "${@: -1}"');
      stub('ssh-keygen', 'echo pub');
      stub('systemctl', `echo "$*" >> ${dir}/systemctl.log`);
      const hostKeys = [generateHostKey('a1-host'), generateHostKey('b2-host')];
      const script = userDataScript('runner', [spec('a1').publicKey, spec('b2').publicKey], hostKeys.map((k) => k.privateKey)).replaceAll('/home/', `${dir}/home/`).replaceAll('/etc/ssh/', `${dir}/etc/ssh/`);
      expect([...hostKeysInUserData(script).values()]).toEqual(hostKeys.map((k) => k.privateKey.trim()));
      execFileSync('bash', ['-c', script], { env: { PATH: `${bin}:/usr/bin:/bin` } });
      expect(readFileSync(join(dir, 'etc/ssh/ssh_host_ed25519_key'), 'utf8')).toBe(hostKeys[1]!.privateKey.trim());
      expect(readFileSync(join(dir, 'systemctl.log'), 'utf8')).toMatch(/^reload ssh/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('EC2 error classification', () => {
  const svc = (name: string, status = 400) => Object.assign(new Error(`${name}: the cloud says no`), { name, $metadata: { httpStatusCode: status } });
  it.each([
    [svc('InsufficientInstanceCapacity', 500), 'stockout'],
    [svc('InsufficientHostCapacity'), 'stockout'],
    [svc('RequestLimitExceeded', 503), 'rateLimited'],
    [svc('InstanceLimitExceeded'), 'quota'],
    [svc('VcpuLimitExceeded'), 'quota'],
    [svc('InvalidInstanceID.NotFound'), 'notFound'],
    [svc('InternalError', 500), 'retryable'],
    [Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }), 'retryable'],
    [svc('IdempotentParameterMismatch'), 'fatal'],
    [svc('InvalidAMIID.Malformed'), 'fatal'],
  ])('%s -> %s', (err, kind) => {
    expect(awsErrorKind(err)).toBe(kind);
  });
});
