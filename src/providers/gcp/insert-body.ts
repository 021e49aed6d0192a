// The GCE Instance resource for one VM (pure). Isolation rules (docs/architecture.md "Isolation") live here:
// no external IP, no service account, the VM's own key only, a cloud-side maximum run duration.
import type { protos } from '@google-cloud/compute';
import { LABEL_VM, type VmSpec } from '../provider.js';
import type { GcpMachine } from './config.js';

type Instance = protos.google.cloud.compute.v1.IInstance;
type InstanceProperties = protos.google.cloud.compute.v1.IInstanceProperties;
type MetadataItem = protos.google.cloud.compute.v1.IItems;

export interface BodyConfig {
  project: string;
  network?: string;
  subnetwork?: string;
}

/**
 * Installs the OpenSSH component of the Windows guest environment (the agent then installs the
 * `ssh-keys` key) and pins sshd's default shell to cmd.exe: the executor's PowerShell command is
 * written for it, and cmd passes a job's exit code through unchanged (a PowerShell default shell
 * would turn every failure into exit code 1).
 */
export const WINDOWS_SSH_SPECIALIZE =
  'googet -noconfirm=true install google-compute-engine-ssh && reg add HKLM\\SOFTWARE\\OpenSSH /v DefaultShell /t REG_SZ /d C:\\Windows\\System32\\cmd.exe /f';

/** Metadata item holding the VM's SSH host key, made by the manager, which pins its fingerprint. */
export const HOST_KEY_ITEM = 'runner-fleet-ssh-host-key';

/**
 * Linux guests: install the manager's host key as sshd's ed25519 key and reload sshd. The item may
 * arrive after boot (bulkInsert sets it per VM afterwards), so the script waits for it; until then
 * the VM shows its image's key, which the boot probe refuses (sending nothing) and retries.
 */
export const LINUX_HOST_KEY_SCRIPT = [
  '#!/bin/bash',
  'set -u',
  `URL=http://metadata.google.internal/computeMetadata/v1/instance/attributes/${HOST_KEY_ITEM}`,
  'for i in $(seq 1 120); do KEY=$(curl -fsS -H "Metadata-Flavor: Google" "$URL") && break; sleep 1; done',
  '[ -n "${KEY:-}" ] || exit 1',
  'umask 077 && printf "%s\\n" "$KEY" > /etc/ssh/ssh_host_ed25519_key && ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub',
  'systemctl reload ssh 2>/dev/null || systemctl reload sshd',
  '',
].join('\n');

export function regionOf(zone: string): string {
  return zone.replace(/-[a-z]$/, '');
}

export function networkUrl(cfg: BodyConfig): string {
  const n = cfg.network ?? 'default';
  return n.includes('/') ? n : `projects/${cfg.project}/global/networks/${n}`;
}

export function subnetworkUrl(cfg: BodyConfig, zone: string): string | undefined {
  const s = cfg.subnetwork;
  if (!s) return undefined;
  return s.includes('/') ? s : `projects/${cfg.project}/regions/${regionOf(zone)}/subnetworks/${s}`;
}

/** `USER:ssh-ed25519 AAAA... comment` lines, one per key. */
export function sshKeysValue(username: string, publicKeys: string[]): string {
  return publicKeys.map((k) => `${username}:${k.trim()}`).join('\n');
}

function metadataItems(machine: GcpMachine, publicKeys: string[], hostKey?: string): MetadataItem[] {
  const items: MetadataItem[] = [
    // Only our own key: project-wide keys and OS Login would open the VM to other principals.
    { key: 'block-project-ssh-keys', value: 'TRUE' },
    { key: 'enable-oslogin', value: 'FALSE' },
  ];
  if (publicKeys.length && (machine.os === 'linux' || machine.windowsAccess === 'ssh')) items.unshift({ key: 'ssh-keys', value: sshKeysValue(machine.username, publicKeys) });
  if (machine.os === 'linux') {
    if (hostKey) items.push({ key: HOST_KEY_ITEM, value: hostKey });
    items.push({ key: 'startup-script', value: LINUX_HOST_KEY_SCRIPT });
  } else {
    // Windows makes its own host key (no boot hook of ours installs one); its guest agent
    // publishes it in guest attributes, written only from inside the VM: the manager pins that.
    items.push({ key: 'enable-guest-attributes', value: 'TRUE' });
  }
  if (machine.os === 'windows' && machine.windowsAccess === 'ssh') {
    items.push({ key: 'enable-windows-ssh', value: 'TRUE' }, { key: 'sysprep-specialize-script-cmd', value: WINDOWS_SSH_SPECIALIZE });
  }
  return items;
}

function scheduling(spec: Pick<VmSpec, 'maxRunSeconds'>, machine: GcpMachine): Instance['scheduling'] {
  return {
    provisioningModel: 'STANDARD',
    // The backstop against leaks: GCE deletes the VM itself after this long.
    maxRunDuration: { seconds: Math.max(30, Math.ceil(spec.maxRunSeconds)) },
    instanceTerminationAction: 'DELETE',
    // VMs with attached GPUs cannot live-migrate.
    onHostMaintenance: machine.gpu ? 'TERMINATE' : 'MIGRATE',
    automaticRestart: false,
  };
}

function shielded(machine: GcpMachine): Instance['shieldedInstanceConfig'] | undefined {
  // Arm (T2A) VMs are not Shielded VMs; unsigned GPU drivers do not load under Secure Boot.
  if (machine.imageArch === 'arm64') return undefined;
  return { enableSecureBoot: !machine.gpu, enableVtpm: true, enableIntegrityMonitoring: true };
}

/** machine.labels, then the spec's (runner-fleet-shard, runner-fleet-vm) which always win. */
export function instanceLabels(spec: Pick<VmSpec, 'labels'>, machine: GcpMachine): Record<string, string> {
  return { ...machine.labels, ...spec.labels };
}

/** The Instance resource for `instances.insert` in `zone`. */
export function instanceBody(spec: VmSpec, machine: GcpMachine, cfg: BodyConfig, zone: string): Instance {
  const subnetwork = subnetworkUrl(cfg, zone);
  const shieldedConfig = shielded(machine);
  return {
    name: spec.name,
    description: `runner-fleet ${spec.shard}/${spec.className} VM ${spec.vmId}`,
    machineType: `zones/${zone}/machineTypes/${machine.machineType}`,
    labels: instanceLabels(spec, machine),
    ...(machine.networkTags.length ? { tags: { items: [...machine.networkTags] } } : {}),
    disks: [
      {
        boot: true,
        autoDelete: true,
        type: 'PERSISTENT',
        initializeParams: {
          sourceImage: machine.image,
          diskSizeGb: machine.diskSizeGb,
          diskType: `zones/${zone}/diskTypes/${machine.diskType}`,
          labels: instanceLabels(spec, machine),
        },
      },
    ],
    // No accessConfigs: no external IP. The manager reaches the VM on its internal address.
    networkInterfaces: [{ network: networkUrl(cfg), ...(subnetwork ? { subnetwork } : {}) }],
    metadata: { items: metadataItems(machine, [spec.publicKey], spec.hostKey) },
    // No serviceAccounts: the job's VM holds no cloud identity.
    scheduling: scheduling(spec, machine),
    ...(machine.gpu
      ? { guestAccelerators: [{ acceleratorType: `projects/${cfg.project}/zones/${zone}/acceleratorTypes/${machine.gpu.type}`, acceleratorCount: machine.gpu.count }] }
      : {}),
    ...(shieldedConfig ? { shieldedInstanceConfig: shieldedConfig } : {}),
  };
}

/**
 * The shared InstanceProperties of a `bulkInsert` for several VMs of one class in one zone.
 * bulkInsert takes only a name per instance, so the per-VM parts are added afterwards: the VM
 * label with setLabels and the VM's own key with setMetadata (`vmMetadata`). The shared body
 * carries no key at all, so no VM ever accepts another VM's key.
 */
export function bulkProperties(specs: VmSpec[], machine: GcpMachine, cfg: BodyConfig, zone: string): InstanceProperties {
  const first = specs[0];
  if (!first) throw new Error('bulkProperties needs at least one spec');
  const one = instanceBody(first, machine, cfg, zone);
  const labels = { ...one.labels };
  delete labels[LABEL_VM];
  const disk = one.disks![0]!;
  return {
    description: `runner-fleet ${first.shard}/${first.className}`,
    machineType: machine.machineType,
    labels,
    ...(one.tags ? { tags: one.tags } : {}),
    disks: [{ ...disk, initializeParams: { ...disk.initializeParams, diskType: machine.diskType, labels } }],
    networkInterfaces: one.networkInterfaces,
    metadata: { items: metadataItems(machine, []) },
    scheduling: scheduling({ maxRunSeconds: Math.max(...specs.map((s) => s.maxRunSeconds)) }, machine),
    ...(machine.gpu ? { guestAccelerators: [{ acceleratorType: machine.gpu.type, acceleratorCount: machine.gpu.count }] } : {}),
    ...(one.shieldedInstanceConfig ? { shieldedInstanceConfig: one.shieldedInstanceConfig } : {}),
  };
}

/** A bulk-created VM's metadata with its own key (the guest agent installs it) and host key added. */
export function vmMetadataItems(current: MetadataItem[], machine: GcpMachine, publicKey: string, hostKey?: string): MetadataItem[] {
  if (machine.os !== 'linux' && machine.windowsAccess !== 'ssh') return current;
  const rest = current.filter((i) => i.key !== 'ssh-keys' && i.key !== HOST_KEY_ITEM);
  return [{ key: 'ssh-keys', value: sshKeysValue(machine.username, [publicKey]) }, ...rest, ...(hostKey && machine.os === 'linux' ? [{ key: HOST_KEY_ITEM, value: hostKey }] : [])];
}
