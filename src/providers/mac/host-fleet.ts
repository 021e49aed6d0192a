// The Mac dedicated-host fleet of one class: persisted host records (ProviderContext.resources),
// synced each tick with one DescribeHosts and one DescribeInstances, planned by the pure
// host-pool policy, and acted on write-ahead: a record's new state is stored before the EC2 call
// it guards, and every call is idempotent (ClientToken = the record id), so a manager killed at
// any point finds its hosts again and never allocates one twice.
import { randomUUID } from 'node:crypto';
import {
  AllocateHostsCommand,
  DescribeHostsCommand,
  DescribeInstancesCommand,
  ReleaseHostsCommand,
  RunInstancesCommand,
  TerminateInstancesCommand,
  type EC2Client,
  type Host,
  type Instance,
} from '@aws-sdk/client-ec2';
import type { Logger } from 'pino';
import { LABEL_SHARD, ProviderError, type ResourceStore } from '../provider.js';
import type { MacMachine } from './config.js';
import { planHosts, VMS_PER_HOST, type HostState, type HostView } from './host-pool.js';
import { macHostUserData } from './user-data.js';
import { TAG_HOST_RECORD } from '../aws/run-input.js';

/** Tag on hosts and their instances: the host record's id (also the ClientToken of both). */
export { TAG_HOST_RECORD };

export const HOST_KIND = 'mac_host';

export interface HostData {
  className: string;
  zone: string;
  subnet: string;
  instanceType: string;
  hostId?: string;
  allocatedAt?: number;
  instanceId?: string | null;
  privateIp?: string | null;
  launchStartedAt?: number;
  /** The manager's key for this host's instance: public half in user data, private half sealed. */
  hostPublicKey?: string;
  /** null once the instance is gone (scrubbing, released): nothing logs in with it any more. */
  hostKeySealed?: string | null;
  /** The SSH host key the manager made for the host's instance (sealed; null once the instance is gone) and its pinned fingerprint. */
  sshHostKeySealed?: string | null;
  sshHostKeyFingerprint?: string;
  [key: string]: unknown;
}

export interface HostRecord {
  id: string;
  state: HostState;
  data: HostData;
}

export interface HostFleetDeps {
  shard: string;
  className: string;
  machine: MacMachine;
  ec2: EC2Client;
  resources: ResourceStore;
  log: Logger;
  now: () => number;
  /** Every EC2 call goes through the provider's call path (rate limit, timeout, retries, metrics). */
  call<T>(action: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  /** Whether the host's macOS instance answers over SSH (Tart usable). */
  probe(rec: HostRecord): Promise<boolean>;
  hostLaunchTimeoutMs: number;
  /** A fresh key pair for a host instance (private half sealed with the shard's secrets key). */
  newHostKey?(recordId: string): { publicKey: string; sealedPrivateKey: string; sealedHostKey?: string; hostKeyFingerprint?: string };
  /** Opens a sealed host key (for the user data of an idempotent relaunch); null when unreadable. */
  openSealed?(sealed: string, context: string): string | null;
}

/** A host marked busy for a job instance that EC2 never shows within this long is free again. */
const JOB_LAUNCH_GRACE_MS = 2 * 60_000;


export class HostFleet {
  constructor(private readonly d: HostFleetDeps) {}

  async records(): Promise<HostRecord[]> {
    const all = await this.d.resources.list<HostData>(HOST_KIND);
    return all.filter((r) => r.data.className === this.d.className).map((r) => ({ id: r.id, state: r.state as HostState, data: r.data }));
  }

  /**
   * One round: sync records with EC2, plan, act. `nested` gives each host record's nested VMs
   * (all, and those running a job); `wantedSlots` is what the class wants to hold.
   */
  async tick(input: { wantedSlots: number; nested: ReadonlyMap<string, { vms: number; busy: number }> }): Promise<HostRecord[]> {
    const { shard } = this.d;
    const [hostsOut, instOut] = await Promise.all([
      this.d.call('DescribeHosts', (abortSignal) => this.d.ec2.send(new DescribeHostsCommand({ Filter: [{ Name: `tag:${LABEL_SHARD}`, Values: [shard] }] }), { abortSignal })),
      this.d.call('DescribeInstances', (abortSignal) =>
        this.d.ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${LABEL_SHARD}`, Values: [shard] }, { Name: 'tag-key', Values: [TAG_HOST_RECORD] }] }), { abortSignal }),
      ),
    ]);
    const cloudHosts = new Map<string, Host>();
    for (const h of hostsOut.Hosts ?? []) {
      const rid = h.Tags?.find((t) => t.Key === TAG_HOST_RECORD)?.Value;
      if (rid) cloudHosts.set(rid, h);
    }
    const cloudInstances = new Map<string, Instance>();
    for (const r of instOut.Reservations ?? []) {
      for (const i of r.Instances ?? []) {
        const rid = i.Tags?.find((t) => t.Key === TAG_HOST_RECORD)?.Value;
        if (rid && i.State?.Name !== 'terminated') cloudInstances.set(rid, i);
      }
    }
    for (const rec of await this.records()) await this.sync(rec, cloudHosts.get(rec.id), cloudInstances.get(rec.id), input.nested.get(rec.id));

    const recs = await this.records();
    const plan = planHosts({
      hosts: recs.map((r): HostView => ({
        id: r.id,
        state: r.state,
        availabilityZone: r.data.zone,
        allocatedAt: r.data.allocatedAt ?? this.d.now(),
        nestedVms: input.nested.get(r.id)?.vms ?? 0,
        busyVms: input.nested.get(r.id)?.busy ?? 0,
      })),
      config: { minHosts: this.d.machine.hosts.min, maxHosts: this.d.machine.hosts.max, zones: [...new Set(this.d.machine.subnets.map((s) => s.zone))], slotsPerHost: this.perInstance ? 1 : VMS_PER_HOST },
      wantedSlots: input.wantedSlots,
      now: this.d.now(),
    });
    for (const a of plan.allocate) for (let n = 0; n < a.count; n++) await this.allocate(a.zone);
    // With a Mac instance per job an idle host runs nothing: retiring it is releasing it.
    for (const id of plan.retire) await (this.perInstance ? this.release(recs.find((r) => r.id === id)!) : this.retire(recs.find((r) => r.id === id)!));
    for (const id of plan.release) await this.release(recs.find((r) => r.id === id)!);
    for (const rec of recs) {
      const scrubbed = rec.state === 'scrubbing' && cloudHosts.get(rec.id)?.State === 'available' && !cloudInstances.has(rec.id);
      if (scrubbed && !plan.release.includes(rec.id)) await (this.perInstance ? this.to(rec, 'scrubbing', 'ready', {}, 'scrubbed') : this.launch(rec));
    }
    return this.records();
  }

  /** `perJob: instance`: the host's instance is a job VM, launched on demand, terminated after its job. */
  private get perInstance(): boolean {
    return this.d.machine.perJob === 'instance';
  }

  /**
   * `perJob: instance`: launch a job's Mac instance on a ready host. The host is marked busy
   * with the job's VM first (write-ahead); the launch is idempotent by the VM's name.
   */
  async launchJob(rec: HostRecord, job: { vmId: string; name: string; publicKey: string; hostKey?: string; labels: Record<string, string> }): Promise<string> {
    const m = this.d.machine;
    if (!(await this.to(rec, 'ready', 'busy', { jobVm: job.vmId, jobName: job.name, jobLaunchAt: this.d.now() }, `job VM ${job.vmId}`))) {
      throw new ProviderError('stockout', `mac host ${rec.id} was taken meanwhile`, { provider: 'mac', operation: 'create', zone: rec.data.zone });
    }
    const tags = [
      ...Object.entries(m.tags).map(([Key, Value]) => ({ Key, Value })),
      ...Object.entries(job.labels).map(([Key, Value]) => ({ Key, Value })),
      { Key: LABEL_SHARD, Value: this.d.shard },
      { Key: TAG_HOST_RECORD, Value: rec.id },
      { Key: 'Name', Value: job.name },
    ];
    try {
      const out = await this.runOnHost(rec, { clientToken: `rf-job-${job.name}`.slice(0, 64), tags, publicKey: job.publicKey, hostKey: job.hostKey, terminateOnShutdown: true });
      const id = out.Instances?.[0]?.InstanceId;
      if (!id) throw new ProviderError('fatal', 'RunInstances answered no instance', { provider: 'mac', operation: 'RunInstances' });
      await this.d.resources.update(HOST_KIND, rec.id, { instanceId: id });
      return id;
    } catch (err) {
      // Nothing launched: the host is free again.
      await this.to({ ...rec, state: 'busy' }, 'busy', 'ready', { jobVm: null, jobName: null }, `launch failed: ${(err as Error).message.slice(0, 200)}`);
      throw err;
    }
  }

  private async to(rec: HostRecord, from: HostState | HostState[], to: HostState, data: Partial<HostData> = {}, detail?: string): Promise<boolean> {
    // The instance is gone or going: its key is erased with the record's move.
    const erase = to === 'scrubbing' || to === 'released' ? { hostKeySealed: null, sshHostKeySealed: null } : {};
    const ok = await this.d.resources.transition(HOST_KIND, rec.id, from, to, { ...data, ...erase }, detail);
    if (ok) this.d.log.info({ host: rec.id, hostId: rec.data.hostId ?? data.hostId, from: rec.state, to, detail }, 'mac host state');
    return ok;
  }

  /** Bring one record in line with what EC2 says. */
  private async sync(rec: HostRecord, host: Host | undefined, inst: Instance | undefined, nested: { vms: number; busy: number } | undefined): Promise<void> {
    const hostState = host?.State;
    switch (rec.state) {
      case 'allocating': {
        if (!host) return void (await this.allocateCall(rec)); // the call may not have reached EC2: it is idempotent
        const allocatedAt = host.AllocationTime ? new Date(host.AllocationTime).getTime() : this.d.now();
        if (hostState === 'available' && this.perInstance) await this.to(rec, 'allocating', 'ready', { hostId: host.HostId!, allocatedAt }, 'host available');
        else if (hostState === 'available') await this.launch({ ...rec, data: { ...rec.data, hostId: host.HostId!, allocatedAt } });
        else await this.d.resources.update(HOST_KIND, rec.id, { hostId: host.HostId, allocatedAt });
        return;
      }
      case 'launching': {
        if (!inst) {
          if (hostState === 'available') await this.runInstance(rec); // idempotent by ClientToken
          return;
        }
        const ip = inst.PrivateIpAddress;
        const found = { instanceId: inst.InstanceId!, privateIp: ip ?? null };
        if (inst.State?.Name === 'running' && ip && (await this.d.probe({ ...rec, data: { ...rec.data, ...found } }))) {
          await this.to(rec, 'launching', 'ready', found, 'host instance reachable');
        } else if (this.d.now() - (rec.data.launchStartedAt ?? this.d.now()) > this.d.hostLaunchTimeoutMs) {
          this.d.log.warn({ host: rec.id, instance: inst.InstanceId }, 'mac host instance did not become reachable; replacing it');
          await this.retire(rec);
        }
        return;
      }
      case 'ready':
      case 'busy': {
        if (this.perInstance) return void (await this.syncJobHost(rec, host, inst));
        if (!inst || inst.State?.Name !== 'running') {
          // The instance went away behind our back: the host scrubs.
          await this.to(rec, rec.state, 'scrubbing', { instanceId: null, privateIp: null }, 'host instance gone');
          return;
        }
        const full = (nested?.vms ?? 0) >= 2;
        if (full && rec.state === 'ready') await this.to(rec, 'ready', 'busy');
        if (!full && rec.state === 'busy') await this.to(rec, 'busy', 'ready');
        return;
      }
      case 'scrubbing': {
        if (inst) return void (await this.terminate(inst.InstanceId!)); // retire was cut short
        if (hostState === 'released') await this.to(rec, 'scrubbing', 'released');
        // Scrubbed and available: relaunched after the plan, unless the plan releases it.
        return;
      }
      case 'releasable': {
        if (hostState === 'released' || !host) await this.to(rec, 'releasable', 'released');
        return;
      }
      case 'released':
        return;
    }
  }

  /** `perJob: instance`: busy while its job's instance lives; scrubbing once EC2 scrubs it. */
  private async syncJobHost(rec: HostRecord, host: Host | undefined, inst: Instance | undefined): Promise<void> {
    if (inst) {
      if (rec.state === 'ready') await this.to(rec, 'ready', 'busy', { instanceId: inst.InstanceId! }, 'job instance found');
      return;
    }
    if (rec.state !== 'busy') return;
    if (!host || host.State === 'pending' || host.State === 'released') {
      await this.to(rec, 'busy', 'scrubbing', { instanceId: null, privateIp: null, jobVm: null, jobName: null }, 'job instance gone');
    } else if (this.d.now() - Number(rec.data['jobLaunchAt'] ?? 0) > JOB_LAUNCH_GRACE_MS) {
      // Marked busy, but the launch never reached EC2 (a crash in between): free again.
      await this.to(rec, 'busy', 'ready', { jobVm: null, jobName: null }, 'job launch never happened');
    }
  }

  private async allocate(zone: string): Promise<void> {
    const subnet = this.d.machine.subnets.find((s) => s.zone === zone)!;
    const id = randomUUID();
    // Write-ahead: the record exists before EC2 hears of the host.
    await this.d.resources.insert(HOST_KIND, id, 'allocating', { className: this.d.className, zone, subnet: subnet.id, instanceType: this.d.machine.instanceType } satisfies HostData);
    const [rec] = (await this.records()).filter((r) => r.id === id);
    await this.allocateCall(rec!);
  }

  private async allocateCall(rec: HostRecord): Promise<void> {
    const tags = [
      { Key: LABEL_SHARD, Value: this.d.shard },
      { Key: TAG_HOST_RECORD, Value: rec.id },
      ...Object.entries(this.d.machine.tags).map(([Key, Value]) => ({ Key, Value })),
    ];
    try {
      const out = await this.d.call('AllocateHosts', (abortSignal) =>
        this.d.ec2.send(
          new AllocateHostsCommand({ InstanceType: rec.data.instanceType, AvailabilityZone: rec.data.zone, Quantity: 1, AutoPlacement: 'off', ClientToken: rec.id, TagSpecifications: [{ ResourceType: 'dedicated-host', Tags: tags }] }),
          { abortSignal },
        ),
      );
      const hostId = out.HostIds?.[0];
      if (hostId) await this.d.resources.update(HOST_KIND, rec.id, { hostId, allocatedAt: this.d.now() });
    } catch (err) {
      if (err instanceof ProviderError && (err.kind === 'stockout' || err.kind === 'quota' || err.kind === 'fatal')) {
        // Nothing was allocated: the record ends here; the next plan tries again (another zone first).
        this.d.log.warn({ host: rec.id, zone: rec.data.zone, err: err.message }, 'mac host allocation refused');
        await this.to(rec, 'allocating', 'released', {}, `allocation refused: ${err.message.slice(0, 200)}`);
        return;
      }
      throw err;
    }
  }

  /** Write-ahead `launching`, then the host's macOS instance. */
  private async launch(rec: HostRecord): Promise<void> {
    const launchStartedAt = this.d.now();
    // A new key for every launch: a scrubbed host comes back as a new instance.
    const key = this.d.newHostKey?.(rec.id);
    const keyData = key
      ? { hostPublicKey: key.publicKey, hostKeySealed: key.sealedPrivateKey, ...(key.sealedHostKey && key.hostKeyFingerprint ? { sshHostKeySealed: key.sealedHostKey, sshHostKeyFingerprint: key.hostKeyFingerprint } : {}) }
      : {};
    if (!(await this.to(rec, ['allocating', 'scrubbing'], 'launching', { hostId: rec.data.hostId!, allocatedAt: rec.data.allocatedAt!, launchStartedAt, ...keyData }))) return;
    await this.runInstance({ ...rec, state: 'launching', data: { ...rec.data, launchStartedAt, ...keyData } });
  }

  private async runInstance(rec: HostRecord): Promise<void> {
    const m = this.d.machine;
    const tags = [
      { Key: LABEL_SHARD, Value: this.d.shard },
      { Key: TAG_HOST_RECORD, Value: rec.id },
      { Key: 'Name', Value: `rf-${this.d.shard}-host-${rec.id.slice(0, 8)}` },
      ...Object.entries(m.tags).map(([Key, Value]) => ({ Key, Value })),
    ];
    // One launch per host and scrub cycle: the same token after a crash is the same instance.
    await this.runOnHost(rec, { clientToken: `${rec.id.slice(0, 36)}-${String(rec.data.launchStartedAt ?? 0).slice(-10)}`, tags, publicKey: rec.data.hostPublicKey, hostKey: rec.data.sshHostKeySealed ? (this.d.openSealed?.(rec.data.sshHostKeySealed, `sshhost:${rec.id}`) ?? undefined) : undefined });
  }

  /** A Mac instance on the record's host: no public IP, IMDSv2 with hop limit 1, the key in user data. */
  private runOnHost(rec: HostRecord, o: { clientToken: string; tags: { Key: string; Value: string }[]; publicKey: string | undefined; hostKey?: string | undefined; terminateOnShutdown?: boolean }) {
    const m = this.d.machine;
    return this.d.call('RunInstances', (abortSignal) =>
      this.d.ec2.send(
        new RunInstancesCommand({
          ClientToken: o.clientToken,
          ImageId: m.hostImageId,
          InstanceType: m.instanceType as never,
          MinCount: 1,
          MaxCount: 1,
          Placement: { Tenancy: 'host', HostId: rec.data.hostId! },
          NetworkInterfaces: [{ DeviceIndex: 0, SubnetId: rec.data.subnet, Groups: m.securityGroupIds, AssociatePublicIpAddress: false, DeleteOnTermination: true }],
          MetadataOptions: { HttpTokens: 'required', HttpPutResponseHopLimit: 1, HttpEndpoint: 'enabled' },
          TagSpecifications: [{ ResourceType: 'instance', Tags: o.tags }],
          ...(o.terminateOnShutdown ? { InstanceInitiatedShutdownBehavior: 'terminate' as const } : {}),
          ...(o.publicKey ? { UserData: Buffer.from(macHostUserData(m.hostUsername, o.publicKey, o.hostKey)).toString('base64') } : {}),
        }),
        { abortSignal },
      ),
    );
  }

  /** Shed the host's instance: it scrubs, then is launched again or released by the plan. */
  private async retire(rec: HostRecord): Promise<void> {
    if (!(await this.to(rec, ['ready', 'launching', 'busy'], 'scrubbing', {}, 'retired'))) return;
    const id = rec.data.instanceId ?? (await this.instanceOf(rec.id));
    if (id) await this.terminate(id);
  }

  private async instanceOf(recordId: string): Promise<string | undefined> {
    const out = await this.d.call('DescribeInstances', (abortSignal) =>
      this.d.ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${TAG_HOST_RECORD}`, Values: [recordId] }, { Name: 'instance-state-name', Values: ['pending', 'running', 'stopping', 'stopped'] }] }), { abortSignal }),
    );
    return out.Reservations?.[0]?.Instances?.[0]?.InstanceId;
  }

  private async terminate(instanceId: string): Promise<void> {
    await this.d.call('TerminateInstances', (abortSignal) => this.d.ec2.send(new TerminateInstancesCommand({ InstanceIds: [instanceId] }), { abortSignal }));
  }

  private async release(rec: HostRecord): Promise<void> {
    if (!(await this.to(rec, ['scrubbing', 'releasable', 'ready'], 'releasable'))) return;
    if (!rec.data.hostId) return void (await this.to({ ...rec, state: 'releasable' }, 'releasable', 'released', {}, 'never allocated'));
    const out = await this.d.call('ReleaseHosts', (abortSignal) => this.d.ec2.send(new ReleaseHostsCommand({ HostIds: [rec.data.hostId!] }), { abortSignal }));
    if (out.Successful?.includes(rec.data.hostId)) await this.to({ ...rec, state: 'releasable' }, 'releasable', 'released', {}, 'released');
    else this.d.log.warn({ host: rec.id, hostId: rec.data.hostId, err: out.Unsuccessful?.[0]?.Error?.Message }, 'mac host release refused; will retry');
  }
}
