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
import { planHosts, type HostState, type HostView } from './host-pool.js';

export const HOST_KIND = 'mac_host';
/** Tag on hosts and their instances: the host record's id (also the ClientToken of both). */
export const TAG_HOST_RECORD = 'runner-fleet-host';

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
}

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
      config: { minHosts: this.d.machine.hosts.min, maxHosts: this.d.machine.hosts.max, zones: [...new Set(this.d.machine.subnets.map((s) => s.zone))] },
      wantedSlots: input.wantedSlots,
      now: this.d.now(),
    });
    for (const a of plan.allocate) for (let n = 0; n < a.count; n++) await this.allocate(a.zone);
    for (const id of plan.retire) await this.retire(recs.find((r) => r.id === id)!);
    for (const id of plan.release) await this.release(recs.find((r) => r.id === id)!);
    for (const rec of recs) {
      const scrubbed = rec.state === 'scrubbing' && cloudHosts.get(rec.id)?.State === 'available' && !cloudInstances.has(rec.id);
      if (scrubbed && !plan.release.includes(rec.id)) await this.launch(rec);
    }
    return this.records();
  }

  private async to(rec: HostRecord, from: HostState | HostState[], to: HostState, data: Partial<HostData> = {}, detail?: string): Promise<boolean> {
    const ok = await this.d.resources.transition(HOST_KIND, rec.id, from, to, data, detail);
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
        if (hostState === 'available') await this.launch({ ...rec, data: { ...rec.data, hostId: host.HostId!, allocatedAt } });
        else await this.d.resources.update(HOST_KIND, rec.id, { hostId: host.HostId, allocatedAt });
        return;
      }
      case 'launching': {
        if (!inst) {
          if (hostState === 'available') await this.runInstance(rec); // idempotent by ClientToken
          return;
        }
        const ip = inst.PrivateIpAddress;
        if (inst.State?.Name === 'running' && ip && (await this.d.probe({ ...rec, data: { ...rec.data, privateIp: ip, instanceId: inst.InstanceId! } }))) {
          await this.to(rec, 'launching', 'ready', { instanceId: inst.InstanceId!, privateIp: ip }, 'host instance reachable');
        } else if (this.d.now() - (rec.data.launchStartedAt ?? this.d.now()) > this.d.hostLaunchTimeoutMs) {
          this.d.log.warn({ host: rec.id, instance: inst.InstanceId }, 'mac host instance did not become reachable; replacing it');
          await this.retire(rec);
        }
        return;
      }
      case 'ready':
      case 'busy': {
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
    if (!(await this.to(rec, ['allocating', 'scrubbing'], 'launching', { hostId: rec.data.hostId!, allocatedAt: rec.data.allocatedAt!, launchStartedAt }))) return;
    await this.runInstance({ ...rec, state: 'launching', data: { ...rec.data, launchStartedAt } });
  }

  private async runInstance(rec: HostRecord): Promise<void> {
    const m = this.d.machine;
    const tags = [
      { Key: LABEL_SHARD, Value: this.d.shard },
      { Key: TAG_HOST_RECORD, Value: rec.id },
      { Key: 'Name', Value: `rf-${this.d.shard}-host-${rec.id.slice(0, 8)}` },
      ...Object.entries(m.tags).map(([Key, Value]) => ({ Key, Value })),
    ];
    await this.d.call('RunInstances', (abortSignal) =>
      this.d.ec2.send(
        new RunInstancesCommand({
          // One launch per host and scrub cycle: the same token after a crash is the same instance.
          ClientToken: `${rec.id.slice(0, 36)}-${String(rec.data.launchStartedAt ?? 0).slice(-10)}`,
          ImageId: m.hostImageId,
          InstanceType: m.instanceType as never,
          MinCount: 1,
          MaxCount: 1,
          Placement: { Tenancy: 'host', HostId: rec.data.hostId! },
          NetworkInterfaces: [{ DeviceIndex: 0, SubnetId: rec.data.subnet, Groups: m.securityGroupIds, AssociatePublicIpAddress: false, DeleteOnTermination: true }],
          MetadataOptions: { HttpTokens: 'required', HttpPutResponseHopLimit: 1, HttpEndpoint: 'enabled' },
          TagSpecifications: [{ ResourceType: 'instance', Tags: tags }],
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
