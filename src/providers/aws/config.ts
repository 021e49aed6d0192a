// providers.aws and classes.X.machine (aws classes): validated here, every error naming its field.
import { z } from 'zod';
import { callFields, callSettings, check, durationMs, endpointUrl, fields, intIn, matching, parseOrThrow, type FieldError } from '../shared/config-fields.js';

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

const SUBNETS = 'a non-empty list of subnet ids (subnet-...) in preference order';
const GROUPS = 'a non-empty list of security group ids (sg-...) that allow SSH from the manager only';
const TAGS = 'a map of tag keys (<= 128 chars, not aws:*) to string values (<= 256 chars)';

/** The fields of `providers.aws`, shared with `providers.mac` (which adds its hosts' own). */
export const awsProviderFields = {
  region: matching(/^[a-z]{2}(-gov)?-[a-z]+-\d$/, 'an AWS region like us-east-1'),
  endpoint: endpointUrl('a URL like http://127.0.0.1:8086 or https://ec2.us-east-1.amazonaws.com', false).optional(),
  ...callFields({ requestsPerSecond: 10 }),
  subnetCooldown: durationMs().default(600_000),
};

const providerSchema = fields(awsProviderFields, 'an object with at least region');

/** The parsed fields of `awsProviderFields`, as the provider takes them. */
export function awsProviderConfig(v: z.output<z.ZodObject<typeof awsProviderFields>>): AwsProviderConfig {
  return { region: v.region, ...(v.endpoint ? { endpoint: v.endpoint } : {}), ...callSettings(v), subnetCooldownMs: v.subnetCooldown };
}

/** Validates `providers.aws`; throws one Error listing every problem. */
export function parseAwsConfig(raw: unknown): AwsProviderConfig {
  return awsProviderConfig(parseOrThrow(providerSchema, raw, ['providers', 'aws']));
}

const machineSchema = fields(
  {
    instanceType: matching(/^[a-z][a-z0-9-]*\.[a-z0-9]+$/, 'an EC2 instance type like c6i.large'),
    imageId: matching(/^ami-[0-9a-f]{8,17}$/, 'an AMI id like ami-0123456789abcdef0'),
    subnets: z.array(matching(/^subnet-[0-9a-f]{8,17}$/, 'a subnet id like subnet-0123abcd'), { error: SUBNETS }).min(1, { error: SUBNETS }),
    securityGroupIds: z.array(matching(/^sg-[0-9a-f]{8,17}$/, 'a security group id like sg-0123abcd'), { error: GROUPS }).min(1, { error: GROUPS }),
    diskSizeGb: intIn(8, 16_384).optional(),
    username: matching(/^[a-z_][a-z0-9_-]{0,31}$/, 'a Linux user name').default('runner'),
    tags: z
      .record(
        z.string().max(128, { error: TAGS }).refine((k) => !k.startsWith('aws:'), { error: TAGS }),
        z.string({ error: TAGS }).max(256, { error: TAGS }),
        { error: TAGS },
      )
      .default({}),
  },
  'a machine profile (instanceType, imageId, subnets...)',
);

function crossMachine(raw: Record<string, unknown>): FieldError[] {
  const t = raw['instanceType'];
  // Mac instances need dedicated hosts, which only the mac provider manages.
  if (typeof t === 'string' && /^mac.*\.metal$/.test(t)) return [{ path: ['instanceType'], message: `${t} is a Mac instance type: use provider mac, which manages dedicated hosts` }];
  return [];
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
  const { errors, value: v } = check(machineSchema, raw, ['classes', className, 'machine'], crossMachine);
  if (!v) return { errors };
  const { diskSizeGb, ...rest } = v;
  return { errors, value: { ...rest, ...(diskSizeGb !== undefined ? { diskSizeGb } : {}) } };
}
