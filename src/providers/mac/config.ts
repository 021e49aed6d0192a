// providers.mac and classes.X.machine (mac classes): validated here, every error naming its field.
// A mac class runs jobs in nested macOS VMs (Tart) on long-lived EC2 Mac dedicated hosts, or,
// with `perJob: instance`, on a whole Mac instance per job.
import { tryParseDuration } from '../../config/duration.js';
import { parseAwsConfig, type AwsProviderConfig } from '../aws/config.js';
import { isRecord, show } from '../shared/config-fields.js';

export type MacProviderConfig = AwsProviderConfig & {
  /** How long a host's macOS instance may take to become reachable over SSH (6-20 min on EC2). */
  hostLaunchTimeoutMs: number;
  /** How often the host fleet syncs with EC2 (one DescribeHosts + one DescribeInstances) and lists each host's VMs. */
  hostPollIntervalMs: number;
};

export interface MacMachine {
  /** Dedicated host / instance type: mac2.metal (M1), mac2-m2pro.metal (M2 Pro), ... */
  instanceType: string;
  /** macOS AMI of the host instance (Tart installed, the manager's host user set up by user data). */
  hostImageId: string;
  /** Subnets with their availability zone, in preference order; hosts are allocated in those zones. */
  subnets: { id: string; zone: string }[];
  securityGroupIds: string[];
  hosts: { min: number; max: number };
  /** `vm`: a fresh nested Tart VM per job (at most two per host); `instance`: a Mac instance per job. */
  perJob: 'vm' | 'instance';
  /** User the manager logs in as on the host instance. */
  hostUsername: string;
  /** The nested VM (perJob: vm). */
  vm: { image: string; username: string; sshPort: number; cpu?: number; memoryMb?: number };
  tags: Record<string, string>;
}

const MACHINE_KEYS = ['instanceType', 'hostImageId', 'subnets', 'securityGroupIds', 'hosts', 'perJob', 'hostUsername', 'vm', 'tags'];
const VM_KEYS = ['image', 'username', 'sshPort', 'cpu', 'memoryMb'];

export function parseMacConfig(raw: unknown): MacProviderConfig {
  const p = 'providers.mac';
  const errors: string[] = [];
  // The mac provider's own keys; the rest are the EC2 client's (region, endpoint, retries...).
  const own = { hostLaunchTimeout: 30 * 60_000, hostPollInterval: 15_000 };
  let rest: unknown = raw;
  if (isRecord(raw)) {
    const others: Record<string, unknown> = { ...raw };
    for (const key of Object.keys(own) as (keyof typeof own)[]) {
      const v = raw[key];
      delete others[key];
      if (v === undefined) continue;
      const ms = typeof v === 'string' ? tryParseDuration(v) : null;
      if (ms === null || ms <= 0) errors.push(`${p}.${key}: expected a duration like "${key === 'hostLaunchTimeout' ? '30m' : '15s'}", got ${show(v)}`);
      else own[key] = ms;
    }
    rest = others;
  }
  let aws: AwsProviderConfig | undefined;
  try {
    aws = parseAwsConfig(rest);
  } catch (err) {
    errors.push(...String((err as Error).message).split('\n').map((e) => e.replace(/^providers\.aws/, p)));
  }
  if (errors.length || !aws) throw new Error(errors.join('\n'));
  return { ...aws, hostLaunchTimeoutMs: own.hostLaunchTimeout, hostPollIntervalMs: own.hostPollInterval };
}

export function validateMacMachine(className: string, machine: unknown): string[] {
  return checkMachine(className, machine).errors;
}

export function parseMacMachine(className: string, machine: unknown): MacMachine {
  const { errors, value } = checkMachine(className, machine);
  if (errors.length || !value) throw new Error(errors.join('\n'));
  return value;
}

const intIn = (v: unknown, lo: number, hi: number) => typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;

function checkMachine(className: string, raw: unknown): { errors: string[]; value?: MacMachine } {
  const p = `classes.${className}.machine`;
  if (!isRecord(raw)) return { errors: [`${p}: expected a Mac machine profile (instanceType, hostImageId, subnets, hosts, vm...), got ${show(raw)}`] };
  const errors: string[] = [];
  for (const k of Object.keys(raw)) if (!MACHINE_KEYS.includes(k)) errors.push(`${p}.${k}: not a known field (known: ${MACHINE_KEYS.join(', ')})`);
  const instanceType = raw['instanceType'];
  if (typeof instanceType !== 'string' || !/^mac[0-9a-z-]*\.metal$/.test(instanceType)) errors.push(`${p}.instanceType: expected an EC2 Mac instance type like mac2.metal or mac2-m2pro.metal, got ${show(instanceType)}`);
  const hostImageId = raw['hostImageId'];
  if (typeof hostImageId !== 'string' || !/^ami-[0-9a-f]{8,17}$/.test(hostImageId)) errors.push(`${p}.hostImageId: expected a macOS AMI id like ami-0123456789abcdef0, got ${show(hostImageId)}`);
  const subnets = raw['subnets'];
  const subnetOk = Array.isArray(subnets) && subnets.length > 0 && subnets.every((s) => isRecord(s) && typeof s['id'] === 'string' && /^subnet-[0-9a-f]{8,17}$/.test(s['id']) && typeof s['zone'] === 'string' && /^[a-z]{2}-[a-z]+-\d[a-z]$/.test(s['zone']));
  if (!subnetOk) errors.push(`${p}.subnets: expected a non-empty list of { id: subnet-..., zone: us-east-1a } in preference order, got ${show(subnets)}`);
  const sgs = raw['securityGroupIds'];
  if (!Array.isArray(sgs) || sgs.length === 0 || !sgs.every((s) => typeof s === 'string' && /^sg-[0-9a-f]{8,17}$/.test(s))) errors.push(`${p}.securityGroupIds: expected a non-empty list of security group ids (sg-...), got ${show(sgs)}`);
  const hosts = raw['hosts'] ?? { min: 0, max: 1 };
  if (!isRecord(hosts) || !intIn(hosts['min'] ?? 0, 0, 1000) || !intIn(hosts['max'], 1, 1000) || Number(hosts['min'] ?? 0) > Number(hosts['max'])) {
    errors.push(`${p}.hosts: expected { min: integer >= 0, max: integer >= max(1, min) } (dedicated hosts, billed 24 h at least each), got ${show(raw['hosts'])}`);
  }
  const perJob = raw['perJob'] ?? 'vm';
  if (perJob !== 'vm' && perJob !== 'instance') errors.push(`${p}.perJob: expected "vm" (a nested Tart VM per job) or "instance" (a Mac instance per job), got ${show(perJob)}`);
  const hostUsername = raw['hostUsername'] ?? 'ec2-user';
  if (typeof hostUsername !== 'string' || !/^[a-z_][a-z0-9_-]{0,31}$/.test(hostUsername)) errors.push(`${p}.hostUsername: expected a macOS user name, got ${show(hostUsername)}`);
  const vmRaw = raw['vm'] ?? {};
  let vm: MacMachine['vm'] | undefined;
  if (!isRecord(vmRaw)) errors.push(`${p}.vm: expected { image, username, sshPort, cpu, memoryMb }, got ${show(vmRaw)}`);
  else {
    for (const k of Object.keys(vmRaw)) if (!VM_KEYS.includes(k)) errors.push(`${p}.vm.${k}: not a known field (known: ${VM_KEYS.join(', ')})`);
    const image = vmRaw['image'];
    if (perJob !== 'instance' && (typeof image !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._/:@-]*$/.test(image))) errors.push(`${p}.vm.image: expected a Tart image (local name or OCI reference like ghcr.io/cirruslabs/macos-sequoia-xcode:latest), got ${show(image)}`);
    const username = vmRaw['username'] ?? 'admin';
    if (typeof username !== 'string' || !/^[a-z_][a-z0-9_-]{0,31}$/.test(username)) errors.push(`${p}.vm.username: expected a macOS user name, got ${show(username)}`);
    const sshPort = vmRaw['sshPort'] ?? 22;
    if (!intIn(sshPort, 1, 65535)) errors.push(`${p}.vm.sshPort: expected a port 1..65535, got ${show(sshPort)}`);
    if (vmRaw['cpu'] !== undefined && !intIn(vmRaw['cpu'], 1, 64)) errors.push(`${p}.vm.cpu: expected an integer 1..64, got ${show(vmRaw['cpu'])}`);
    if (vmRaw['memoryMb'] !== undefined && !intIn(vmRaw['memoryMb'], 1024, 1_048_576)) errors.push(`${p}.vm.memoryMb: expected an integer 1024..1048576, got ${show(vmRaw['memoryMb'])}`);
    vm = { image: typeof image === 'string' ? image : '', username: username as string, sshPort: sshPort as number, ...(vmRaw['cpu'] !== undefined ? { cpu: vmRaw['cpu'] as number } : {}), ...(vmRaw['memoryMb'] !== undefined ? { memoryMb: vmRaw['memoryMb'] as number } : {}) };
  }
  const tags = raw['tags'] ?? {};
  if (!isRecord(tags) || !Object.values(tags).every((v) => typeof v === 'string')) errors.push(`${p}.tags: expected a map of tag keys to string values, got ${show(tags)}`);
  if (errors.length) return { errors };
  return {
    errors,
    value: {
      instanceType: instanceType as string,
      hostImageId: hostImageId as string,
      subnets: (subnets as { id: string; zone: string }[]).map((s) => ({ id: s.id, zone: s.zone })),
      securityGroupIds: [...(sgs as string[])],
      hosts: { min: Number((hosts as Record<string, unknown>)['min'] ?? 0), max: Number((hosts as Record<string, unknown>)['max']) },
      perJob: perJob as 'vm' | 'instance',
      hostUsername: hostUsername as string,
      vm: vm!,
      tags: { ...(tags as Record<string, string>) },
    },
  };
}
