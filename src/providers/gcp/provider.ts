// Compute Engine provider: the imperative shell around the pure parts (config, insert-body,
// errors, zones, request-id). Every call goes through `call`: per-project token bucket, a
// timeout, and bounded jittered retries (p-retry) for retryable and rate-limited errors only.
import type { protos } from '@google-cloud/compute';
// The three clients we use, straight from their modules: the package index loads all ~100 v1
// clients (113 MiB heap with one client built, against 51 MiB this way; the package has no
// exports map, and ~6.15 is pinned). REST fallback is set in clientOptions, so no gRPC channel.
import { FirewallsClient } from '@google-cloud/compute/build/src/v1/firewalls_client.js';
import { InstancesClient } from '@google-cloud/compute/build/src/v1/instances_client.js';
import { ZoneOperationsClient } from '@google-cloud/compute/build/src/v1/zone_operations_client.js';
import { PassThroughClient } from 'google-auth-library';
import pRetry from 'p-retry';
import type { ClientOptions } from 'google-gax';
import type { Logger } from 'pino';
import {
  LABEL_SHARD,
  LABEL_VM,
  vmIdOfName,
  ProviderError,
  noTelemetry,
  overrideEndpoint,
  scopeZone,
  type ClassFinding,
  type CloudListing,
  type CloudTelemetry,
  type CloudVm,
  type CloudVmState,
  type ConnectInfo,
  type CreateResult,
  type CreatedVm,
  type GuestOs,
  type Provider,
  type ProviderCapabilities,
  type ProviderContext,
  type VmRef,
  type VmSpec,
} from '../provider.js';
import { parseGcpMachine, type GcpMachine, type GcpProviderConfig } from './config.js';
import { classifyError, isAlreadyExists, isStaleFingerprint } from './errors.js';
import { bulkProperties, instanceBody, vmMetadataItems } from './insert-body.js';
import { projectBucket, type TokenBucket } from '../shared/rate-limit.js';
import { requestId } from './request-id.js';
import { retrieveWindowsPassword } from './windows.js';
import { coolDown, nextUsableAt, usableZones } from '../shared/placement.js';
import { cloudRetryOptions } from '../shared/retry.js';
import { machineProfiles } from '../shared/config-fields.js';
import type { Cidr } from '../../isolation/cidr.js';
import { auditClasses, fromGceFirewall } from '../../isolation/firewall-audit.js';
import { sshFingerprint } from '../../isolation/keys.js';

type Instance = protos.google.cloud.compute.v1.IInstance;
type Operation = protos.google.cloud.compute.v1.IOperation;
type CallOpts = { timeout: number; retry: null };

/** Options for InstancesClient/ZoneOperationsClient: ADC by default, or the configured endpoint/key. */
export function clientOptions(cfg: Pick<GcpProviderConfig, 'project' | 'endpoint' | 'credentials'>): ClientOptions {
  const opts: ClientOptions = { projectId: cfg.project, fallback: true };
  if (cfg.credentials) opts.keyFilename = cfg.credentials;
  if (cfg.endpoint) {
    const url = new URL(cfg.endpoint);
    const http = url.protocol === 'http:';
    opts.apiEndpoint = url.hostname;
    opts.protocol = http ? 'http' : 'https';
    opts.port = url.port ? Number(url.port) : http ? 80 : 443;
    // Plain http is only ever an emulator on loopback: no credentials, no metadata-server lookup.
    // (gax's AnyAuthClient union omits PassThroughClient, which gax accepts at run time.)
    if (http && isLoopback(url.hostname)) opts.authClient = new PassThroughClient() as unknown as ClientOptions['authClient'];
  }
  return opts;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(host) || host === '[::1]' || host === '::1';
}

/** GCE status -> CloudVmState. A VM we are deleting that is stopping/stopped is `terminated`. */
export function vmState(status: string | null | undefined, deleting: boolean): CloudVmState {
  switch (status) {
    case 'PROVISIONING':
    case 'STAGING':
    case 'REPAIRING':
      return 'pending';
    case 'RUNNING':
      return 'running';
    case 'STOPPING':
    case 'SUSPENDING':
      return deleting ? 'terminated' : 'stopping';
    case 'TERMINATED':
    case 'SUSPENDED':
    case 'STOPPED':
      return deleting ? 'terminated' : 'stopped';
    default:
      return 'pending';
  }
}

/** GCE filter for instances carrying every label. */
export function labelFilter(labels: Record<string, string>): string {
  return Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `(labels.${k} = "${v.replace(/"/g, '\\"')}")`)
    .join(' ');
}

const zoneFromUrl = (u: string | null | undefined): string | undefined => (u ? u.split('/').pop() : undefined);

interface Seen {
  zone: string;
  os: GuestOs;
  username: string;
  /** Suspended (or suspending): `start` resumes it instead. Unknown until created or listed. */
  suspended?: boolean;
}

export interface GcpClients {
  instances: Pick<InstancesClient, 'insert' | 'bulkInsert' | 'delete' | 'get' | 'aggregatedListAsync' | 'setLabels' | 'setMetadata' | 'getSerialPortOutput' | 'stop' | 'start' | 'suspend' | 'resume' | 'close'> &
    Partial<Pick<InstancesClient, 'getGuestAttributes'>>;
  operations: Pick<ZoneOperationsClient, 'wait' | 'close'>;
  /** Read only, for the isolation audit. */
  firewalls?: Pick<FirewallsClient, 'list' | 'close'>;
}

export interface GcpStats {
  calls: Record<string, number>;
  retries: number;
  timeouts: number;
  stockouts: number;
  rateLimited: number;
  bulkInserts: number;
  bulkFallbacks: number;
  listCacheHits: number;
}

const LIST_CACHE_MS = 1000;

/** An aggregatedList answer: the instances, and the scopes (`zones/<zone>`) that did not answer. */
interface InstanceListing {
  instances: Instance[];
  unreachable: string[];
}

/** An aggregatedList answer that cannot be a real one: retried, and the VMs stay unknown. */
const malformedList = (why: string) => new ProviderError('retryable', `gcp instances.aggregatedList: malformed answer (${why}); the VMs are unknown, not gone`, { provider: 'gcp', operation: 'instances.aggregatedList' });

/** Shard label value and VM-name prefix (`rf-<shard>-`, pool.vmName) of a list filter. */
function ownedBy(filterLabels: Record<string, string>, fallbackShard: string): (i: Instance) => boolean {
  const prefix = `rf-${filterLabels[LABEL_SHARD] ?? fallbackShard}-`;
  // Job VMs carry their VM label; bulkInsert members get it just after the operation, and carry
  // our deterministic name meanwhile. Anything else with our labels is not ours to list or delete.
  return (i) => !!i.labels?.[LABEL_VM] || (i.name ?? '').startsWith(prefix);
}

/**
 * GCE counts its rate quotas per group of methods, each on its own ("you can achieve the maximum
 * quota in each group simultaneously": compute/docs/api-rate-limits): mutations, reads (get,
 * list) and operation reads. One bucket for all let a scale-up's queue of 1,000 setMetadata calls
 * hold back the list that finds its VMs running, so no VM got ready until the last key was set.
 */
type QuotaGroup = 'mutation' | 'read' | 'operation';

export function quotaGroup(method: string): QuotaGroup {
  if (method.startsWith('operations.') || method.startsWith('globalOperations.')) return 'operation';
  return /\.(get\w*|list|aggregatedList)$/.test(method) ? 'read' : 'mutation';
}

export class GcpProvider implements Provider {
  readonly name = 'gcp';
  readonly capabilities: ProviderCapabilities = { batchCreate: true, stopStart: true, suspend: true, gpu: true, windows: true, nestedVms: false };
  readonly stats: GcpStats = { calls: {}, retries: 0, timeouts: 0, stockouts: 0, rateLimited: 0, bulkInserts: 0, bulkFallbacks: 0, listCacheHits: 0 };
  private readonly clients: GcpClients;
  /** One token bucket per GCE rate-quota group (see quotaGroup). */
  private readonly buckets: Record<QuotaGroup, TokenBucket>;
  private readonly log: Logger;
  private readonly telemetry: CloudTelemetry;
  private cooldowns: ReadonlyMap<string, number> = new Map();
  /** What we learnt about each VM name (zone, OS, SSH port) from creates and lists. */
  private readonly seen = new Map<string, Seen>();
  private readonly shardOf = new Map<string, string>();
  private readonly deleting = new Set<string>();
  private readonly listCache = new Map<string, { at: number; result: Promise<InstanceListing> }>();

  constructor(
    readonly cfg: GcpProviderConfig,
    private readonly ctx: ProviderContext,
    deps: { clients?: GcpClients; now?: () => number } = {},
  ) {
    this.log = ctx.log;
    this.telemetry = ctx.telemetry ?? noTelemetry;
    this.now = deps.now ?? Date.now;
    const opts = clientOptions(cfg);
    this.clients = deps.clients ?? { instances: new InstancesClient(opts), operations: new ZoneOperationsClient(opts), firewalls: new FirewallsClient(opts) };
    this.pollIntervalMs = cfg.pollIntervalMs;
    const scope = `${cfg.endpoint ?? 'googleapis'}/${cfg.project}`;
    this.buckets = { mutation: projectBucket(`${scope}/mutation`, cfg.requestsPerSecond), read: projectBucket(`${scope}/read`, cfg.requestsPerSecond), operation: projectBucket(`${scope}/operation`, cfg.requestsPerSecond) };
  }

  private readonly now: () => number;
  readonly pollIntervalMs: number;

  /** Entries of the per-VM maps: bounded by the VMs that exist (a 24-hour run keeps flat memory). */
  tracked(): Record<string, number> {
    return { seen: this.seen.size, shardOf: this.shardOf.size, deleting: this.deleting.size, listCache: this.listCache.size };
  }

  /** Zones still cooling down after a stockout (zone -> until, ms). */
  zoneCooldowns(): ReadonlyMap<string, number> {
    return this.cooldowns;
  }

  // ---- the one path every cloud call takes ------------------------------------------------

  private async call<T>(method: string, zone: string | undefined, fn: (opts: CallOpts) => Promise<T>): Promise<T>;
  /** `longPoll`: the call may legitimately block (operations.wait): its timeout answers undefined, not an error. */
  private async call<T>(method: string, zone: string | undefined, fn: (opts: CallOpts) => Promise<T>, longPoll: true): Promise<T | undefined>;
  private async call<T>(method: string, zone: string | undefined, fn: (opts: CallOpts) => Promise<T>, longPoll = false): Promise<T | undefined> {
    const timeout = this.cfg.callTimeoutMs;
    return pRetry(
      async () => {
        await this.buckets[quotaGroup(method)].take();
        this.stats.calls[method] = (this.stats.calls[method] ?? 0) + 1;
        let timer: NodeJS.Timeout | undefined;
        const started = performance.now();
        let outcome = 'ok';
        try {
          // gax's own timeout does not bound every REST path: race a timer as well.
          return await Promise.race([
            fn({ timeout, retry: null }),
            new Promise<undefined>((resolve, reject) => {
              timer = setTimeout(() => {
                if (longPoll) {
                  outcome = 'long_poll_timeout';
                  return resolve(undefined);
                }
                this.stats.timeouts++;
                const e = new Error(`${method} timed out after ${timeout} ms`);
                e.name = 'TimeoutError';
                reject(e);
              }, timeout);
            }),
          ]);
        } catch (err) {
          const pe = classifyError(err, { operation: method, ...(zone ? { zone } : {}) });
          outcome = (err as Error)?.name === 'TimeoutError' ? 'timeout' : pe.kind;
          throw pe;
        } finally {
          clearTimeout(timer);
          this.telemetry.request(method, outcome, (performance.now() - started) / 1000);
        }
      },
      cloudRetryOptions({ cfg: this.cfg, log: this.log, context: { method, zone }, message: 'gcp call failed; retrying', stats: this.stats }),
    );
  }

  /** Waits for a zone operation to be DONE; throws its classified error. */
  private async waitOp(zone: string, op: Operation | null | undefined, what: string): Promise<Operation> {
    const end = this.now() + this.cfg.operationTimeoutMs;
    let cur = op ?? {};
    while (cur.status !== 'DONE') {
      if (!cur.name) throw new ProviderError('retryable', `gcp ${what} in ${zone}: no operation to wait for`, { provider: 'gcp', zone });
      if (this.now() > end) throw new ProviderError('retryable', `gcp ${what} in ${zone}: operation ${cur.name} not done after ${this.cfg.operationTimeoutMs} ms`, { provider: 'gcp', zone });
      const name = cur.name;
      // A long poll: GCE answers when the operation is done or after ~2 min; our timeout just polls again.
      const res = await this.call('operations.wait', zone, (o) => this.clients.operations.wait({ project: this.cfg.project, zone, operation: name }, o), true);
      cur = res?.[0] ?? cur;
    }
    if (cur.error?.errors?.length) throw classifyError(cur, { operation: what, zone });
    return cur;
  }

  private readonly machine = machineProfiles('gcp', parseGcpMachine);


  private remember(spec: VmSpec, machine: GcpMachine, zone: string): void {
    this.seen.set(spec.name, { zone, os: machine.os, username: machine.username, suspended: false });
    this.shardOf.set(spec.name, spec.labels[LABEL_SHARD] ?? spec.shard);
    this.deleting.delete(spec.name);
    this.listCache.clear();
  }

  // ---- create -----------------------------------------------------------------------------

  async create(spec: VmSpec): Promise<CreatedVm> {
    const machine = this.machine(spec);
    // Created before (in this process): never a second VM of that name in another zone.
    const known = this.seen.get(spec.name);
    if (known) {
      const existing = await this.getInstance(known.zone, spec.name);
      if (existing) return { vmId: spec.vmId, cloudId: String(existing.id ?? spec.name), zone: known.zone };
    }
    const zones = usableZones(machine.zones, this.cooldowns, this.now());
    if (zones.length === 0) {
      throw new ProviderError('stockout', `gcp create ${spec.name}: every zone of ${spec.className} (${machine.zones.join(', ')}) is cooling down after a stockout until ${new Date(nextUsableAt(machine.zones, this.cooldowns)).toISOString()}`, {
        provider: 'gcp',
        operation: 'create',
      });
    }
    let last: ProviderError | undefined;
    for (const zone of zones) {
      try {
        return await this.insertIn(spec, machine, zone);
      } catch (err) {
        const pe = classifyError(err, { operation: 'insert', zone });
        if (pe.kind !== 'stockout') throw pe;
        this.markStockout(zone, pe);
        last = pe;
      }
    }
    throw last!;
  }

  private markStockout(zone: string, err: ProviderError): void {
    this.stats.stockouts++;
    this.telemetry.stockout(zone);
    this.cooldowns = coolDown(this.cooldowns, zone, this.now(), this.cfg.zoneCooldownMs);
    this.log.warn({ zone, coolDownMs: this.cfg.zoneCooldownMs, err: err.message }, 'gcp zone stocked out; avoiding it');
  }

  private async insertIn(spec: VmSpec, machine: GcpMachine, zone: string): Promise<CreatedVm> {
    const body = instanceBody(spec, machine, this.cfg, zone);
    const rid = requestId(this.cfg.project, zone, spec.name, 'insert');
    try {
      const [lro] = await this.call('instances.insert', zone, (o) => this.clients.instances.insert({ project: this.cfg.project, zone, instanceResource: body, requestId: rid }, o));
      const done = await this.waitOp(zone, lro.latestResponse as Operation, `insert ${spec.name}`);
      this.remember(spec, machine, zone);
      const id = done.targetId ?? (await this.getInstance(zone, spec.name))?.id;
      return { vmId: spec.vmId, cloudId: String(id ?? spec.name), zone };
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      // Our deterministic name: the VM is ours if it carries our VM label.
      const existing = await this.getInstance(zone, spec.name);
      if (!existing) throw err;
      const owner = existing.labels?.[LABEL_VM];
      if (owner !== undefined && owner !== spec.vmId) {
        throw new ProviderError('fatal', `gcp insert ${spec.name} in ${zone}: the name is taken by VM ${owner}`, { provider: 'gcp', zone, operation: 'insert' });
      }
      this.remember(spec, machine, zone);
      return { vmId: spec.vmId, cloudId: String(existing.id ?? spec.name), zone };
    }
  }

  private async getInstance(zone: string, name: string): Promise<Instance | undefined> {
    try {
      const [inst] = await this.call('instances.get', zone, (o) => this.clients.instances.get({ project: this.cfg.project, zone, instance: name }, o));
      return inst;
    } catch (err) {
      if (err instanceof ProviderError && err.kind === 'notFound') return undefined;
      throw err;
    }
  }

  async createMany(specs: VmSpec[], onResult?: (r: CreateResult) => void): Promise<CreateResult[]> {
    const results = new Map<string, CreateResult>();
    const groups = new Map<string, VmSpec[]>();
    for (const s of specs) {
      const key = `${s.className}\0${JSON.stringify(s.machine)}\0${s.labels[LABEL_SHARD] ?? s.shard}`;
      groups.set(key, [...(groups.get(key) ?? []), s]);
    }
    await Promise.all(
      [...groups.values()].map(async (group) => {
        let rest = group;
        if (group.length >= this.cfg.bulkInsertMin && group.every((s) => !this.seen.has(s.name))) {
          try {
            for (const r of await this.bulkCreate(group, onResult)) results.set(r.ok ? r.vm.vmId : r.vmId, r);
            rest = group.filter((s) => !results.has(s.vmId));
          } catch (err) {
            this.stats.bulkFallbacks++;
            this.log.warn({ err: (err as Error).message, count: group.length }, 'gcp bulkInsert failed; creating one by one');
          }
        }
        await Promise.all(
          rest.map(async (s) => {
            let r: CreateResult;
            try {
              r = { ok: true, vm: await this.create(s) };
            } catch (err) {
              r = { ok: false, vmId: s.vmId, error: classifyError(err, { operation: 'create' }) };
            }
            results.set(s.vmId, r);
            onResult?.(r);
          }),
        );
      }),
    );
    return specs.map((s) => results.get(s.vmId)!);
  }

  /** One bulkInsert per zone for VMs of one class; then each VM gets its own VM label. */
  private async bulkCreate(group: VmSpec[], onResult?: (r: CreateResult) => void): Promise<CreateResult[]> {
    const machine = this.machine(group[0]!);
    const zones = usableZones(machine.zones, this.cooldowns, this.now());
    let zone: string | undefined;
    for (const z of zones) {
      const props = bulkProperties(group, machine, this.cfg, z);
      const perInstanceProperties = Object.fromEntries(group.map((s) => [s.name, { name: s.name }]));
      const rid = requestId(this.cfg.project, z, ...group.map((s) => s.name).sort(), 'bulkInsert');
      try {
        const [lro] = await this.call('instances.bulkInsert', z, (o) =>
          this.clients.instances.bulkInsert(
            { project: this.cfg.project, zone: z, requestId: rid, bulkInsertInstanceResourceResource: { count: group.length, minCount: group.length, instanceProperties: props, perInstanceProperties } },
            o,
          ),
        );
        await this.waitOp(z, lro.latestResponse as Operation, `bulkInsert of ${group.length}`);
        zone = z;
        break;
      } catch (err) {
        const pe = classifyError(err, { operation: 'bulkInsert', zone: z });
        if (pe.kind !== 'stockout') throw pe;
        this.markStockout(z, pe);
      }
    }
    if (!zone) throw new ProviderError('stockout', `gcp bulkInsert: no usable zone for ${group[0]!.className}`, { provider: 'gcp', operation: 'bulkInsert' });
    this.stats.bulkInserts++;
    for (const s of group) this.remember(s, machine, zone);
    const inZone = zone;
    // One list for the fingerprints of the whole batch, never a get per VM.
    const listed = new Map((await this.listInstances({ [LABEL_SHARD]: group[0]!.labels[LABEL_SHARD] ?? group[0]!.shard })).instances.map((i) => [i.name, i]));
    const results = await Promise.all(
      group.map(async (s): Promise<CreateResult> => {
        try {
          const inst = listed.get(s.name) ?? (await this.getInstance(inZone, s.name));
          if (!inst) throw new ProviderError('retryable', `gcp bulkInsert: ${s.name} missing after the operation`, { provider: 'gcp', zone: inZone });
          // The VM's own key (the shared body carried none). No per-VM label call: the name
          // (rf-<shard>-<vm id>) already identifies the VM, so a batch costs one call per VM, not two.
          if (machine.os === 'linux' || machine.windowsAccess === 'ssh') await this.setVmKey(inZone, s, machine, inst);
          const r: CreateResult = { ok: true, vm: { vmId: s.vmId, cloudId: String(inst.id ?? s.name), zone: inZone } };
          onResult?.(r);
          return r;
        } catch (err) {
          const r: CreateResult = { ok: false, vmId: s.vmId, error: classifyError(err, { operation: 'bulkInsert', zone: inZone }) };
          onResult?.(r);
          return r;
        }
      }),
    );
    this.listCache.clear(); // that list predates the labels just set
    return results;
  }

  /** Adds the VM's own key to its metadata; re-reads it when something else changed it meanwhile. */
  private async setVmKey(zone: string, spec: VmSpec, machine: GcpMachine, first: Instance): Promise<void> {
    const { project } = this.cfg;
    let inst: Instance | undefined = first;
    for (let attempt = 1; ; attempt++) {
      const items = vmMetadataItems(inst.metadata?.items ?? [], machine, spec.publicKey, spec.hostKey);
      try {
        const [lro] = await this.call('instances.setMetadata', zone, (o) =>
          this.clients.instances.setMetadata(
            { project, zone, instance: spec.name, requestId: requestId(project, zone, spec.name, 'setMetadata', String(attempt)), metadataResource: { items, fingerprint: inst!.metadata?.fingerprint ?? null } },
            o,
          ),
        );
        // Not waited for: a wait per VM doubled a scale-up's calls (1,000 VMs: 2,000 calls, 100 s
        // at 20 calls/s). The boot probe is the check: the VM's startup script waits for this key,
        // and the manager's SSH probe pins the host key it carries, so a setMetadata that failed
        // later leaves a VM that never becomes ready and is replaced at its boot timeout.
        const op = lro.latestResponse as Operation | undefined;
        if (op?.status === 'DONE' && op.error?.errors?.length) throw classifyError(op, { operation: `setMetadata ${spec.name}`, zone });
        return;
      } catch (err) {
        if (!isStaleFingerprint(err) || attempt >= 3) throw err;
        inst = await this.getInstance(zone, spec.name);
        if (!inst) throw new ProviderError('retryable', `gcp setMetadata ${spec.name}: the VM disappeared`, { provider: 'gcp', zone });
      }
    }
  }

  // ---- describe / list ----------------------------------------------------------------------

  /**
   * One aggregatedList per filter, shared for ~1 s by describe and list in the same tick. With
   * returnPartialSuccess GCE answers a zone it cannot reach with no instances and an UNREACHABLE
   * warning on that zone's scope: that zone goes to `unreachable`, never read as empty.
   */
  private listInstances(filterLabels: Record<string, string>): Promise<InstanceListing> {
    const filter = labelFilter(filterLabels);
    const hit = this.listCache.get(filter);
    if (hit && this.now() - hit.at < LIST_CACHE_MS) {
      this.stats.listCacheHits++;
      return hit.result;
    }
    const result = this.call('instances.aggregatedList', undefined, async (o): Promise<InstanceListing> => {
      const out: Instance[] = [];
      const unreachable = new Set<string>();
      const mentioned = new Set<string>();
      const req = { project: this.cfg.project, maxResults: 500, returnPartialSuccess: true, ...(filter ? { filter } : {}) };
      for await (const [scope, scoped] of this.clients.instances.aggregatedListAsync(req, { ...o, autoPaginate: false })) {
        const full = scope.startsWith('zones/') || scope.startsWith('regions/') ? scope : `zones/${scope}`;
        mentioned.add(full);
        if (scoped?.warning?.code === 'UNREACHABLE') unreachable.add(full);
        for (const i of scoped?.instances ?? []) {
          if (typeof i?.name !== 'string' || !i.name) throw malformedList(`an instance in ${full} without a name`);
          out.push(i);
        }
      }
      // GCE names every zone in its answer (an empty one with a warning). An answer naming none,
      // or not the zone of a VM we know, was not a real answer there: unknown, never "gone".
      if (mentioned.size === 0) throw malformedList('no zone in the answer');
      for (const s of this.seen.values()) if (!mentioned.has(`zones/${s.zone}`)) unreachable.add(`zones/${s.zone}`);
      for (const scope of unreachable) this.telemetry.partialList?.(scopeZone(scope));
      if (unreachable.size) this.log.warn({ unreachable: [...unreachable] }, 'gcp aggregatedList: zones did not answer; their VMs are unknown, not gone');
      // Whatever the server did with the filter, only exact label matches count.
      return { instances: out.filter((i) => Object.entries(filterLabels).every(([k, v]) => i.labels?.[k] === v)), unreachable: [...unreachable] };
    });
    for (const [f, e] of this.listCache) if (this.now() - e.at >= LIST_CACHE_MS) this.listCache.delete(f);
    this.listCache.set(filter, { at: this.now(), result });
    result.catch(() => this.listCache.delete(filter));
    return result;
  }

  private toCloudVm(i: Instance): CloudVm {
    const name = i.name ?? '';
    const zone = zoneFromUrl(i.zone);
    const labels = { ...(i.labels ?? {}) } as Record<string, string>;
    const items = i.metadata?.items ?? [];
    const item = (k: string) => items.find((x) => x.key === k)?.value ?? undefined;
    const prior = this.seen.get(name);
    const windows = item('enable-windows-ssh') !== undefined || item('windows-keys') !== undefined || (i.disks ?? []).some((d) => (d.guestOsFeatures ?? []).some((f) => f.type === 'WINDOWS'));
    const sshUser = item('ssh-keys')?.split(':')[0];
    if (zone) {
      this.seen.set(name, {
        zone,
        os: prior?.os ?? (windows ? 'windows' : 'linux'),
        username: prior?.username ?? sshUser ?? 'runner',
        suspended: i.status === 'SUSPENDED' || i.status === 'SUSPENDING',
      });
    }
    const ip = i.networkInterfaces?.[0]?.networkIP ?? undefined;
    const state = vmState(i.status, this.deleting.has(name));
    return {
      ...((labels[LABEL_VM] ?? vmIdOfName(name)) ? { vmId: labels[LABEL_VM] ?? vmIdOfName(name)! } : {}),
      name,
      cloudId: String(i.id ?? name),
      ...(zone ? { zone } : {}),
      state,
      ...(ip && state !== 'terminated' ? { internalIp: ip } : {}),
      labels,
    };
  }

  async describe(refs: VmRef[]): Promise<CloudListing> {
    if (refs.length === 0) return { vms: [], unreachable: [] };
    // One call per shard (normally exactly one): never one get per VM.
    const shards = new Set(refs.map((r) => this.shardOf.get(r.name) ?? this.ctx.shard));
    const lists = await Promise.all([...shards].map((s) => this.listInstances({ [LABEL_SHARD]: s })));
    const wanted = new Map(refs.map((r) => [r.name, r]));
    const byVm = new Map(refs.map((r) => [r.vmId, r]));
    const out: CloudVm[] = [];
    for (const i of lists.flatMap((l) => l.instances)) {
      const vmLabel = i.labels?.[LABEL_VM];
      const ref = (i.name ? wanted.get(i.name) : undefined) ?? (vmLabel ? byVm.get(vmLabel) : undefined);
      if (!ref) continue;
      if (ref.zone && zoneFromUrl(i.zone) !== ref.zone) continue;
      out.push(this.toCloudVm(i));
    }
    return { vms: out, unreachable: [...new Set(lists.flatMap((l) => l.unreachable))] };
  }

  async list(labels: Record<string, string>): Promise<CloudListing> {
    const { instances, unreachable } = await this.listInstances(labels);
    return { vms: instances.filter(ownedBy(labels, this.ctx.shard)).map((i) => this.toCloudVm(i)), unreachable };
  }

  // ---- delete / stop / start --------------------------------------------------------------------

  /**
   * The zone of each ref: from the ref, what we saw, or one list of the shard. `partial`: that
   * list missed zones, so a ref it did not find may still exist there.
   */
  private async zonesOf(refs: VmRef[]): Promise<{ zones: Map<string, string>; partial: string[] }> {
    const zones = new Map<string, string>();
    const unknown: VmRef[] = [];
    for (const r of refs) {
      const z = r.zone ?? this.seen.get(r.name)?.zone;
      if (z) zones.set(r.name, z);
      else unknown.push(r);
    }
    if (unknown.length === 0) return { zones, partial: [] };
    const listing = await this.describe(unknown);
    for (const vm of listing.vms) if (vm.zone) zones.set(vm.name, vm.zone);
    return { zones, partial: listing.unreachable };
  }

  /** Forget a VM that is gone: per-VM maps stay bounded by the VMs that exist. */
  private forget(name: string): void {
    this.seen.delete(name);
    this.shardOf.delete(name);
    this.deleting.delete(name);
  }

  async delete(refs: VmRef[]): Promise<void> {
    if (refs.length === 0) return;
    const { zones, partial } = await this.zonesOf(refs);
    const errors: ProviderError[] = [];
    await Promise.all(
      refs.map(async (r) => {
        const zone = zones.get(r.name);
        if (!zone) {
          // Absent from a partial list: it may live in a zone that did not answer. Not gone.
          if (partial.length) errors.push(new ProviderError('retryable', `gcp delete ${r.name}: not found, but ${partial.join(', ')} did not answer; its zone is unknown`, { provider: 'gcp', operation: 'delete' }));
          else this.forget(r.name); // absent from a complete list: already gone
          return;
        }
        this.deleting.add(r.name);
        try {
          const [lro] = await this.call('instances.delete', zone, (o) =>
            this.clients.instances.delete({ project: this.cfg.project, zone, instance: r.name, requestId: requestId(this.cfg.project, zone, r.name, 'delete') }, o),
          );
          await this.waitOp(zone, lro.latestResponse as Operation, `delete ${r.name}`);
          this.forget(r.name);
        } catch (err) {
          const pe = classifyError(err, { operation: 'delete', zone });
          if (pe.kind === 'notFound') this.forget(r.name);
          else errors.push(pe);
        }
      }),
    );
    this.listCache.clear();
    if (errors.length) throw errors.length === 1 ? errors[0]! : new ProviderError(errors[0]!.kind, `${errors.length} deletes failed; first: ${errors[0]!.message}`, { provider: 'gcp', operation: 'delete', cause: errors });
  }

  /** Stop (standby tier): the disk stays; a start boots the OS again. */
  async stop(refs: VmRef[]): Promise<void> {
    await this.lifecycle(refs, 'stop');
  }

  /** Suspend (standby tier): memory is kept on disk; a resume continues the booted OS. */
  async suspend(refs: VmRef[]): Promise<void> {
    await this.lifecycle(refs, 'suspend');
  }

  /** Start stopped VMs and resume suspended ones (GCE refuses `start` for a suspended VM). */
  async start(refs: VmRef[]): Promise<void> {
    const unknown = refs.filter((r) => this.seen.get(r.name)?.suspended === undefined);
    if (unknown.length) await this.describe(unknown); // one list tells which are suspended
    const suspended = refs.filter((r) => this.seen.get(r.name)?.suspended);
    await Promise.all([this.lifecycle(refs.filter((r) => !suspended.includes(r)), 'start'), this.lifecycle(suspended, 'resume')]);
  }

  private async lifecycle(refs: VmRef[], what: 'stop' | 'start' | 'suspend' | 'resume'): Promise<void> {
    if (refs.length === 0) return;
    const { zones, partial } = await this.zonesOf(refs);
    const { instances } = this.clients;
    await Promise.all(
      refs.map(async (r) => {
        const zone = zones.get(r.name);
        if (!zone && partial.length) throw new ProviderError('retryable', `gcp ${what} ${r.name}: not found, but ${partial.join(', ')} did not answer`, { provider: 'gcp', operation: what });
        if (!zone) throw new ProviderError('notFound', `gcp ${what} ${r.name}: no such VM`, { provider: 'gcp', operation: what });
        const req = { project: this.cfg.project, zone, instance: r.name, requestId: requestId(this.cfg.project, zone, r.name, what, String(this.now())) };
        const [lro] = await this.call(`instances.${what}`, zone, (o) =>
          what === 'stop' ? instances.stop(req, o) : what === 'start' ? instances.start(req, o) : what === 'suspend' ? instances.suspend(req, o) : instances.resume(req, o),
        );
        await this.waitOp(zone, lro.latestResponse as Operation, `${what} ${r.name}`);
        const seen = this.seen.get(r.name);
        if (seen) seen.suspended = what === 'suspend';
      }),
    );
    this.listCache.clear();
  }

  // ---- connect ----------------------------------------------------------------------------------

  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    if (!vm.internalIp) throw new Error(`gcp VM ${vm.name} has no internal address yet`);
    const s = this.seen.get(vm.name);
    const info: ConnectInfo = { protocol: 'ssh', os: s?.os ?? 'linux', host: vm.internalIp, port: 22, username: s?.username ?? 'runner', privateKey };
    return overrideEndpoint(this.ctx, { ...vm, internalIp: vm.internalIp, zone: vm.zone ?? s?.zone }, info);
  }

  /**
   * Windows VMs make their own host key; the guest agent publishes it in guest attributes
   * (`hostkeys/ssh-ed25519`), which only the VM itself can write. Linux VMs serve the manager's.
   */
  async hostKeyFingerprint(ref: VmRef): Promise<string | undefined> {
    const get = this.clients.instances.getGuestAttributes?.bind(this.clients.instances);
    if (this.seen.get(ref.name)?.os !== 'windows' || !get) return undefined;
    const { zones, partial } = await this.zonesOf([ref]);
    const zone = zones.get(ref.name);
    if (!zone) throw new ProviderError(partial.length ? 'retryable' : 'notFound', `gcp host key of ${ref.name}: VM not found`, { provider: 'gcp' });
    let items: { key?: string | null; value?: string | null }[] = [];
    try {
      const [out] = await this.call('instances.getGuestAttributes', zone, (o) => get({ project: this.cfg.project, zone, instance: ref.name, queryPath: 'hostkeys/' }, o));
      items = out.queryValue?.items ?? [];
    } catch (err) {
      if (classifyError(err, { operation: 'getGuestAttributes', zone }).kind !== 'notFound') throw err;
    }
    const value = items.find((i) => i.key === 'ssh-ed25519')?.value?.trim();
    if (!value) throw new ProviderError('retryable', `gcp host key of ${ref.name}: not published in guest attributes yet`, { provider: 'gcp', zone });
    // `ssh-ed25519 AAAA...` (the agent's form) or the bare base64 blob.
    const parts = value.split(/\s+/);
    return sshFingerprint(`ssh-ed25519 ${parts.length > 1 ? parts[1] : parts[0]}`);
  }

  /** Windows `windowsAccess: password`: reset and fetch the user's password (windows-keys flow). */
  async windowsPassword(ref: VmRef, userName: string, opts: { timeoutMs?: number; pollMs?: number } = {}): Promise<string> {
    const { zones, partial } = await this.zonesOf([ref]);
    const zone = zones.get(ref.name);
    if (!zone && partial.length) throw new ProviderError('retryable', `gcp windows password ${ref.name}: not found, but ${partial.join(', ')} did not answer`, { provider: 'gcp' });
    if (!zone) throw new ProviderError('notFound', `gcp windows password ${ref.name}: no such VM`, { provider: 'gcp' });
    const { project } = this.cfg;
    return retrieveWindowsPassword(
      {
        getMetadata: async () => {
          const inst = await this.getInstance(zone, ref.name);
          if (!inst) throw new ProviderError('notFound', `gcp windows password ${ref.name}: no such VM`, { provider: 'gcp', zone });
          return {
            items: (inst.metadata?.items ?? []).map((i) => ({ key: i.key ?? '', value: i.value ?? '' })),
            ...(inst.metadata?.fingerprint ? { fingerprint: inst.metadata.fingerprint } : {}),
          };
        },
        setMetadata: async (items, fingerprint) => {
          const [lro] = await this.call('instances.setMetadata', zone, (o) =>
            this.clients.instances.setMetadata({ project, zone, instance: ref.name, metadataResource: { items, ...(fingerprint ? { fingerprint } : {}) } }, o),
          );
          await this.waitOp(zone, lro.latestResponse as Operation, `setMetadata ${ref.name}`);
        },
        serialPort4: async (start) => {
          const [out] = await this.call('instances.getSerialPortOutput', zone, (o) => this.clients.instances.getSerialPortOutput({ project, zone, instance: ref.name, port: 4, start }, o));
          return { contents: out.contents ?? '', next: Number(out.next ?? start) };
        },
      },
      userName,
      opts,
    );
  }

  /** One `firewalls.list` of the project; the rules of the runner network, audited for each class's network tags. */
  async auditIsolation(managerRanges: Cidr[]): Promise<ClassFinding[]> {
    const firewalls = this.clients.firewalls;
    if (!firewalls) return [];
    const [all] = await this.call('firewalls.list', undefined, (o) => firewalls.list({ project: this.cfg.project }, o));
    const network = (this.cfg.network ?? 'default').split('/').pop()!;
    const rules = all.filter((f) => (f.network ?? '').split('/').pop() === network).map(fromGceFirewall).filter((r) => r !== null);
    const classes = Object.entries(this.ctx.classes ?? {}).map(([className, machine]) => ({ className, rules, vmTags: this.machine({ className, machine }).networkTags }));
    return auditClasses(classes, managerRanges, [22]);
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.clients.instances.close(), this.clients.operations.close(), this.clients.firewalls?.close()]);
  }
}
