// providers.mac and classes.X.machine (mac classes): validated here, every error naming its field.
// A mac class runs jobs in nested macOS VMs (Tart) on long-lived EC2 Mac dedicated hosts, or,
// with `perJob: instance`, on a whole Mac instance per job.
import { z } from 'zod';
import { awsProviderConfig, awsProviderFields, type AwsProviderConfig } from '../aws/config.js';
import { check, durationMs, fields, intIn, isRecord, matching, parseOrThrow, type FieldError } from '../shared/config-fields.js';

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

const providerSchema = fields(
  {
    ...awsProviderFields,
    hostLaunchTimeout: durationMs('a duration like "30m"', 1).default(30 * 60_000),
    hostPollInterval: durationMs('a duration like "15s"', 1).default(15_000),
  },
  'an object with at least region',
);

/** Validates `providers.mac`: the EC2 client's fields (as providers.aws) and the host fleet's. */
export function parseMacConfig(raw: unknown): MacProviderConfig {
  const v = parseOrThrow(providerSchema, raw, ['providers', 'mac']);
  return { ...awsProviderConfig(v), hostLaunchTimeoutMs: v.hostLaunchTimeout, hostPollIntervalMs: v.hostPollInterval };
}

const SUBNETS = 'a non-empty list of { id: subnet-..., zone: us-east-1a } in preference order';
const SUBNET = '{ id: subnet-..., zone: us-east-1a }';
const GROUPS = 'a non-empty list of security group ids (sg-...)';
const HOSTS = '{ min: integer >= 0, max: integer >= max(1, min) } (dedicated hosts, billed 24 h at least each)';
const USER = /^[a-z_][a-z0-9_-]{0,31}$/;
const IMAGE = 'a Tart image (local name or OCI reference like ghcr.io/cirruslabs/macos-sequoia-xcode:latest)';

const vmFields = {
  // Required unless perJob: instance (checked across fields).
  image: matching(/^[A-Za-z0-9][A-Za-z0-9._/:@-]*$/, IMAGE).optional(),
  username: matching(USER, 'a macOS user name').default('admin'),
  sshPort: intIn(1, 65_535, 'a port 1..65535').default(22),
  cpu: intIn(1, 64).optional(),
  memoryMb: intIn(1024, 1_048_576).optional(),
};

const machineSchema = fields(
  {
    instanceType: matching(/^mac[0-9a-z-]*\.metal$/, 'an EC2 Mac instance type like mac2.metal or mac2-m2pro.metal'),
    hostImageId: matching(/^ami-[0-9a-f]{8,17}$/, 'a macOS AMI id like ami-0123456789abcdef0'),
    subnets: z
      .array(
        z.strictObject({ id: matching(/^subnet-[0-9a-f]{8,17}$/, 'a subnet id like subnet-0123abcd'), zone: matching(/^[a-z]{2}-[a-z]+-\d[a-z]$/, 'an availability zone like us-east-1a') }, { error: SUBNET }),
        { error: SUBNETS },
      )
      .min(1, { error: SUBNETS }),
    securityGroupIds: z.array(matching(/^sg-[0-9a-f]{8,17}$/, 'a security group id like sg-0123abcd'), { error: GROUPS }).min(1, { error: GROUPS }),
    hosts: z
      .strictObject({ min: intIn(0, 1000, HOSTS).default(0), max: intIn(1, 1000, HOSTS) }, { error: HOSTS })
      .refine((h) => h.min <= h.max, { error: HOSTS })
      .default({ min: 0, max: 1 }),
    perJob: z.enum(['vm', 'instance'], { error: '"vm" (a nested Tart VM per job) or "instance" (a Mac instance per job)' }).default('vm'),
    hostUsername: matching(USER, 'a macOS user name').default('ec2-user'),
    vm: fields(vmFields, '{ image, username, sshPort, cpu, memoryMb }').default({ username: 'admin', sshPort: 22 }),
    tags: z.record(z.string(), z.string({ error: 'a map of tag keys to string values' }), { error: 'a map of tag keys to string values' }).default({}),
  },
  'a Mac machine profile (instanceType, hostImageId, subnets, hosts, vm...)',
);

/** A nested VM needs its image; a whole instance per job does not. */
function crossMachine(raw: Record<string, unknown>): FieldError[] {
  const vm = raw['vm'] ?? {};
  if ((raw['perJob'] ?? 'vm') === 'vm' && isRecord(vm) && vm['image'] === undefined) return [{ path: ['vm', 'image'], message: `expected ${IMAGE}, got nothing` }];
  return [];
}

export function validateMacMachine(className: string, machine: unknown): string[] {
  return checkMachine(className, machine).errors;
}

export function parseMacMachine(className: string, machine: unknown): MacMachine {
  const { errors, value } = checkMachine(className, machine);
  if (errors.length || !value) throw new Error(errors.join('\n'));
  return value;
}

function checkMachine(className: string, raw: unknown): { errors: string[]; value?: MacMachine } {
  const { errors, value: v } = check(machineSchema, raw, ['classes', className, 'machine'], crossMachine);
  if (!v) return { errors };
  const { image, cpu, memoryMb, ...vm } = v.vm;
  return { errors, value: { ...v, vm: { image: image ?? '', ...vm, ...(cpu !== undefined ? { cpu } : {}), ...(memoryMb !== undefined ? { memoryMb } : {}) } } };
}
