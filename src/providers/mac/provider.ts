// The mac provider: a fresh macOS VM per job, cloned with Tart on a long-lived EC2 Mac host and
// reached through that host as an SSH jump. Hosts are the HostFleet's (persisted records, synced
// with EC2 on a timer); nested VMs live only on their host, so the host's `tart list` is their
// source of truth. A nested VM's cloud id is `<host record id>/<name>`: a restarted manager finds
// each VM's host from its database row, and VMs it never recorded by listing every host.
import { DescribeInstancesCommand, EC2Client, TerminateInstancesCommand, type Instance } from '@aws-sdk/client-ec2';
import type { Logger } from 'pino';
import { connectSsh, type SshSession } from '../../connect/ssh.js';
import { generateHostKey, generateVmKeyPair } from '../../isolation/keys.js';
import { ec2ClientConfig, vmState } from '../aws/provider.js';
import { ec2Call } from '../aws/call.js';
import { projectBucket, type TokenBucket } from '../shared/rate-limit.js';
import {
  LABEL_SHARD,
  LABEL_VM,
  noTelemetry,
  overrideEndpoint,
  ProviderError,
  type CloudListing,
  type CloudTelemetry,
  type CloudVm,
  type ConnectInfo,
  type CreatedVm,
  type CreateResult,
  type Provider,
  type ProviderCapabilities,
  type ProviderContext,
  type ResourceStore,
  type SecretBox,
  type VmRef,
  type VmSpec,
  createEach,
} from '../provider.js';
import { parseMacMachine, type MacMachine, type MacProviderConfig } from './config.js';
import { HostFleet, TAG_HOST_RECORD, type HostRecord } from './host-fleet.js';
import { freeSlots, pickHost, VMS_PER_HOST, type HostState, type HostView } from './host-pool.js';
import { TartCapacityError, TartClient, TartError } from './tart.js';

const isInstanceId = (id: string | null | undefined) => !!id && /^i-[0-9a-f]+$/.test(id);
const tagsOf = (i: Instance): Record<string, string> => Object.fromEntries((i.Tags ?? []).filter((t) => t.Key).map((t) => [t.Key!, t.Value ?? '']));

const HOST_STATES: HostState[] = ['allocating', 'launching', 'ready', 'busy', 'scrubbing', 'releasable', 'released'];

interface ClassFleet {
  machine: MacMachine;
  fleet: HostFleet;
}

export class MacProvider implements Provider {
  readonly name = 'mac';
  readonly capabilities: ProviderCapabilities = { batchCreate: false, stopStart: false, gpu: false, windows: false, nestedVms: true };
  readonly pollIntervalMs: number;
  private readonly client: EC2Client;
  private readonly bucket: TokenBucket;
  private readonly log: Logger;
  private readonly telemetry: CloudTelemetry;
  private readonly resources: ResourceStore;
  private readonly secrets: SecretBox;
  private readonly now: () => number;
  private readonly classes = new Map<string, ClassFleet>();
  /** Host records of every class, as of the last fleet tick. */
  private hosts: HostRecord[] = [];
  /** Our nested VMs per host record, as of the last `tart list` (names), plus the ones being made. */
  private readonly nested = new Map<string, Set<string>>();
  private readonly placing = new Map<string, string>();
  /** Every VM running on a host (ours or not), for Apple's two-VM limit. */
  private readonly runningOn = new Map<string, number>();
  private readonly ips = new Map<string, string>();
  private readonly cloneStarted = new Map<string, { at: number; className: string }>();
  private readonly wanted = new Map<string, number>();
  private readonly sessions = new Map<string, Promise<SshSession>>();
  /** Job instances (`perJob: instance`): their host record. */
  private readonly jobHosts = new Map<string, string>();
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
    this.resources = ctx.resources;
    this.secrets = ctx.secrets;
    this.log = ctx.log;
    this.telemetry = ctx.telemetry ?? noTelemetry;
    this.now = deps.now ?? Date.now;
    this.pollIntervalMs = cfg.pollIntervalMs;
    this.client = deps.client ?? new EC2Client(ec2ClientConfig(cfg));
    this.bucket = projectBucket(`aws/${cfg.endpoint ?? 'amazonaws'}/${cfg.region}`, cfg.requestsPerSecond);
    for (const [className, raw] of Object.entries(ctx.classes ?? {})) {
      const machine = parseMacMachine(className, raw);
      const fleet = new HostFleet({
        shard: ctx.shard, className, machine, ec2: this.client, resources: this.resources, log: this.log, now: this.now,
        call: (action, fn) => this.call(action, fn),
        probe: (rec) => this.probeHost(rec, machine),
        hostLaunchTimeoutMs: cfg.hostLaunchTimeoutMs,
        newHostKey: (id) => {
          const k = generateVmKeyPair(`runner-fleet-host-${id.slice(0, 8)}`);
          const hostKey = generateHostKey(`runner-fleet-host-${id.slice(0, 8)}-host`);
          return { publicKey: k.publicKey, sealedPrivateKey: this.secrets.seal(k.privateKey, `host:${id}`), sealedHostKey: this.secrets.seal(hostKey.privateKey, `sshhost:${id}`), hostKeyFingerprint: hostKey.fingerprint };
        },
        openSealed: (sealed, context) => this.secrets.open(sealed, context),
      });
      this.classes.set(className, { machine, fleet });
    }
    this.loaded = this.loadHosts();
    if (deps.autoTick !== false) this.schedule(0);
  }

  /** Entries of the per-VM maps: bounded by the VMs that exist (a 24-hour run keeps flat memory). */
  tracked(): Record<string, number> {
    const nested = [...this.nested.values()].reduce((n, s) => n + s.size, 0);
    return { nested, placing: this.placing.size, ips: this.ips.size, cloneStarted: this.cloneStarted.size, jobHosts: this.jobHosts.size };
  }

  private async loadHosts(): Promise<void> {
    const all = await Promise.all([...this.classes.values()].map((c) => c.fleet.records()));
    this.hosts = all.flat();
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
        for (const [className, c] of this.classes) {
          const usage = new Map<string, { vms: number; busy: number }>();
          for (const h of this.hosts) {
            const vms = this.slotsTaken(h.id);
            // A warm VM is not a job, but a host holding one is not retired under it either.
            usage.set(h.id, { vms, busy: vms });
          }
          const mine = await c.fleet.tick({ wantedSlots: this.wanted.get(className) ?? 0, nested: usage });
          recs.push(...mine);
          this.report(className, mine, elapsed);
        }
        this.hosts = recs;
        await Promise.all(recs.filter((h) => usable(h)).map((h) => this.refreshHost(h).catch((err) => this.log.warn({ host: h.id, err: (err as Error).message }, 'listing the VMs of a mac host failed'))));
        for (const id of [...this.sessions.keys()]) if (!recs.some((h) => h.id === id && usable(h))) this.dropSession(id);
        // Hosts that left the fleet take their per-host entries with them.
        for (const m of [this.nested, this.runningOn]) for (const id of [...m.keys()]) if (!recs.some((h) => h.id === id)) m.delete(id);
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
      if (this.slotsTaken(h.id) > 0 || h.state === 'busy') used += elapsed;
    }
    this.telemetry.hosts?.(className, byState);
    this.telemetry.hostSeconds?.(className, allocated, used);
  }

  private slotsTaken(hostId: string): number {
    let placing = 0;
    for (const h of this.placing.values()) if (h === hostId) placing++;
    return Math.max(this.nested.get(hostId)?.size ?? 0, this.runningOn.get(hostId) ?? 0) + placing;
  }

  private async refreshHost(h: HostRecord): Promise<void> {
    const vms = await this.withTart(h, (t) => t.list());
    const prefix = `rf-${this.ctx.shard}-`;
    this.nested.set(h.id, new Set(vms.filter((v) => v.name.startsWith(prefix)).map((v) => v.name)));
    this.runningOn.set(h.id, vms.filter((v) => v.running).length);
  }

  // ---- EC2 calls (the host fleet's) -----------------------------------------------------------

  private call<T>(action: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return ec2Call({ provider: 'mac', cfg: this.cfg, bucket: this.bucket, telemetry: this.telemetry, log: this.log }, action, undefined, fn);
  }

  // ---- host SSH -------------------------------------------------------------------------------

  private machineOf(className: string): MacMachine {
    const c = this.classes.get(className);
    if (!c) throw new ProviderError('fatal', `classes.${className}: not a mac class of this shard`, { provider: 'mac' });
    return c.machine;
  }

  /** How the manager logs in to a host's macOS instance (the jump for its nested VMs). */
  hostConnectInfo(h: HostRecord, machine = this.machineOf(h.data.className)): ConnectInfo {
    const key = h.data.hostKeySealed ? this.secrets.open(h.data.hostKeySealed, `host:${h.id}`) : null;
    if (!h.data.privateIp) throw new ProviderError('retryable', `mac host ${h.id} has no instance address (state ${h.state})`, { provider: 'mac' });
    if (!key) throw new ProviderError('fatal', `mac host ${h.id}: its SSH key is unreadable with the current secrets.key`, { provider: 'mac' });
    // Pinned to the host key the manager made for the instance; records made before host keys
    // were pinned have none and are trusted as the cloud gave them until their next relaunch.
    const pin = h.data.sshHostKeyFingerprint ? { hostKeyFingerprint: h.data.sshHostKeyFingerprint } : {};
    const info: ConnectInfo = { protocol: 'ssh', os: 'macos', host: h.data.privateIp, port: 22, username: machine.hostUsername, privateKey: key, ...pin };
    return overrideEndpoint(this.ctx, { name: h.id, cloudId: h.data.instanceId, internalIp: h.data.privateIp }, info);
  }

  private async probeHost(rec: HostRecord, machine: MacMachine): Promise<boolean> {
    try {
      const s = await connectSsh(this.hostConnectInfo(rec, machine), { timeoutMs: 10_000 });
      try {
        return (await s.exec('tart list --format json', { signal: AbortSignal.timeout(30_000) })).exitCode === 0;
      } finally {
        s.close();
      }
    } catch (err) {
      this.log.debug({ host: rec.id, err: (err as Error).message }, 'mac host not reachable yet');
      return false;
    }
  }

  private session(h: HostRecord): Promise<SshSession> {
    let s = this.sessions.get(h.id);
    if (!s) {
      s = connectSsh(this.hostConnectInfo(h), { timeoutMs: 15_000 });
      this.sessions.set(h.id, s);
      s.then(
        (sess) => sess.once('close', () => this.sessions.get(h.id) === s && this.sessions.delete(h.id)),
        () => this.sessions.get(h.id) === s && this.sessions.delete(h.id),
      );
    }
    return s;
  }

  private dropSession(id: string): void {
    const s = this.sessions.get(id);
    this.sessions.delete(id);
    void s?.then((sess) => sess.close(), () => {});
  }

  /** Tart on the host, over a cached SSH session; one reconnect when the session died. */
  private async withTart<T>(h: HostRecord, fn: (t: TartClient) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let sess: SshSession;
      try {
        sess = await this.session(h);
      } catch (err) {
        this.dropSession(h.id);
        throw new ProviderError('retryable', `mac host ${h.id} (${h.data.privateIp}) not reachable over SSH: ${(err as Error).message}`, { provider: 'mac', cause: err });
      }
      try {
        return await fn(new TartClient(sess, { timeoutMs: 60_000 }));
      } catch (err) {
        if (err instanceof TartError && /not connected|closed|No response|ECONNRESET/i.test(err.message) && attempt === 0) {
          this.dropSession(h.id);
          continue;
        }
        throw err;
      }
    }
  }

  // ---- nested VMs -----------------------------------------------------------------------------

  private hostById(id: string | undefined): HostRecord | undefined {
    return id ? this.hosts.find((h) => h.id === id) : undefined;
  }

  /** The host a VM is on: from its cloud id, else from what the hosts listed. */
  private hostOf(ref: Pick<VmRef, 'name' | 'cloudId'>): HostRecord | undefined {
    const fromId = this.hostById(ref.cloudId?.split('/')[0]);
    if (fromId) return fromId;
    for (const [hostId, names] of this.nested) if (names.has(ref.name)) return this.hostById(hostId);
    return this.hostById(this.placing.get(ref.name));
  }

  capacity(className: string, wantedVms: number): number {
    this.wanted.set(className, Math.max(0, wantedVms));
    let n = 0;
    for (const h of this.hosts) {
      if (h.data.className !== className) continue;
      if (h.state === 'ready' || h.state === 'busy') n += this.machineOf(className).perJob === 'instance' ? 1 : VMS_PER_HOST;
    }
    // VMs of this class on hosts that are going away still count against the class.
    return n;
  }

  async create(spec: VmSpec): Promise<CreatedVm> {
    await this.loaded;
    const machine = this.machineOf(spec.className);
    if (machine.perJob === 'instance') return this.createInstance(spec);
    const existing = this.hostOf(spec);
    const host = existing ?? this.pick(spec.className);
    if (!host) throw new ProviderError('stockout', `no free macOS VM slot on the ${spec.className} hosts (${this.hosts.filter((h) => h.data.className === spec.className && usable(h)).length} usable, at ${VMS_PER_HOST} VMs each)`, { provider: 'mac', operation: 'create' });
    this.placing.set(spec.name, host.id);
    const started = this.now();
    try {
      await this.withTart(host, async (tart) => {
        const present = (await tart.list()).find((v) => v.name === spec.name);
        if (!present) await tart.clone(machine.vm.image, spec.name);
        if (!present && (machine.vm.cpu || machine.vm.memoryMb)) await tart.set(spec.name, machine.vm);
        await tart.installKey(spec.name, spec.publicKey, spec.hostKey);
        if (!present?.running) await tart.start(spec.name);
      });
    } catch (err) {
      // Leave nothing half-made: the slot frees for the next try.
      await this.withTart(host, (t) => t.delete(spec.name)).catch(() => {});
      if (err instanceof TartCapacityError) {
        this.runningOn.set(host.id, VMS_PER_HOST);
        throw new ProviderError('stockout', `mac host ${host.id} already runs ${VMS_PER_HOST} VMs: ${err.message}`, { provider: 'mac', operation: 'create', zone: host.data.zone });
      }
      if (err instanceof ProviderError) throw err;
      throw new ProviderError('fatal', (err as Error).message, { provider: 'mac', operation: 'create', cause: err });
    } finally {
      this.placing.delete(spec.name);
    }
    const set = this.nested.get(host.id) ?? new Set<string>();
    set.add(spec.name);
    this.nested.set(host.id, set);
    this.cloneStarted.set(spec.name, { at: started, className: spec.className });
    this.log.info({ vm: spec.vmId, host: host.id, hostId: host.data.hostId }, 'nested macOS VM started');
    return { vmId: spec.vmId, cloudId: `${host.id}/${spec.name}`, zone: host.data.zone };
  }

  /** `perJob: instance`: a whole Mac instance for the job on a free host. */
  private async createInstance(spec: VmSpec): Promise<CreatedVm> {
    const c = this.classes.get(spec.className)!;
    const taken = new Set(this.placing.values());
    const host = this.hosts.find((h) => h.data.className === spec.className && h.state === 'ready' && !taken.has(h.id));
    if (!host) throw new ProviderError('stockout', `no free ${spec.className} host (each runs one job instance, then scrubs)`, { provider: 'mac', operation: 'create' });
    this.placing.set(spec.name, host.id);
    try {
      const instanceId = await c.fleet.launchJob(host, spec);
      host.state = 'busy';
      return { vmId: spec.vmId, cloudId: instanceId, zone: host.data.zone };
    } finally {
      this.placing.delete(spec.name);
    }
  }

  private get hasInstanceClasses(): boolean {
    return [...this.classes.values()].some((c) => c.machine.perJob === 'instance');
  }

  /** Job instances (`perJob: instance`) of this shard, optionally only these VMs: one DescribeInstances. */
  private async jobInstances(vmIds?: string[]): Promise<CloudVm[]> {
    if (!this.hasInstanceClasses || (vmIds && vmIds.length === 0)) return [];
    const out = await this.call('DescribeInstances', (abortSignal) =>
      this.client.send(
        new DescribeInstancesCommand({
          Filters: [
            { Name: `tag:${LABEL_SHARD}`, Values: [this.ctx.shard] },
            { Name: 'tag-key', Values: [TAG_HOST_RECORD] },
            vmIds ? { Name: `tag:${LABEL_VM}`, Values: vmIds } : { Name: 'tag-key', Values: [LABEL_VM] },
          ],
        }),
        { abortSignal },
      ),
    );
    const vms: CloudVm[] = [];
    for (const r of out.Reservations ?? []) {
      for (const i of r.Instances ?? []) {
        const tags = tagsOf(i);
        if (vmState(i.State?.Name) !== 'terminated') {
          this.jobHosts.set(i.InstanceId!, tags[TAG_HOST_RECORD] ?? '');
        }
        vms.push({
          vmId: tags[LABEL_VM], name: tags['Name'] ?? i.InstanceId!, cloudId: i.InstanceId!, state: vmState(i.State?.Name), labels: tags,
          ...(i.Placement?.AvailabilityZone ? { zone: i.Placement.AvailabilityZone } : {}),
          ...(i.PrivateIpAddress ? { internalIp: i.PrivateIpAddress } : {}),
        });
      }
    }
    return vms.filter((v) => v.state !== 'terminated' || !vmIds);
  }

  private pick(className: string): HostRecord | undefined {
    const views: HostView[] = this.hosts
      .filter((h) => h.data.className === className && (h.state === 'ready' || h.state === 'busy') && h.data.privateIp)
      .map((h) => ({ id: h.id, state: 'ready', availabilityZone: h.data.zone, allocatedAt: h.data.allocatedAt ?? 0, nestedVms: this.slotsTaken(h.id), busyVms: 0 }));
    const v = pickHost(views);
    return v && freeSlots(v) > 0 ? this.hostById(v.id) : undefined;
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
    const out: CloudVm[] = (await this.jobInstances(refs.filter((r) => !r.cloudId || isInstanceId(r.cloudId)).map((r) => r.vmId))).filter((v) => v.state !== 'terminated');
    const byHost = new Map<string, VmRef[]>();
    for (const r of refs) {
      if (isInstanceId(r.cloudId)) continue;
      const h = this.hostOf(r);
      if (h) byHost.set(h.id, [...(byHost.get(h.id) ?? []), r]);
    }
    for (const [hostId, rs] of byHost) {
      const h = this.hostById(hostId)!;
      if (!usable(h)) continue; // the host is gone: so are its VMs
      await this.withTart(h, async (tart) => {
        const listed = new Map((await tart.list()).map((v) => [v.name, v]));
        for (const r of rs) {
          const v = listed.get(r.name);
          if (!v) continue;
          let ip = this.ips.get(r.name);
          if (v.running && !ip) {
            ip = await tart.ip(r.name, 1).catch(() => undefined);
            if (ip) {
              this.ips.set(r.name, ip);
              const c = this.cloneStarted.get(r.name);
              if (c) this.telemetry.nestedVmReady?.(c.className, (this.now() - c.at) / 1000);
              this.cloneStarted.delete(r.name);
            }
          }
          out.push({ vmId: r.vmId, name: r.name, cloudId: `${h.id}/${r.name}`, zone: h.data.zone, state: v.running ? 'running' : 'stopped', ...(ip && v.running ? { internalIp: ip } : {}), labels: this.labelsOf(r.name) });
        }
      }).catch((err: unknown) => this.hostUnanswered(h, err, unreachable));
    }
    return { vms: out, unreachable: [...unreachable] };
  }

  /** A host's Tart did not answer: its zone's VMs are unknown for this answer. */
  private hostUnanswered(h: HostRecord, err: unknown, unreachable: Set<string>): void {
    const scope = `zones/${h.data.zone}`;
    this.log.warn({ host: h.id, zone: h.data.zone, err: (err as Error).message }, 'mac host did not answer; its VMs are unknown, not gone');
    if (!unreachable.has(scope)) this.telemetry.partialList?.(h.data.zone);
    unreachable.add(scope);
  }

  private labelsOf(name: string): Record<string, string> {
    const prefix = `rf-${this.ctx.shard}-`;
    return name.startsWith(prefix) ? { [LABEL_SHARD]: this.ctx.shard, [LABEL_VM]: name.slice(prefix.length) } : {};
  }

  /** Every nested VM of this shard on every usable host (one `tart list` each). */
  async list(labels: Record<string, string>): Promise<CloudListing> {
    await this.loaded;
    if (labels[LABEL_SHARD] !== undefined && labels[LABEL_SHARD] !== this.ctx.shard) return { vms: [], unreachable: [] };
    const out: CloudVm[] = (await this.jobInstances()).filter((v) => v.state !== 'terminated' && Object.entries(labels).every(([k, val]) => v.labels[k] === val));
    const unreachable = new Set<string>();
    for (const h of this.hosts.filter(usable)) {
      try {
        await this.refreshHost(h);
      } catch (err) {
        this.hostUnanswered(h, err, unreachable);
        continue;
      }
      for (const name of this.nested.get(h.id) ?? []) {
        const l = this.labelsOf(name);
        if (Object.entries(labels).every(([k, v]) => l[k] === v)) {
          const ip = this.ips.get(name);
          out.push({ vmId: l[LABEL_VM], name, cloudId: `${h.id}/${name}`, zone: h.data.zone, state: 'running', ...(ip ? { internalIp: ip } : {}), labels: l });
        }
      }
    }
    return { vms: out, unreachable: [...unreachable] };
  }

  async delete(refs: VmRef[]): Promise<void> {
    await this.loaded;
    const unplaced = refs.filter((r) => !r.cloudId);
    const found = new Map((await this.jobInstances(unplaced.map((r) => r.vmId))).map((v) => [v.vmId, v.cloudId]));
    const instanceIds = [...refs.filter((r) => isInstanceId(r.cloudId)).map((r) => r.cloudId!), ...unplaced.flatMap((r) => (found.has(r.vmId) ? [found.get(r.vmId)!] : []))];
    if (instanceIds.length) {
      // The host scrubs afterwards; the fleet sees it and frees the host when EC2 does.
      await this.call('TerminateInstances', (abortSignal) => this.client.send(new TerminateInstancesCommand({ InstanceIds: instanceIds }), { abortSignal })).catch((err: unknown) => {
        if (!(err instanceof ProviderError && err.kind === 'notFound')) throw err;
      });
      for (const id of instanceIds) {
        this.jobHosts.delete(id);
      }
    }
    for (const r of refs) {
      if (isInstanceId(r.cloudId) || found.has(r.vmId)) continue;
      const h = this.hostOf(r);
      this.ips.delete(r.name);
      this.cloneStarted.delete(r.name);
      if (!h || !usable(h)) continue; // no host, or a host that scrubs: the VM went with it
      await this.withTart(h, (t) => t.delete(r.name));
      this.nested.get(h.id)?.delete(r.name);
      this.runningOn.set(h.id, Math.max(0, (this.runningOn.get(h.id) ?? 1) - 1));
    }
  }

  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    if (isInstanceId(vm.cloudId)) {
      const h = this.hostById(this.jobHosts.get(vm.cloudId!));
      const machine = h ? this.machineOf(h.data.className) : [...this.classes.values()].find((c) => c.machine.perJob === 'instance')?.machine;
      if (!machine) throw new ProviderError('notFound', `no mac class runs job instances (VM ${vm.name})`, { provider: 'mac' });
      const info: ConnectInfo = { protocol: 'ssh', os: 'macos', host: vm.internalIp!, port: 22, username: machine.hostUsername, privateKey };
      return overrideEndpoint(this.ctx, { ...vm, internalIp: vm.internalIp! }, info);
    }
    const h = this.hostOf(vm);
    if (!h) throw new ProviderError('notFound', `no mac host known for VM ${vm.name}`, { provider: 'mac' });
    const machine = this.machineOf(h.data.className);
    if (!vm.internalIp) throw new ProviderError('retryable', `VM ${vm.name} has no address yet`, { provider: 'mac' });
    return { protocol: 'ssh', os: 'macos', host: vm.internalIp, port: machine.vm.sshPort, username: machine.vm.username, privateKey, jump: this.hostConnectInfo(h, machine) };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.ticking?.catch(() => {});
    for (const id of [...this.sessions.keys()]) this.dropSession(id);
    this.client.destroy();
  }
}

/** A host whose macOS instance is up and whose Tart the manager may use. */
function usable(h: HostRecord): boolean {
  return (h.state === 'ready' || h.state === 'busy') && !!h.data.privateIp;
}
