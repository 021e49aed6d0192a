// providers.gcp and classes.X.machine (gcp classes): validated here, every error naming its field.
import { z } from 'zod';
import { callFields, callSettings, check, durationMs, endpointUrl, fields, intIn, isRecord, matching, parseOrThrow, show, type FieldError } from '../shared/config-fields.js';

export interface GcpProviderConfig {
  project: string;
  /** Path to a service-account JSON key; default: application default credentials. */
  credentials?: string;
  /** `http(s)://host[:port]`: the emulator or a private endpoint. */
  endpoint?: string;
  /** Network name or URL; default the project's `default` network. */
  network?: string;
  /** Subnetwork name (in the zone's region) or URL. */
  subnetwork?: string;
  /** Token-bucket rate for calls to this project (shared by every provider of the project in this process). */
  requestsPerSecond: number;
  /** Timeout of one API call. */
  callTimeoutMs: number;
  /** How long a zone is avoided after a stockout. */
  zoneCooldownMs: number;
  /** Retries of a retryable or rate-limited call (bounded, jittered exponential backoff). */
  retries: number;
  /** First backoff delay; rate-limited calls wait 4x longer. */
  retryBaseMs: number;
  /** Longest wait for a zone operation (insert, delete) to reach DONE. */
  operationTimeoutMs: number;
  /** Least time between two polls (one aggregatedList) of the shard's booting VMs. */
  pollIntervalMs: number;
  /**
   * Smallest batch created with one bulkInsert. A bulk-created VM still needs its own setLabels
   * and setMetadata (its VM label and key), so bulkInsert saves no calls; it pays off for large
   * scale-ups, as one operation placing the whole batch in one zone or none (minCount).
   */
  bulkInsertMin: number;
}

export type ImageArch = 'x86_64' | 'arm64';

export interface GcpMachine {
  machineType: string;
  image: string;
  imageArch: ImageArch;
  diskSizeGb: number;
  diskType: string;
  /** Preference order. */
  zones: string[];
  networkTags: string[];
  labels: Record<string, string>;
  gpu?: { type: string; count: number };
  os: 'linux' | 'windows';
  windowsAccess: 'ssh' | 'password';
  username: string;
}

const nonEmpty = z.string({ error: 'a non-empty string' }).trim().min(1, { error: 'a non-empty string' });

const providerSchema = fields(
  {
    project: nonEmpty.pipe(matching(/^[a-z][a-z0-9-:.]{4,62}$/, 'a project id like my-project-123')),
    credentials: nonEmpty.optional(),
    endpoint: endpointUrl('a URL like http://127.0.0.1:8085 or https://compute.example.internal', true).optional(),
    network: nonEmpty.optional(),
    subnetwork: nonEmpty.optional(),
    ...callFields({ requestsPerSecond: 20 }),
    zoneCooldown: durationMs().default(600_000),
    operationTimeout: durationMs().default(600_000),
    bulkInsertMin: intIn(2, Number.MAX_SAFE_INTEGER, 'an integer >= 2').default(8),
  },
  'an object with at least project',
);

/** Validates `providers.gcp`; throws one Error listing every problem. */
export function parseGcpConfig(raw: unknown): GcpProviderConfig {
  const v = parseOrThrow(providerSchema, raw, ['providers', 'gcp']);
  return {
    project: v.project,
    ...(v.credentials ? { credentials: v.credentials } : {}),
    ...(v.endpoint ? { endpoint: v.endpoint } : {}),
    ...(v.network ? { network: v.network } : {}),
    ...(v.subnetwork ? { subnetwork: v.subnetwork } : {}),
    ...callSettings(v),
    zoneCooldownMs: v.zoneCooldown,
    operationTimeoutMs: v.operationTimeout,
    bulkInsertMin: v.bulkInsertMin,
  };
}

const ZONE = /^[a-z]+-[a-z]+\d+-[a-z]$/;
const LABEL_KEY = /^[a-z][a-z0-9_-]{0,62}$/;
const LABEL_VALUE = /^[a-z0-9_-]{0,63}$/;
const IMAGE = /^(https:\/\/[^/]+\/compute\/v1\/)?projects\/[a-z][a-z0-9-.:]*\/global\/images\/(family\/)?[a-z][a-z0-9-]*$/;
const USER = /^[a-z_][a-z0-9_-]{0,31}$/;

/** Arm machine series on Compute Engine: Tau T2A, Axion C4A and N4A. */
export function isArmMachineType(machineType: string): boolean {
  return /^(t2a|c4a|n4a)-/.test(machineType);
}

/** Machine series that only take Hyperdisk boot disks. */
function hyperdiskOnly(machineType: string): boolean {
  return /^(c4|c4a|c4d|n4|n4a|x4|m4)-/.test(machineType);
}

const ZONES = 'a non-empty list of zones in preference order';
const TAGS = 'a list of network tags (lowercase letters, digits, dashes)';
const GPU_COUNT = '1, 2, 4 or 8';
const LOGIN = 'a login name (lowercase, not root)';

const machineSchema = fields(
  {
    machineType: matching(/^[a-z][a-z0-9-]*$/, 'a machine type like n2d-standard-4'),
    image: matching(IMAGE, 'projects/P/global/images/family/F or projects/P/global/images/NAME'),
    imageArch: z.enum(['x86_64', 'arm64'], { error: 'x86_64 or arm64' }).default('x86_64'),
    diskSizeGb: intIn(10, 65_536).default(50),
    // Default by machine series (hyperdisk-only series), filled in below.
    diskType: matching(/^(pd|hyperdisk)-[a-z-]+$/, 'a disk type like pd-balanced, pd-ssd or hyperdisk-balanced').optional(),
    zones: z.array(matching(ZONE, 'a zone like us-central1-a'), { error: ZONES }).min(1, { error: ZONES }),
    networkTags: z.array(matching(/^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/, TAGS), { error: TAGS }).default([]),
    labels: z
      .record(z.string(), matching(LABEL_VALUE, 'a label value of lowercase letters, digits, _ and - (at most 63)'), { error: 'a mapping of label keys to values' })
      .default({}),
    gpu: fields(
      {
        type: matching(/^nvidia-[a-z0-9-]+$/, 'an accelerator type like nvidia-tesla-t4'),
        count: intIn(1, 8, GPU_COUNT).refine((n) => [1, 2, 4, 8].includes(n), { error: GPU_COUNT }).default(1),
      },
      '{ type, count } like { type: nvidia-tesla-t4, count: 1 }',
    ).optional(),
    os: z.enum(['linux', 'windows'], { error: 'linux or windows' }).default('linux'),
    windowsAccess: z.enum(['ssh', 'password'], { error: 'ssh or password' }).default('ssh'),
    username: matching(USER, LOGIN).refine((u) => u !== 'root', { error: LOGIN }).default('runner'),
  },
  'a machine profile (machineType, image, zones...)',
);

/** Rules across a profile's fields, each checked once the fields it reads are well-formed. */
function crossMachine(raw: Record<string, unknown>): FieldError[] {
  const errors: FieldError[] = [];
  const machineType = typeof raw['machineType'] === 'string' ? raw['machineType'] : undefined;
  const imageArch = raw['imageArch'] ?? 'x86_64';
  if (machineType && (imageArch === 'x86_64' || imageArch === 'arm64')) {
    const arm = isArmMachineType(machineType);
    if (arm && imageArch !== 'arm64') errors.push({ path: ['imageArch'], message: `machine type ${machineType} is arm64: expected imageArch: arm64 and an arm64 image, got ${show(raw['imageArch'] ?? 'x86_64 (default)')}` });
    if (!arm && imageArch === 'arm64') errors.push({ path: ['imageArch'], message: `machine type ${machineType} is x86_64: expected imageArch: x86_64 (or an arm machine type such as t2a-/c4a-), got "arm64"` });
  }
  const diskType = raw['diskType'];
  if (machineType && hyperdiskOnly(machineType) && typeof diskType === 'string' && diskType.startsWith('pd-')) {
    errors.push({ path: ['diskType'], message: `machine type ${machineType} needs a Hyperdisk boot disk (e.g. hyperdisk-balanced), got ${show(diskType)}` });
  }
  const zones = raw['zones'];
  if (Array.isArray(zones) && new Set(zones).size !== zones.length) errors.push({ path: ['zones'], message: `expected distinct zones, got ${show(zones)}` });
  const labels = raw['labels'];
  if (isRecord(labels)) {
    for (const k of Object.keys(labels)) {
      if (!LABEL_KEY.test(k)) errors.push({ path: ['labels', k], message: 'expected a label key of lowercase letters, digits, _ and - (starting with a letter, at most 63)' });
      else if (k.startsWith('runner-fleet-')) errors.push({ path: ['labels', k], message: 'runner-fleet-* labels are set by runner-fleet itself' });
    }
  }
  if (raw['gpu'] !== undefined && machineType && !/^n1-/.test(machineType)) {
    errors.push({ path: ['gpu'], message: `attached GPUs need an N1 machine type (A2/G2/A3 types bundle theirs), got machineType ${machineType}` });
  }
  const os = raw['os'] ?? 'linux';
  if (os === 'windows' && imageArch === 'arm64') errors.push({ path: ['os'], message: 'Windows Server images on Compute Engine are x86_64 only, but imageArch is arm64' });
  if (raw['windowsAccess'] !== undefined && os !== 'windows' && (raw['windowsAccess'] === 'ssh' || raw['windowsAccess'] === 'password')) {
    errors.push({ path: ['windowsAccess'], message: 'only applies to os: windows' });
  }
  return errors;
}

/** Errors (each naming `classes.<class>.machine.<field>`) in a gcp class's machine profile; [] when valid. */
export function validateGcpMachine(className: string, machine: unknown): string[] {
  return checkMachine(className, machine).errors;
}

/** The typed machine profile; throws listing every problem. */
export function parseGcpMachine(className: string, machine: unknown): GcpMachine {
  const { errors, value } = checkMachine(className, machine);
  if (errors.length > 0 || !value) throw new Error(errors.join('\n'));
  return value;
}

function checkMachine(className: string, raw: unknown): { errors: string[]; value?: GcpMachine } {
  const { errors, value: v } = check(machineSchema, raw, ['classes', className, 'machine'], crossMachine);
  if (!v) return { errors };
  return {
    errors,
    value: {
      machineType: v.machineType,
      image: v.image,
      imageArch: v.imageArch,
      diskSizeGb: v.diskSizeGb,
      diskType: v.diskType ?? (hyperdiskOnly(v.machineType) ? 'hyperdisk-balanced' : 'pd-balanced'),
      zones: v.zones,
      networkTags: v.networkTags,
      labels: v.labels,
      ...(v.gpu ? { gpu: { type: v.gpu.type, count: v.gpu.count } } : {}),
      os: v.os,
      windowsAccess: v.windowsAccess,
      username: v.username,
    },
  };
}
