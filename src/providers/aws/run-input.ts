// The RunInstances request for one VM or a batch of one class in one subnet (pure). Isolation
// rules (docs/architecture.md "Isolation") live here: no public IP, no instance profile, IMDSv2 only with hop limit
// 1, terminate on shutdown, and each VM accepts only its own key.
import { shq } from '../../gitlab/script-quote.js';
import { createHash } from 'node:crypto';
import type { RunInstancesCommandInput, Tag } from '@aws-sdk/client-ec2';
import { LABEL_SHARD, LABEL_VM, type VmSpec } from '../provider.js';
import type { AwsMachine } from './config.js';

/**
 * Tag on every EC2 resource of a Mac host (its dedicated host, its macOS instance, a job
 * instance on it): the host record it belongs to. The mac provider's, never the aws provider's.
 */
export const TAG_HOST_RECORD = 'runner-fleet-host';

/** Tag naming the batch (its ClientToken) on every instance of a MinCount/MaxCount launch. */
export const TAG_BATCH = 'runner-fleet-batch';

/**
 * EC2's idempotency key (<= 64 ASCII chars): the same VMs in the same subnet are the same
 * request, so a retried RunInstances never launches twice; failing over to another subnet is a
 * new request.
 */
export function clientToken(specs: Pick<VmSpec, 'name'>[], subnet: string): string {
  const h = createHash('sha256').update(`runner-fleet/aws\0${subnet}\0${specs.map((s) => s.name).join('\0')}`).digest('hex');
  return `rf-${h.slice(0, 40)}`;
}


/**
 * A boot script that installs the VM's own public key for `username`. In a batch every instance
 * gets the same user data, so it lists each VM's key under its launch index and picks its own
 * from the instance metadata (IMDSv2): no VM ever accepts another VM's key.
 */
export function userDataScript(username: string, publicKeys: string[], hostKeys: (string | undefined)[] = []): string {
  const cases = publicKeys.map((k, i) => `  ${i}) KEY=${shq(k.trim())} ;;`);
  const hostCases = hostKeys.flatMap((k, i) => (k ? [`  ${i}) HOSTKEY_B64=${shq(Buffer.from(k.trim()).toString('base64'))} ;;`] : []));
  return [
    '#!/bin/bash',
    '# runner-fleet: install this VM\'s own SSH key, chosen by its launch index in the batch.',
    'set -euo pipefail',
    'IMDS=http://169.254.169.254/latest',
    'TOKEN=$(curl -fsS -X PUT "$IMDS/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60")',
    'INDEX=$(curl -fsS -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/meta-data/ami-launch-index")',
    'case "$INDEX" in',
    ...cases,
    '  *) echo "runner-fleet: no key for launch index $INDEX" >&2; exit 1 ;;',
    'esac',
    `id -u ${username} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash ${username}`,
    `install -d -m 700 -o ${username} -g ${username} /home/${username}/.ssh`,
    `printf '%s\\n' "$KEY" > /home/${username}/.ssh/authorized_keys`,
    `chown ${username}:${username} /home/${username}/.ssh/authorized_keys && chmod 600 /home/${username}/.ssh/authorized_keys`,
    // Jobs get no route to the instance metadata service (it holds the user data and, were there
    // a role, credentials); only root keeps it for the agent.
    `iptables -A OUTPUT -d 169.254.169.254 -m owner --uid-owner ${username} -j REJECT || true`,
    ...hostKeyLines(hostCases),
    '',
  ].join('\n');
}

/**
 * The manager's host key for this VM, by launch index, installed as sshd's ed25519 key (the
 * manager pins its fingerprint). Until the reload the VM shows its AMI's key, which the boot
 * probe refuses without sending anything. In a batch the user data (readable through IMDS by
 * root only: the job user is cut off above) lists the host keys of its siblings too.
 */
function hostKeyLines(hostCases: string[]): string[] {
  if (hostCases.length === 0) return [];
  return [
    'case "$INDEX" in',
    ...hostCases,
    '  *) HOSTKEY_B64= ;;',
    'esac',
    'if [ -n "$HOSTKEY_B64" ]; then',
    '  (umask 077 && printf \'%s\' "$HOSTKEY_B64" | base64 -d > /etc/ssh/ssh_host_ed25519_key)',
    '  ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub',
    '  systemctl reload ssh 2>/dev/null || systemctl reload sshd',
    'fi',
  ];
}

/** The host keys listed in a user-data script, by launch index (the emulator's boot reads them). */
export function hostKeysInUserData(script: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const m of script.matchAll(/^ {2}(\d+)\) HOSTKEY_B64='([A-Za-z0-9+/=]*)' ;;$/gm)) out.set(Number(m[1]), Buffer.from(m[2]!, 'base64').toString());
  return out;
}

/** The keys listed in a user-data script, by launch index (the emulator's cloud-init reads it). */
export function keysInUserData(script: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const m of script.matchAll(/^ {2}(\d+)\) KEY='([^']*)' ;;$/gm)) out.set(Number(m[1]), m[2]!);
  return out;
}

function tags(spec: VmSpec | undefined, machine: AwsMachine, base: Record<string, string>): Tag[] {
  const all = { ...machine.tags, ...base, ...(spec ? { Name: spec.name, ...spec.labels } : {}) };
  return Object.entries(all).map(([Key, Value]) => ({ Key, Value }));
}

/**
 * RunInstances for `specs` (one class) in `subnet`. A single VM carries its own tags; a batch
 * carries the shard tag and the batch tag, and each instance gets its VM tags afterwards.
 */
export function runInstancesInput(specs: VmSpec[], machine: AwsMachine, subnet: string): RunInstancesCommandInput {
  const first = specs[0];
  if (!first) throw new Error('runInstancesInput needs at least one spec');
  const single = specs.length === 1;
  const token = clientToken(specs, subnet);
  const base: Record<string, string> = single ? {} : { [LABEL_SHARD]: first.labels[LABEL_SHARD] ?? first.shard, [TAG_BATCH]: token };
  const instanceTags = tags(single ? first : undefined, machine, base);
  if (!single) for (const t of instanceTags) if (t.Key === LABEL_VM) throw new Error('a batch cannot carry one VM label');
  return {
    ClientToken: token,
    ImageId: machine.imageId,
    InstanceType: machine.instanceType as RunInstancesCommandInput['InstanceType'],
    MinCount: specs.length,
    MaxCount: specs.length,
    // No public address: the manager reaches the VM on its private address in the subnet.
    NetworkInterfaces: [{ DeviceIndex: 0, SubnetId: subnet, Groups: machine.securityGroupIds, AssociatePublicIpAddress: false, DeleteOnTermination: true }],
    // IMDSv2 only, one hop: a container on the VM cannot reach it; no role, so no credentials.
    MetadataOptions: { HttpTokens: 'required', HttpPutResponseHopLimit: 1, HttpEndpoint: 'enabled', InstanceMetadataTags: 'disabled' },
    InstanceInitiatedShutdownBehavior: 'terminate',
    UserData: Buffer.from(userDataScript(machine.username, specs.map((s) => s.publicKey), specs.map((s) => s.hostKey))).toString('base64'),
    ...(machine.diskSizeGb ? { BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: { VolumeSize: machine.diskSizeGb, VolumeType: 'gp3', DeleteOnTermination: true, Encrypted: true } }] } : {}),
    TagSpecifications: [
      { ResourceType: 'instance', Tags: instanceTags },
      { ResourceType: 'volume', Tags: instanceTags },
    ],
  };
}
