// `perJob: vm`: a fresh nested macOS VM per job, cloned with Tart on a Mac host and reached
// through that host as an SSH jump. Nested VMs live only on their host, so the host's
// `tart list` is their source of truth. Cloud id: `<host record id>/<name>`.
import type { Logger } from 'pino';
import { LABEL_SHARD, LABEL_VM, ProviderError, type CloudTelemetry, type CloudVm, type ConnectInfo, type CreatedVm, type VmRef, type VmSpec } from '../provider.js';
import type { MacMachine } from './config.js';
import type { HostRecord } from './host-fleet.js';
import { freeSlots, pickHost, VMS_PER_HOST, type HostView } from './host-pool.js';
import type { HostShell } from './host-shell.js';
import { usable, type MacHosts } from './hosts.js';
import { TartCapacityError } from './tart.js';

export interface NestedVmsDeps {
  shard: string;
  hosts: MacHosts;
  shell: HostShell;
  telemetry: CloudTelemetry;
  log: Logger;
  now: () => number;
}

export class NestedVms {
  /** Our nested VMs per host record, as of the last `tart list` (names), plus the ones made since. */
  private readonly nested = new Map<string, Set<string>>();
  /** Hosts a create listed before placing (once each, answered or not: a host whose Tart is down is not asked again on every create; the tick's list covers it). */
  private readonly listedForCreate = new Set<string>();
  /** Every VM running on a host (ours or not), for Apple's two-VM limit. */
  private readonly runningOn = new Map<string, number>();
  private readonly ips = new Map<string, string>();
  private readonly cloneStarted = new Map<string, { at: number; className: string }>();
  private readonly prefix: string;

  constructor(private readonly deps: NestedVmsDeps) {
    this.prefix = `rf-${deps.shard}-`;
  }

  tracked(): Record<string, number> {
    const nested = [...this.nested.values()].reduce((n, s) => n + s.size, 0);
    return { nested, ips: this.ips.size, cloneStarted: this.cloneStarted.size };
  }

  /** VM slots taken on a host: listed or running VMs, and VMs being placed there. */
  slotsTaken(hostId: string): number {
    return Math.max(this.nested.get(hostId)?.size ?? 0, this.runningOn.get(hostId) ?? 0) + this.deps.hosts.placingOn(hostId);
  }

  /** Lists the host's VMs (one `tart list`). */
  async refresh(h: HostRecord): Promise<void> {
    const vms = await this.deps.shell.withTart(h, (t) => t.list());
    this.nested.set(h.id, new Set(vms.filter((v) => v.name.startsWith(this.prefix)).map((v) => v.name)));
    this.runningOn.set(h.id, vms.filter((v) => v.running).length);
  }

  /** Hosts that left the fleet take their per-host entries with them. */
  retainHosts(recs: HostRecord[]): void {
    for (const m of [this.nested, this.runningOn]) for (const id of [...m.keys()]) if (!recs.some((h) => h.id === id)) m.delete(id);
  }

  /** The host a VM is on: from its cloud id, else from what the hosts listed. */
  hostOf(ref: Pick<VmRef, 'name' | 'cloudId'>): HostRecord | undefined {
    const { hosts } = this.deps;
    const fromId = hosts.byId(ref.cloudId?.split('/')[0]);
    if (fromId) return fromId;
    for (const [hostId, names] of this.nested) if (names.has(ref.name)) return hosts.byId(hostId);
    return hosts.byId(hosts.placing.get(ref.name));
  }

  async create(spec: VmSpec, machine: MacMachine): Promise<CreatedVm> {
    const { hosts, shell } = this.deps;
    // A provider that has not listed every host yet (just restarted, before its first tick) may
    // be asked again for a VM an earlier create made: find it before placing it a second time.
    if (!this.hostOf(spec)) await this.refreshUnlisted(spec.className);
    const host = this.hostOf(spec) ?? this.pick(spec.className);
    if (!host) throw new ProviderError('stockout', `no free macOS VM slot on the ${spec.className} hosts (${hosts.records.filter((h) => h.data.className === spec.className && usable(h)).length} usable, at ${VMS_PER_HOST} VMs each)`, { provider: 'mac', operation: 'create' });
    hosts.placing.set(spec.name, host.id);
    const started = this.deps.now();
    try {
      await shell.withTart(host, async (tart) => {
        const present = (await tart.list()).find((v) => v.name === spec.name);
        if (!present) await tart.clone(machine.vm.image, spec.name);
        if (!present && (machine.vm.cpu || machine.vm.memoryMb)) await tart.set(spec.name, machine.vm);
        await tart.installKey(spec.name, spec.publicKey, spec.hostKey);
        if (!present?.running) await tart.start(spec.name);
      });
    } catch (err) {
      // Leave nothing half-made: the slot frees for the next try.
      await shell.withTart(host, (t) => t.delete(spec.name)).catch(() => {});
      if (err instanceof TartCapacityError) {
        this.runningOn.set(host.id, VMS_PER_HOST);
        throw new ProviderError('stockout', `mac host ${host.id} already runs ${VMS_PER_HOST} VMs: ${err.message}`, { provider: 'mac', operation: 'create', zone: host.data.zone });
      }
      if (err instanceof ProviderError) throw err;
      throw new ProviderError('fatal', (err as Error).message, { provider: 'mac', operation: 'create', cause: err });
    } finally {
      hosts.placing.delete(spec.name);
    }
    const set = this.nested.get(host.id) ?? new Set<string>();
    set.add(spec.name);
    this.nested.set(host.id, set);
    this.cloneStarted.set(spec.name, { at: started, className: spec.className });
    this.deps.log.info({ vm: spec.vmId, host: host.id, hostId: host.data.hostId }, 'nested macOS VM started');
    return { vmId: spec.vmId, cloudId: `${host.id}/${spec.name}`, zone: host.data.zone };
  }

  /** Lists the class's usable hosts this provider has not listed yet (one `tart list` each, once). */
  private async refreshUnlisted(className: string): Promise<void> {
    const unlisted = this.deps.hosts.records.filter((h) => h.data.className === className && usable(h) && !this.nested.has(h.id) && !this.listedForCreate.has(h.id));
    for (const h of unlisted) this.listedForCreate.add(h.id);
    await Promise.all(unlisted.map((h) => this.refresh(h).catch((err) => this.deps.log.warn({ host: h.id, err: (err as Error).message }, 'listing the VMs of a mac host failed'))));
  }

  private pick(className: string): HostRecord | undefined {
    const views: HostView[] = this.deps.hosts.records
      .filter((h) => h.data.className === className && (h.state === 'ready' || h.state === 'busy') && h.data.privateIp)
      .map((h) => ({ id: h.id, state: 'ready', availabilityZone: h.data.zone, allocatedAt: h.data.allocatedAt ?? 0, nestedVms: this.slotsTaken(h.id), busyVms: 0 }));
    const v = pickHost(views);
    return v && freeSlots(v) > 0 ? this.deps.hosts.byId(v.id) : undefined;
  }

  /**
   * One `tart list` per host the refs are on. A host whose Tart does not answer makes its zone
   * `unreachable`: its VMs are unknown, not gone.
   */
  async describe(refs: VmRef[], unreachable: Set<string>): Promise<CloudVm[]> {
    const out: CloudVm[] = [];
    const byHost = new Map<string, VmRef[]>();
    for (const r of refs) {
      const h = this.hostOf(r);
      if (h) byHost.set(h.id, [...(byHost.get(h.id) ?? []), r]);
    }
    for (const [hostId, rs] of byHost) {
      const h = this.deps.hosts.byId(hostId)!;
      if (!usable(h)) continue; // the host is gone: so are its VMs
      await this.deps.shell.withTart(h, async (tart) => {
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
              if (c) this.deps.telemetry.nestedVmReady?.(c.className, (this.deps.now() - c.at) / 1000);
              this.cloneStarted.delete(r.name);
            }
          }
          out.push({ vmId: r.vmId, name: r.name, cloudId: `${h.id}/${r.name}`, zone: h.data.zone, state: v.running ? 'running' : 'stopped', ...(ip && v.running ? { internalIp: ip } : {}), labels: this.labelsOf(r.name) });
        }
      }).catch((err: unknown) => this.unanswered(h, err, unreachable));
    }
    return out;
  }

  /** Every nested VM of this shard with these labels on every usable host (one `tart list` each). */
  async list(labels: Record<string, string>, unreachable: Set<string>): Promise<CloudVm[]> {
    const out: CloudVm[] = [];
    for (const h of this.deps.hosts.records.filter(usable)) {
      try {
        await this.refresh(h);
      } catch (err) {
        this.unanswered(h, err, unreachable);
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
    return out;
  }

  async delete(refs: VmRef[]): Promise<void> {
    for (const r of refs) {
      const h = this.hostOf(r);
      this.ips.delete(r.name);
      this.cloneStarted.delete(r.name);
      if (!h || !usable(h)) continue; // no host, or a host that scrubs: the VM went with it
      await this.deps.shell.withTart(h, (t) => t.delete(r.name));
      this.nested.get(h.id)?.delete(r.name);
      this.runningOn.set(h.id, Math.max(0, (this.runningOn.get(h.id) ?? 1) - 1));
    }
  }

  /** Through the host as an SSH jump, to the VM's address on the host's private network. */
  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    const h = this.hostOf(vm);
    if (!h) throw new ProviderError('notFound', `no mac host known for VM ${vm.name}`, { provider: 'mac' });
    const machine = this.deps.hosts.machineOf(h.data.className);
    if (!vm.internalIp) throw new ProviderError('retryable', `VM ${vm.name} has no address yet`, { provider: 'mac' });
    return { protocol: 'ssh', os: 'macos', host: vm.internalIp, port: machine.vm.sshPort, username: machine.vm.username, privateKey, jump: this.deps.shell.connectInfo(h, machine) };
  }

  /** A host's Tart did not answer: its zone's VMs are unknown for this answer. */
  private unanswered(h: HostRecord, err: unknown, unreachable: Set<string>): void {
    const scope = `zones/${h.data.zone}`;
    this.deps.log.warn({ host: h.id, zone: h.data.zone, err: (err as Error).message }, 'mac host did not answer; its VMs are unknown, not gone');
    if (!unreachable.has(scope)) this.deps.telemetry.partialList?.(h.data.zone);
    unreachable.add(scope);
  }

  private labelsOf(name: string): Record<string, string> {
    return name.startsWith(this.prefix) ? { [LABEL_SHARD]: this.deps.shard, [LABEL_VM]: name.slice(this.prefix.length) } : {};
  }
}
