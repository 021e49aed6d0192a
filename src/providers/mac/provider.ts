// The mac provider: macOS job VMs on long-lived EC2 Mac dedicated hosts. This module is the one
// Provider the registry sees; it owns the host fleets (persisted records, synced with EC2 on a
// timer) and hands each VM to its mode: a nested Tart VM per job (nested-vms.ts, cloud id
// `<host record id>/<name>`) or a whole Mac instance per job (job-instances.ts, cloud id
// `i-...`). A restarted manager finds each VM's host from its database row, and VMs it never
// recorded by listing every host.
import { EC2Client } from '@aws-sdk/client-ec2';
import type { Logger } from 'pino';
import { generateHostKey, generateVmKeyPair } from '../../isolation/keys.js';
import { ec2ClientConfig } from '../aws/provider.js';
import { ec2Call } from '../aws/call.js';
import { projectBucket, type TokenBucket } from '../shared/rate-limit.js';
import {
  LABEL_SHARD,
  noTelemetry,
  type CloudListing,
  type CloudTelemetry,
  type CloudVm,
  type ConnectInfo,
  type CreatedVm,
  type CreateResult,
  type Provider,
  type ProviderCapabilities,
  type ProviderContext,
  type SecretBox,
  type VmRef,
  type VmSpec,
  createEach,
} from '../provider.js';
import { parseMacMachine, type MacProviderConfig } from './config.js';
import { HostFleet, type HostRecord } from './host-fleet.js';
import { VMS_PER_HOST, type HostState } from './host-pool.js';
import { HostShell } from './host-shell.js';
import { MacHosts, usable, type ClassFleet } from './hosts.js';
import { JobInstances } from './job-instances.js';
import { NestedVms } from './nested-vms.js';

/** A job instance's cloud id is an EC2 instance id; a nested VM's names its host record. */
const isInstanceId = (id: string | null | undefined) => !!id && /^i-[0-9a-f]+$/.test(id);

const HOST_STATES: HostState[] = ['allocating', 'launching', 'ready', 'busy', 'scrubbing', 'releasable', 'released'];

export class MacProvider implements Provider {
  readonly name = 'mac';
  readonly capabilities: ProviderCapabilities = { batchCreate: false, stopStart: false, gpu: false, windows: false, nestedVms: true };
  readonly pollIntervalMs: number;
  private readonly client: EC2Client;
  private readonly bucket: TokenBucket;
  private readonly log: Logger;
  private readonly telemetry: CloudTelemetry;
  private readonly secrets: SecretBox;
  private readonly now: () => number;
  private readonly hosts: MacHosts;
  private readonly shell: HostShell;
  private readonly nestedVms: NestedVms;
  private readonly jobInstances: JobInstances;
  private readonly wanted = new Map<string, number>();
  private lastTick = 0;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | null = null;
  private closed = false;
  readonly loaded: Promise<void>;

  constructor(
    readonly cfg: MacProviderConfig,
    private readonly ctx: ProviderContext,
    deps: { client?: EC2Client; now?: () => number; autoTick?: boolean } = {},
  ) {
    if (!ctx.resources) throw new Error('providers.mac: needs the shard database (host records)');
    if (!ctx.secrets) throw new Error('providers.mac: needs the shard secrets key (host SSH keys)');
    const resources = ctx.resources;
    this.secrets = ctx.secrets;
    this.log = ctx.log;
    this.telemetry = ctx.telemetry ?? noTelemetry;
    this.now = deps.now ?? Date.now;
    this.pollIntervalMs = cfg.pollIntervalMs;
    this.client = deps.client ?? new EC2Client(ec2ClientConfig(cfg));
    this.bucket = projectBucket(`aws/${cfg.endpoint ?? 'amazonaws'}/${cfg.region}`, cfg.requestsPerSecond);
    const classes = new Map<string, ClassFleet>();
    this.hosts = new MacHosts(classes);
    this.shell = new HostShell({ hosts: this.hosts, secrets: this.secrets, ctx, log: this.log });
    for (const [className, raw] of Object.entries(ctx.classes ?? {})) {
      const machine = parseMacMachine(className, raw);
      const fleet = new HostFleet({
        shard: ctx.shard, className, machine, ec2: this.client, resources, log: this.log, now: this.now,
        call: (action, fn) => this.call(action, fn),
        probe: (rec) => this.shell.probe(rec, machine),
        hostLaunchTimeoutMs: cfg.hostLaunchTimeoutMs,
        newHostKey: (id) => {
          const k = generateVmKeyPair(`runner-fleet-host-${id.slice(0, 8)}`);
          const hostKey = generateHostKey(`runner-fleet-host-${id.slice(0, 8)}-host`);
          return { publicKey: k.publicKey, sealedPrivateKey: this.secrets.seal(k.privateKey, `host:${id}`), sealedHostKey: this.secrets.seal(hostKey.privateKey, `sshhost:${id}`), hostKeyFingerprint: hostKey.fingerprint };
        },
        openSealed: (sealed, context) => this.secrets.open(sealed, context),
      });
      classes.set(className, { machine, fleet });
    }
    this.nestedVms = new NestedVms({ shard: ctx.shard, hosts: this.hosts, shell: this.shell, telemetry: this.telemetry, log: this.log, now: this.now });
    this.jobInstances = new JobInstances({ shard: ctx.shard, hosts: this.hosts, client: this.client, call: (action, fn) => this.call(action, fn), ctx });
    this.loaded = this.loadHosts();
    if (deps.autoTick !== false) this.schedule(0);
  }

  /** Entries of the per-VM maps: bounded by the VMs that exist (a 24-hour run keeps flat memory). */
  tracked(): Record<string, number> {
    const n = this.nestedVms.tracked();
    return { nested: n['nested']!, placing: this.hosts.placing.size, ips: n['ips']!, cloneStarted: n['cloneStarted']!, ...this.jobInstances.tracked() };
  }

  private async loadHosts(): Promise<void> {
    const all = await Promise.all([...this.hosts.classes.values()].map((c) => c.fleet.records()));
    this.hosts.records = all.flat();
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      void this.tick()
        .catch((err) => this.log.warn({ err }, 'mac host fleet tick failed'))
        .finally(() => this.schedule(this.cfg.hostPollIntervalMs));
    }, ms);
  }

  /** One round for every class: sync and plan hosts, then list each usable host's VMs. */
  tick(): Promise<void> {
    this.ticking ??= (async () => {
      try {
        await this.loaded;
        const started = this.now();
        const elapsed = this.lastTick ? (started - this.lastTick) / 1000 : 0;
        this.lastTick = started;
        const recs: HostRecord[] = [];
        for (const [className, c] of this.hosts.classes) {
          const usage = new Map<string, { vms: number; busy: number }>();
          for (const h of this.hosts.records) {
            const vms = this.nestedVms.slotsTaken(h.id);
            // A warm VM is not a job, but a host holding one is not retired under it either.
            usage.set(h.id, { vms, busy: vms });
          }
          const mine = await c.fleet.tick({ wantedSlots: this.wanted.get(className) ?? 0, nested: usage });
          recs.push(...mine);
          this.report(className, mine, elapsed);
        }
        this.hosts.records = recs;
        await Promise.all(recs.filter(usable).map((h) => this.nestedVms.refresh(h).catch((err) => this.log.warn({ host: h.id, err: (err as Error).message }, 'listing the VMs of a mac host failed'))));
        this.shell.retain((id) => recs.some((h) => h.id === id && usable(h)));
        this.nestedVms.retainHosts(recs);
      } finally {
        this.ticking = null;
      }
    })();
    return this.ticking;
  }

  private report(className: string, recs: HostRecord[], elapsed: number): void {
    const byState = Object.fromEntries(HOST_STATES.filter((s) => s !== 'released').map((s) => [s, 0]));
    let allocated = 0;
    let used = 0;
    for (const h of recs) {
      if (h.state === 'released') continue;
      byState[h.state] = (byState[h.state] ?? 0) + 1;
      if (h.data.hostId) allocated += elapsed;
      if (this.nestedVms.slotsTaken(h.id) > 0 || h.state === 'busy') used += elapsed;
    }
    this.telemetry.hosts?.(className, byState);
    this.telemetry.hostSeconds?.(className, allocated, used);
  }

  /** EC2 calls of the host fleets and job instances. */
  private call<T>(action: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return ec2Call({ provider: 'mac', cfg: this.cfg, bucket: this.bucket, telemetry: this.telemetry, log: this.log }, action, undefined, fn);
  }

  capacity(className: string, wantedVms: number): number {
    this.wanted.set(className, Math.max(0, wantedVms));
    let n = 0;
    for (const h of this.hosts.records) {
      if (h.data.className !== className) continue;
      if (h.state === 'ready' || h.state === 'busy') n += this.hosts.machineOf(className).perJob === 'instance' ? 1 : VMS_PER_HOST;
    }
    // VMs of this class on hosts that are going away still count against the class.
    return n;
  }

  async create(spec: VmSpec): Promise<CreatedVm> {
    await this.loaded;
    const machine = this.hosts.machineOf(spec.className);
    if (machine.perJob === 'instance') return this.jobInstances.create(spec, this.hosts.classes.get(spec.className)!.fleet);
    return this.nestedVms.create(spec, machine);
  }

  createMany(specs: VmSpec[]): Promise<CreateResult[]> {
    return createEach(this, specs);
  }

  /**
   * Job instances with one DescribeInstances; nested VMs with one `tart list` per host. A host
   * whose Tart does not answer makes its zone `unreachable`: its VMs are unknown, not gone.
   */
  async describe(refs: VmRef[]): Promise<CloudListing> {
    await this.loaded;
    const unreachable = new Set<string>();
    // A ref without a cloud id may be either: a job instance is found by its VM tag.
    const instances = (await this.jobInstances.find(refs.filter((r) => !r.cloudId || isInstanceId(r.cloudId)).map((r) => r.vmId))).filter((v) => v.state !== 'terminated');
    const nested = await this.nestedVms.describe(refs.filter((r) => !isInstanceId(r.cloudId)), unreachable);
    return { vms: [...instances, ...nested], unreachable: [...unreachable] };
  }

  /** Every job VM of this shard with these labels: job instances, and nested VMs on every usable host. */
  async list(labels: Record<string, string>): Promise<CloudListing> {
    await this.loaded;
    if (labels[LABEL_SHARD] !== undefined && labels[LABEL_SHARD] !== this.ctx.shard) return { vms: [], unreachable: [] };
    const matches = (v: CloudVm) => Object.entries(labels).every(([k, val]) => v.labels[k] === val);
    const instances = (await this.jobInstances.find()).filter((v) => v.state !== 'terminated' && matches(v));
    const unreachable = new Set<string>();
    const nested = await this.nestedVms.list(labels, unreachable);
    return { vms: [...instances, ...nested], unreachable: [...unreachable] };
  }

  async delete(refs: VmRef[]): Promise<void> {
    await this.loaded;
    // Refs without a cloud id (the create's answer was lost) may be job instances: look them up.
    const unplaced = refs.filter((r) => !r.cloudId);
    const found = new Map((await this.jobInstances.find(unplaced.map((r) => r.vmId))).map((v) => [v.vmId, v.cloudId]));
    await this.jobInstances.delete([...refs.filter((r) => isInstanceId(r.cloudId)).map((r) => r.cloudId!), ...unplaced.flatMap((r) => (found.has(r.vmId) ? [found.get(r.vmId)!] : []))]);
    await this.nestedVms.delete(refs.filter((r) => !isInstanceId(r.cloudId) && !found.has(r.vmId)));
  }

  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    return isInstanceId(vm.cloudId) ? this.jobInstances.connectInfo(vm, privateKey) : this.nestedVms.connectInfo(vm, privateKey);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.ticking?.catch(() => {});
    this.shell.close();
    this.client.destroy();
  }
}
