// The provider plugin contract (docs/architecture.md "Provider contract").
// A provider knows its cloud and nothing else: no pools, no jobs, no GitLab.
// Every method is safe to retry: creation is keyed by the VM's deterministic
// name, deletion of a VM that is already gone succeeds.
import type { Cidr } from '../isolation/cidr.js';
import type { ClassFinding } from '../isolation/firewall-audit.js';

export type { ClassFinding };

/** Labels every cloud resource carries so the reconciler can find it. */
export const LABEL_SHARD = 'runner-fleet-shard';
export const LABEL_VM = 'runner-fleet-vm';

/** The VM id in a job VM's name (`rf-<shard>-<12 hex>`, see vmName): VMs of a bulk create carry no per-VM label. */
export function vmIdOfName(name: string): string | undefined {
  return /^rf-.+-([0-9a-f]{12})$/.exec(name)?.[1];
}

export type GuestOs = 'linux' | 'windows' | 'macos';

/** What the manager asks a provider to create. */
export interface VmSpec {
  /** Database row id of the VM: the idempotency key. */
  vmId: string;
  /** Deterministic cloud name derived from shard and vmId (GCE instance name, EC2 ClientToken). */
  name: string;
  shard: string;
  className: string;
  /** Always holds LABEL_SHARD and LABEL_VM; providers add them to the cloud resource verbatim. */
  labels: Record<string, string>;
  /** The VM's own ephemeral public key, OpenSSH format (`ssh-ed25519 AAAA... comment`). */
  publicKey: string;
  /**
   * The SSH host key the manager made for this VM (OpenSSH private key): the provider hands it
   * to the VM through the same channel as `publicKey`, and the manager pins its fingerprint.
   */
  hostKey?: string;
  /** Provider-specific machine profile from the class config (machine type, image, zones...). */
  machine: Record<string, unknown>;
  /** Cloud-side backstop: the VM deletes itself after this many seconds (max run duration). */
  maxRunSeconds: number;
}

/** Enough to find a VM in its cloud again. */
export interface VmRef {
  vmId: string;
  name: string;
  cloudId?: string | null;
  zone?: string | null;
  /**
   * When the VM's row was written (ms), just before its create: a provider that restarted since
   * the launch knows from it that the VM is young (EC2 answers NotFound for minutes after a launch).
   */
  createdAt?: number | null;
}

export interface CreatedVm {
  vmId: string;
  cloudId: string;
  zone?: string;
}

/**
 * A cloud's answer to a list or describe. A cloud that could not answer for a scope (a GCE zone
 * in a partial aggregatedList, a Mac host whose Tart did not answer) names it in `unreachable`:
 * the absence of a VM there means "unknown", never "gone".
 */
export interface CloudListing {
  vms: CloudVm[];
  /**
   * Scopes that did not answer: `zones/<zone>` (a GCE zone, an EC2 availability zone),
   * `regions/<region>`, or any other name (a page, the whole answer), which covers every VM.
   * Absence of a VM whose scope is named here (or of any VM whose zone is unknown, when this is
   * non-empty) is not evidence that the VM is gone.
   */
  unreachable: string[];
}

/** A complete answer: nothing unreachable. */
export const listingOf = (vms: CloudVm[], unreachable: string[] = []): CloudListing => ({ vms, unreachable });

/** The zone a scope names (`zones/us-east1-b` -> `us-east1-b`), for metric labels and logs. */
export function scopeZone(scope: string): string {
  return scope.startsWith('zones/') ? scope.slice('zones/'.length) : scope;
}

/** Whether the listing answered for this zone, so that absence there is evidence. */
export function completeFor(listing: Pick<CloudListing, 'unreachable'>, zone: string | null | undefined): boolean {
  return listing.unreachable.every((scope) => {
    if (!zone) return false; // a VM of unknown zone may be in any scope that did not answer
    if (scope.startsWith('zones/')) return scope.slice('zones/'.length) !== zone;
    // GCE zone us-central1-a is in region us-central1; EC2 AZ us-east-1a in region us-east-1.
    if (scope.startsWith('regions/')) return !zone.startsWith(scope.slice('regions/'.length));
    return false; // a page or the whole answer: covers every VM
  });
}

/**
 * "Known gone": the VM is absent from a listing that answered for its zone. Matched by VM id,
 * name or cloud id. A VM present in the listing as `terminated` is gone too.
 */
export function absentFrom(listing: CloudListing, vm: { vmId?: string | null; name: string; cloudId?: string | null; zone?: string | null }): boolean {
  const found = listing.vms.find((c) => (vm.vmId && c.vmId === vm.vmId) || c.name === vm.name || (vm.cloudId && c.cloudId === vm.cloudId));
  if (found) return found.state === 'terminated';
  return completeFor(listing, vm.zone);
}

export type CloudVmState = 'pending' | 'running' | 'stopping' | 'stopped' | 'terminated';

/** A VM as its cloud reports it. */
export interface CloudVm {
  /** From the LABEL_VM label; undefined when the resource carries none. */
  vmId?: string;
  name: string;
  cloudId: string;
  zone?: string;
  state: CloudVmState;
  /** Address on the internal network, once the cloud assigned one. */
  internalIp?: string;
  labels: Record<string, string>;
}

/** How the manager reaches a VM. Secrets in here never reach a log. */
export interface ConnectInfo {
  protocol: 'ssh' | 'winrm';
  os: GuestOs;
  host: string;
  port: number;
  username: string;
  privateKey?: string;
  password?: string;
  /** A host to tunnel through (macOS nested VMs behind their Mac host). */
  jump?: ConnectInfo;
  /**
   * The host key the target must show, `SHA256:<base64>` (ssh-keygen -lf). connectSsh refuses a
   * different key before sending anything; without it any key is accepted, so the manager's job
   * connections always set it (src/manager/host-key.ts).
   */
  hostKeyFingerprint?: string;
}

/** Where a test tool reaches an emulated VM's sshd instead of its address on port 22. */
export interface ConnectEndpoint {
  host: string;
  port: number;
}

/**
 * Test tools only (tests, benches, the demo), set through startShard options: never from config,
 * environment or cloud data, since whoever sets it chooses where a job's secrets go.
 */
export type ConnectOverride = (vm: { name: string; cloudId?: string | null | undefined; zone?: string | null | undefined; internalIp: string }) => ConnectEndpoint | undefined;

/** `info` aimed at the override's endpoint for `vm`, if the context has one that knows it. */
export function overrideEndpoint(ctx: Pick<ProviderContext, 'connectOverride'>, vm: Parameters<ConnectOverride>[0], info: ConnectInfo): ConnectInfo {
  const e = ctx.connectOverride?.(vm);
  return e ? { ...info, host: e.host, port: e.port } : info;
}

export interface ProviderCapabilities {
  batchCreate: boolean;
  stopStart: boolean;
  /** Standby by suspend (pool.standbyMode: suspend) as well as by stop. */
  suspend?: boolean;
  gpu: boolean;
  windows: boolean;
  nestedVms: boolean;
}

/** How a failed cloud call should be handled; see ProviderError. */
export type ProviderErrorKind =
  | 'retryable' // transient: back off and retry
  | 'rateLimited' // the cloud throttles us: back off harder
  | 'stockout' // no capacity in this zone: try the next zone
  | 'quota' // quota exhausted: stop growing the class
  | 'notFound' // the resource does not exist
  | 'fatal'; // a bad request: fail the VM with the cloud's message

export class ProviderError extends Error {
  constructor(
    readonly kind: ProviderErrorKind,
    message: string,
    readonly details: { provider?: string; operation?: string; zone?: string; cause?: unknown } = {},
  ) {
    super(message);
    this.name = 'ProviderError';
  }
}

export type CreateResult = { ok: true; vm: CreatedVm } | { ok: false; vmId: string; error: ProviderError };

export interface Provider {
  readonly name: string;
  readonly capabilities: ProviderCapabilities;
  /**
   * Least time between two describes of booting VMs (each is one list call for the whole
   * shard). Cloud read quotas are per project and shared by every shard in it; 0 = every tick.
   */
  readonly pollIntervalMs?: number;
  /** Create one VM; idempotent for the same spec.vmId/name. */
  create(spec: VmSpec): Promise<CreatedVm>;
  /**
   * Batch form; one result per spec, in order. Providers without a batch API loop over create.
   * `onResult`, if given, hears each VM's result as soon as it is known, before the batch ends
   * (gcp: a bulk-created VM once its own key is set), so its boot probe need not wait for the
   * slowest VM of the batch.
   */
  createMany(specs: VmSpec[], onResult?: (r: CreateResult) => void): Promise<CreateResult[]>;
  /**
   * State and internal address of many VMs, with a bounded number of cloud calls. VMs the cloud
   * does not know are absent; scopes that did not answer are named in `unreachable`.
   */
  describe(refs: VmRef[]): Promise<CloudListing>;
  /**
   * Every job VM this provider owns that carries all the given labels: VMs with LABEL_VM (or
   * unlabelled members of one of its own batch creates), never host instances or foreign
   * resources. Scopes that did not answer are named in `unreachable`.
   */
  list(labels: Record<string, string>): Promise<CloudListing>;
  /** Delete VMs; VMs already gone are not an error. */
  delete(refs: VmRef[]): Promise<void>;
  /** Stop VMs, keeping their disks (the standby tier); where `capabilities.stopStart`. */
  stop?(refs: VmRef[]): Promise<void>;
  /** Start stopped VMs again (resume from standby); suspended ones are resumed. */
  start?(refs: VmRef[]): Promise<void>;
  /** Suspend VMs: memory kept on disk, resumed by `start` faster than a stopped VM boots; where `capabilities.suspend`. */
  suspend?(refs: VmRef[]): Promise<void>;
  /**
   * For VMs that make their own SSH host key (images the manager cannot hand one to): its
   * fingerprint read through a channel only the VM writes (GCE guest attributes). undefined: the
   * VM serves the key the manager made (VmSpec.hostKey). Throws a retryable ProviderError while
   * the VM has not published it yet.
   */
  hostKeyFingerprint?(vm: VmRef): Promise<string | undefined>;
  /** How to reach a running VM, given its ephemeral private key. */
  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo;
  /**
   * For providers whose VMs live on capacity they manage themselves (Mac hosts): the class
   * wants to hold `wantedVms` VMs (running jobs + its warm target); answers the most VMs of the
   * class it can hold right now, which the pool uses as the class's `max` until it grows.
   */
  capacity?(className: string, wantedVms: number): number;
  /**
   * Isolation audit of the networks its classes' VMs live on: every ingress rule that lets
   * anything but the manager (`managerRanges`) reach a job VM, and access ports the manager
   * cannot reach. One read of the network's rules, whatever the number of classes.
   */
  auditIsolation?(managerRanges: Cidr[]): Promise<ClassFinding[]>;
  /** Release clients, timers and sockets. VMs stay. */
  close(): Promise<void>;
}

/**
 * Where a provider reports each cloud API call it makes (each attempt, retries included), so
 * SREs see the real request rate, errors and latency per API method. The shard binds it to
 * its Prometheus registry; providers must not depend on prom-client.
 */
export interface CloudTelemetry {
  /** `outcome`: `ok`, `timeout`, or the ProviderErrorKind the call failed with. */
  request(operation: string, outcome: string, seconds: number): void;
  /** A zone (GCE) or subnet/AZ (EC2) had no capacity for a VM. */
  stockout(zone: string): void;
  /** A list or describe came back without this scope (a zone that did not answer). */
  partialList?(zone: string): void;
  /** Mac hosts of a class by state (every state, zeros included). */
  hosts?(className: string, byState: Record<string, number>): void;
  /** Host-seconds that passed: billed (allocated) and with at least one nested VM (used). */
  hostSeconds?(className: string, allocated: number, used: number): void;
  /** A nested VM got its address: seconds from `tart clone` to that moment. */
  nestedVmReady?(className: string, seconds: number): void;
}

export const noTelemetry: CloudTelemetry = { request() {}, stockout() {} };

/** The shard's secret box (secrets.key): for provider-held credentials such as Mac host keys. */
/** Seals secrets a provider keeps in its resource records, each bound to `context` (the record, e.g. `host:<id>`). */
export interface SecretBox {
  seal(plain: string, context: string): string;
  /** null when sealed under another key or for another context. */
  open(sealed: string, context: string): string | null;
}

/** A provider-managed resource (a Mac host), as persisted. */
export interface ResourceRecord<D = Record<string, unknown>> {
  kind: string;
  id: string;
  state: string;
  data: D;
  createdAt: Date;
  updatedAt: Date;
}

/**
 * Persistence for resources a provider manages besides job VMs, scoped to one shard and
 * provider. The same rule as for VMs: write the row before the cloud call it guards, so a
 * restarted manager finds every resource it may have created.
 */
export interface ResourceStore {
  list<D = Record<string, unknown>>(kind: string): Promise<ResourceRecord<D>[]>;
  /** Insert a new resource; false when one with that id exists (idempotent retries). */
  insert(kind: string, id: string, state: string, data: Record<string, unknown>): Promise<boolean>;
  /** Compare-and-set: only from one of `from`; `data` is merged into the stored data. */
  transition(kind: string, id: string, from: string | string[], to: string, data?: Record<string, unknown>, detail?: string): Promise<boolean>;
  /** Merge into the data without a state change. */
  update(kind: string, id: string, data: Record<string, unknown>): Promise<void>;
}

export interface ProviderContext {
  shard: string;
  /** Persisted provider resources (absent where a provider runs without a database, e.g. tools). */
  resources?: ResourceStore;
  /** Directory for provider state on this machine (local provider sandboxes). */
  dataDir: string;
  log: import('pino').Logger;
  telemetry?: CloudTelemetry;
  /** The classes served by this provider and their machine profiles (Mac host fleets start from them). */
  classes?: Record<string, Record<string, unknown>>;
  secrets?: SecretBox;
  /** See ConnectOverride: emulated clouds in tests; absent in production. */
  connectOverride?: ConnectOverride;
}

export type ProviderFactory = (config: Record<string, unknown>, ctx: ProviderContext) => Provider | Promise<Provider>;

/**
 * Start-up checks of a provider's part of the shard config, run by the config loader so a bad
 * file fails before anything starts. Each error names its field path (`providers.gcp.project`,
 * `classes.<class>.machine.image`) and what was expected.
 */
export interface ProviderValidators {
  config?(raw: unknown): string[];
  machine?(className: string, machine: unknown): string[];
  /** The provider can suspend VMs (classes may set pool.standbyMode: suspend). */
  suspend?: boolean;
}

const registry = new Map<string, ProviderFactory>();
const validators = new Map<string, ProviderValidators>();

export function registerProvider(name: string, factory: ProviderFactory, checks: ProviderValidators = {}): void {
  registry.set(name, factory);
  validators.set(name, checks);
}

export function providerFactory(name: string): ProviderFactory | undefined {
  return registry.get(name);
}

export function providerValidators(name: string): ProviderValidators | undefined {
  return validators.get(name);
}

/** Runs a throwing parser and returns its message lines as errors. */
export function errorsOf(parse: () => unknown): string[] {
  try {
    parse();
    return [];
  } catch (err) {
    return String((err as Error).message).split('\n').filter(Boolean);
  }
}

export function registeredProviders(): string[] {
  return [...registry.keys()].sort();
}

/** Default createMany for providers without a batch API. */
export async function createEach(provider: Pick<Provider, 'create'>, specs: VmSpec[]): Promise<CreateResult[]> {
  return Promise.all(
    specs.map(async (spec): Promise<CreateResult> => {
      try {
        return { ok: true, vm: await provider.create(spec) };
      } catch (err) {
        const error = err instanceof ProviderError ? err : new ProviderError('fatal', String((err as Error)?.message ?? err), { cause: err });
        return { ok: false, vmId: spec.vmId, error };
      }
    }),
  );
}

/** A provider that can stop and start VMs, so a class on it can hold a standby tier. */
export function supportsStandby(p: Provider | undefined): boolean {
  return !!(p?.capabilities.stopStart && p.stop && p.start);
}
