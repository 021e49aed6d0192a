// providers.aws and classes.X.machine (aws classes): validated here, every error naming its field.
import { duration, isRecord, parseCallSettings, show } from '../shared/config-fields.js';

export interface AwsProviderConfig {
  region: string;
  /** `http(s)://host[:port]`: the emulator or a VPC endpoint. Credentials: the SDK's default chain. */
  endpoint?: string;
  /** Token-bucket rate for EC2 calls of this account and region from this process. */
  requestsPerSecond: number;
  callTimeoutMs: number;
  retries: number;
  retryBaseMs: number;
  /** How long a subnet is avoided after InsufficientInstanceCapacity. */
  subnetCooldownMs: number;
  /** Least time between two polls (one DescribeInstances) of the shard's booting VMs. */
  pollIntervalMs: number;
}

export interface AwsMachine {
  instanceType: string;
  imageId: string;
  /** Subnets in preference order (each in one availability zone); failover walks this list. */
  subnets: string[];
  securityGroupIds: string[];
  diskSizeGb?: number;
  /** The user the job runs as; the VM's key is installed for it by the user-data script. */
  username: string;
  tags: Record<string, string>;
}

const PROVIDER_KEYS = ['region', 'endpoint', 'requestsPerSecond', 'callTimeout', 'retries', 'retryBase', 'subnetCooldown', 'pollInterval'];
const MACHINE_KEYS = ['instanceType', 'imageId', 'subnets', 'securityGroupIds', 'diskSizeGb', 'username', 'tags'];

/** Validates `providers.aws`; throws one Error listing every problem. */
export function parseAwsConfig(raw: unknown): AwsProviderConfig {
  const p = 'providers.aws';
  if (!isRecord(raw)) throw new Error(`${p}: expected an object with at least region, got ${show(raw)}`);
  const errors: string[] = [];
  for (const k of Object.keys(raw)) if (!PROVIDER_KEYS.includes(k)) errors.push(`${p}.${k}: not a known field (known: ${PROVIDER_KEYS.join(', ')})`);
  const region = raw['region'];
  if (typeof region !== 'string' || !/^[a-z]{2}(-gov)?-[a-z]+-\d$/.test(region)) errors.push(`${p}.region: expected an AWS region like us-east-1, got ${show(region)}`);
  const endpoint = raw['endpoint'];
  if (endpoint !== undefined) {
    let url: URL | undefined;
    try {
      url = typeof endpoint === 'string' ? new URL(endpoint) : undefined;
    } catch {
      /* reported below */
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) errors.push(`${p}.endpoint: expected a URL like http://127.0.0.1:8086 or https://ec2.us-east-1.amazonaws.com, got ${show(endpoint)}`);
  }
  const call = parseCallSettings(raw, p, errors, { requestsPerSecond: 10 });
  const subnetCooldownMs = duration(raw['subnetCooldown'], `${p}.subnetCooldown`, 600_000, errors);
  if (errors.length) throw new Error(errors.join('\n'));
  return {
    region: region as string,
    ...(typeof endpoint === 'string' ? { endpoint: endpoint.replace(/\/+$/, '') } : {}),
    ...call,
    subnetCooldownMs,
  };
}

/** Errors (each naming `classes.<class>.machine.<field>`) in an aws class's machine profile. */
export function validateAwsMachine(className: string, machine: unknown): string[] {
  return checkMachine(className, machine).errors;
}

export function parseAwsMachine(className: string, machine: unknown): AwsMachine {
  const { errors, value } = checkMachine(className, machine);
  if (errors.length || !value) throw new Error(errors.join('\n'));
  return value;
}

function checkMachine(className: string, raw: unknown): { errors: string[]; value?: AwsMachine } {
  const p = `classes.${className}.machine`;
  if (!isRecord(raw)) return { errors: [`${p}: expected a machine profile (instanceType, imageId, subnets...), got ${show(raw)}`] };
  const errors: string[] = [];
  for (const k of Object.keys(raw)) if (!MACHINE_KEYS.includes(k)) errors.push(`${p}.${k}: not a known field (known: ${MACHINE_KEYS.join(', ')})`);
  const instanceType = raw['instanceType'];
  if (typeof instanceType !== 'string' || !/^[a-z][a-z0-9-]*\.[a-z0-9]+$/.test(instanceType)) errors.push(`${p}.instanceType: expected an EC2 instance type like c6i.large, got ${show(instanceType)}`);
  else if (/\.metal$/.test(instanceType) && /^mac/.test(instanceType)) errors.push(`${p}.instanceType: ${instanceType} is a Mac instance type: use provider mac, which manages dedicated hosts`);
  const imageId = raw['imageId'];
  if (typeof imageId !== 'string' || !/^ami-[0-9a-f]{8,17}$/.test(imageId)) errors.push(`${p}.imageId: expected an AMI id like ami-0123456789abcdef0, got ${show(imageId)}`);
  const subnets = raw['subnets'];
  if (!Array.isArray(subnets) || subnets.length === 0 || !subnets.every((s) => typeof s === 'string' && /^subnet-[0-9a-f]{8,17}$/.test(s))) {
    errors.push(`${p}.subnets: expected a non-empty list of subnet ids (subnet-...) in preference order, got ${show(subnets)}`);
  }
  const sgs = raw['securityGroupIds'];
  if (!Array.isArray(sgs) || sgs.length === 0 || !sgs.every((s) => typeof s === 'string' && /^sg-[0-9a-f]{8,17}$/.test(s))) {
    errors.push(`${p}.securityGroupIds: expected a non-empty list of security group ids (sg-...) that allow SSH from the manager only, got ${show(sgs)}`);
  }
  const disk = raw['diskSizeGb'];
  if (disk !== undefined && (typeof disk !== 'number' || !Number.isInteger(disk) || disk < 8 || disk > 16384)) errors.push(`${p}.diskSizeGb: expected an integer 8..16384, got ${show(disk)}`);
  const username = raw['username'] ?? 'runner';
  if (typeof username !== 'string' || !/^[a-z_][a-z0-9_-]{0,31}$/.test(username)) errors.push(`${p}.username: expected a Linux user name, got ${show(username)}`);
  const tags = raw['tags'] ?? {};
  if (!isRecord(tags) || !Object.entries(tags).every(([k, v]) => typeof v === 'string' && k.length <= 128 && v.length <= 256 && !k.startsWith('aws:'))) {
    errors.push(`${p}.tags: expected a map of tag keys (<= 128 chars, not aws:*) to string values (<= 256 chars), got ${show(tags)}`);
  }
  if (errors.length) return { errors };
  return {
    errors,
    value: {
      instanceType: instanceType as string,
      imageId: imageId as string,
      subnets: [...(subnets as string[])],
      securityGroupIds: [...(sgs as string[])],
      ...(disk !== undefined ? { diskSizeGb: disk as number } : {}),
      username: username as string,
      tags: { ...(tags as Record<string, string>) },
    },
  };
}
