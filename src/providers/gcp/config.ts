// providers.gcp and classes.X.machine (gcp classes): validated here, every error naming its field.
import { duration, isRecord, parseCallSettings, show } from '../shared/config-fields.js';

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

const PROVIDER_KEYS = ['project', 'credentials', 'endpoint', 'network', 'subnetwork', 'requestsPerSecond', 'callTimeout', 'zoneCooldown', 'retries', 'retryBase', 'operationTimeout', 'pollInterval', 'bulkInsertMin'];

/** Validates `providers.gcp`; throws one Error listing every problem. */
export function parseGcpConfig(raw: unknown): GcpProviderConfig {
  const p = 'providers.gcp';
  const errors: string[] = [];
  if (!isRecord(raw)) throw new Error(`${p}: expected an object with at least project, got ${show(raw)}`);
  for (const k of Object.keys(raw)) if (!PROVIDER_KEYS.includes(k)) errors.push(`${p}.${k}: not a known field (known: ${PROVIDER_KEYS.join(', ')})`);
  const str = (k: string, required = false): string | undefined => {
    const v = raw[k];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'string' || v.trim() === '') {
      errors.push(`${p}.${k}: expected a non-empty string, got ${show(v)}`);
      return undefined;
    }
    return v.trim();
  };
  const project = str('project', true);
  if (project !== undefined && !/^[a-z][a-z0-9-:.]{4,62}$/.test(project)) errors.push(`${p}.project: expected a project id like my-project-123, got ${show(project)}`);
  const credentials = str('credentials');
  const endpoint = str('endpoint');
  if (endpoint !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(endpoint);
    } catch {
      /* reported below */
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || (url.pathname !== '/' && url.pathname !== '')) {
      errors.push(`${p}.endpoint: expected a URL like http://127.0.0.1:8085 or https://compute.example.internal, got ${show(endpoint)}`);
    }
  }
  const network = str('network');
  const subnetwork = str('subnetwork');
  const call = parseCallSettings(raw, p, errors, { requestsPerSecond: 20 });
  const zoneCooldownMs = duration(raw['zoneCooldown'], `${p}.zoneCooldown`, 600_000, errors);
  const operationTimeoutMs = duration(raw['operationTimeout'], `${p}.operationTimeout`, 600_000, errors);
  let bulkInsertMin = 8;
  if (raw['bulkInsertMin'] !== undefined) {
    const v = raw['bulkInsertMin'];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 2) errors.push(`${p}.bulkInsertMin: expected an integer >= 2, got ${show(v)}`);
    else bulkInsertMin = v;
  }
  if (errors.length > 0) throw new Error(errors.join('\n'));
  return {
    project: project!,
    ...(credentials ? { credentials } : {}),
    ...(endpoint ? { endpoint: endpoint.replace(/\/+$/, '') } : {}),
    ...(network ? { network } : {}),
    ...(subnetwork ? { subnetwork } : {}),
    ...call,
    zoneCooldownMs,
    operationTimeoutMs,
    bulkInsertMin,
  };
}

const MACHINE_KEYS = ['machineType', 'image', 'imageArch', 'diskSizeGb', 'diskType', 'zones', 'networkTags', 'labels', 'gpu', 'os', 'windowsAccess', 'username'];
const ZONE = /^[a-z]+-[a-z]+\d+-[a-z]$/;
const LABEL_KEY = /^[a-z][a-z0-9_-]{0,62}$/;
const LABEL_VALUE = /^[a-z0-9_-]{0,63}$/;
const IMAGE = /^(https:\/\/[^/]+\/compute\/v1\/)?projects\/[a-z][a-z0-9-.:]*\/global\/images\/(family\/)?[a-z][a-z0-9-]*$/;

/** Arm machine series on Compute Engine: Tau T2A, Axion C4A and N4A. */
export function isArmMachineType(machineType: string): boolean {
  return /^(t2a|c4a|n4a)-/.test(machineType);
}

/** Machine series that only take Hyperdisk boot disks. */
function hyperdiskOnly(machineType: string): boolean {
  return /^(c4|c4a|c4d|n4|n4a|x4|m4)-/.test(machineType);
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
  const p = `classes.${className}.machine`;
  const errors: string[] = [];
  if (!isRecord(raw)) return { errors: [`${p}: expected a machine profile (machineType, image, zones...), got ${show(raw)}`] };
  for (const k of Object.keys(raw)) if (!MACHINE_KEYS.includes(k)) errors.push(`${p}.${k}: not a known field (known: ${MACHINE_KEYS.join(', ')})`);

  const machineType = raw['machineType'];
  if (typeof machineType !== 'string' || !/^[a-z][a-z0-9-]*$/.test(machineType)) errors.push(`${p}.machineType: expected a machine type like n2d-standard-4, got ${show(machineType)}`);
  const image = raw['image'];
  if (typeof image !== 'string' || !IMAGE.test(image)) {
    errors.push(`${p}.image: expected projects/P/global/images/family/F or projects/P/global/images/NAME, got ${show(image)}`);
  }
  const imageArch = raw['imageArch'] ?? 'x86_64';
  if (imageArch !== 'x86_64' && imageArch !== 'arm64') errors.push(`${p}.imageArch: expected x86_64 or arm64, got ${show(imageArch)}`);
  else if (typeof machineType === 'string') {
    const arm = isArmMachineType(machineType);
    if (arm && imageArch !== 'arm64') errors.push(`${p}.imageArch: machine type ${machineType} is arm64: expected imageArch: arm64 and an arm64 image, got ${show(raw['imageArch'] ?? 'x86_64 (default)')}`);
    if (!arm && imageArch === 'arm64') errors.push(`${p}.imageArch: machine type ${machineType} is x86_64: expected imageArch: x86_64 (or an arm machine type such as t2a-/c4a-), got "arm64"`);
  }
  const diskSizeGb = raw['diskSizeGb'] ?? 50;
  if (typeof diskSizeGb !== 'number' || !Number.isInteger(diskSizeGb) || diskSizeGb < 10 || diskSizeGb > 65_536) errors.push(`${p}.diskSizeGb: expected an integer 10..65536, got ${show(diskSizeGb)}`);
  const defaultDisk = typeof machineType === 'string' && hyperdiskOnly(machineType) ? 'hyperdisk-balanced' : 'pd-balanced';
  const diskType = raw['diskType'] ?? defaultDisk;
  if (typeof diskType !== 'string' || !/^(pd|hyperdisk)-[a-z-]+$/.test(diskType)) errors.push(`${p}.diskType: expected a disk type like pd-balanced, pd-ssd or hyperdisk-balanced, got ${show(diskType)}`);
  else if (typeof machineType === 'string' && hyperdiskOnly(machineType) && diskType.startsWith('pd-')) errors.push(`${p}.diskType: machine type ${machineType} needs a Hyperdisk boot disk (e.g. hyperdisk-balanced), got ${show(diskType)}`);

  const zones = raw['zones'];
  if (!Array.isArray(zones) || zones.length === 0) errors.push(`${p}.zones: expected a non-empty list of zones in preference order, got ${show(zones)}`);
  else {
    zones.forEach((z, i) => {
      if (typeof z !== 'string' || !ZONE.test(z)) errors.push(`${p}.zones[${i}]: expected a zone like us-central1-a, got ${show(z)}`);
    });
    if (new Set(zones).size !== zones.length) errors.push(`${p}.zones: expected distinct zones, got ${show(zones)}`);
  }
  const networkTags = raw['networkTags'] ?? [];
  if (!Array.isArray(networkTags) || networkTags.some((t) => typeof t !== 'string' || !/^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/.test(t))) {
    errors.push(`${p}.networkTags: expected a list of network tags (lowercase letters, digits, dashes), got ${show(networkTags)}`);
  }
  const labels = raw['labels'] ?? {};
  if (!isRecord(labels)) errors.push(`${p}.labels: expected a mapping of label keys to values, got ${show(labels)}`);
  else {
    for (const [k, v] of Object.entries(labels)) {
      if (!LABEL_KEY.test(k)) errors.push(`${p}.labels.${k}: expected a label key of lowercase letters, digits, _ and - (starting with a letter, at most 63)`);
      else if (k.startsWith('runner-fleet-')) errors.push(`${p}.labels.${k}: runner-fleet-* labels are set by runner-fleet itself`);
      if (typeof v !== 'string' || !LABEL_VALUE.test(v)) errors.push(`${p}.labels.${k}: expected a label value of lowercase letters, digits, _ and - (at most 63), got ${show(v)}`);
    }
  }
  let gpu: GcpMachine['gpu'];
  if (raw['gpu'] !== undefined) {
    const g = raw['gpu'];
    if (!isRecord(g) || typeof g['type'] !== 'string' || !/^nvidia-[a-z0-9-]+$/.test(g['type'])) errors.push(`${p}.gpu.type: expected an accelerator type like nvidia-tesla-t4, got ${show(isRecord(g) ? g['type'] : g)}`);
    const count = isRecord(g) ? (g['count'] ?? 1) : 1;
    if (![1, 2, 4, 8].includes(count as number)) errors.push(`${p}.gpu.count: expected 1, 2, 4 or 8, got ${show(count)}`);
    if (isRecord(g)) for (const k of Object.keys(g)) if (k !== 'type' && k !== 'count') errors.push(`${p}.gpu.${k}: not a known field (known: type, count)`);
    if (isRecord(g) && typeof g['type'] === 'string') gpu = { type: g['type'], count: count as number };
    if (typeof machineType === 'string' && !/^n1-/.test(machineType)) errors.push(`${p}.gpu: attached GPUs need an N1 machine type (A2/G2/A3 types bundle theirs), got machineType ${machineType}`);
  }
  const os = raw['os'] ?? 'linux';
  if (os !== 'linux' && os !== 'windows') errors.push(`${p}.os: expected linux or windows, got ${show(os)}`);
  if (os === 'windows' && imageArch === 'arm64') errors.push(`${p}.os: Windows Server images on Compute Engine are x86_64 only, but imageArch is arm64`);
  const windowsAccess = raw['windowsAccess'] ?? 'ssh';
  if (windowsAccess !== 'ssh' && windowsAccess !== 'password') errors.push(`${p}.windowsAccess: expected ssh or password, got ${show(windowsAccess)}`);
  else if (raw['windowsAccess'] !== undefined && os !== 'windows') errors.push(`${p}.windowsAccess: only applies to os: windows`);
  const username = raw['username'] ?? 'runner';
  if (typeof username !== 'string' || !/^[a-z_][a-z0-9_-]{0,31}$/.test(username) || username === 'root') errors.push(`${p}.username: expected a login name (lowercase, not root), got ${show(username)}`);

  if (errors.length > 0) return { errors };
  return {
    errors,
    value: {
      machineType: machineType as string,
      image: image as string,
      imageArch: imageArch as ImageArch,
      diskSizeGb: diskSizeGb as number,
      diskType: diskType as string,
      zones: zones as string[],
      networkTags: networkTags as string[],
      labels: labels as Record<string, string>,
      ...(gpu ? { gpu } : {}),
      os: os as GcpMachine['os'],
      windowsAccess: windowsAccess as GcpMachine['windowsAccess'],
      username: username as string,
    },
  };
}
