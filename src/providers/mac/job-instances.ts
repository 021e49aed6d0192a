// `perJob: instance`: a whole Mac instance per job, launched on a free host of the class by its
// host fleet; the host scrubs after the instance terminates. Cloud id: the EC2 instance id.
import { DescribeInstancesCommand, TerminateInstancesCommand, type EC2Client, type Instance } from '@aws-sdk/client-ec2';
import { vmState } from '../aws/provider.js';
import { LABEL_SHARD, LABEL_VM, overrideEndpoint, ProviderError, type CloudVm, type ConnectInfo, type CreatedVm, type ProviderContext, type VmRef, type VmSpec } from '../provider.js';
import { TAG_HOST_RECORD, type HostFleet } from './host-fleet.js';
import type { MacHosts } from './hosts.js';

const tagsOf = (i: Instance): Record<string, string> => Object.fromEntries((i.Tags ?? []).filter((t) => t.Key).map((t) => [t.Key!, t.Value ?? '']));

export interface JobInstancesDeps {
  shard: string;
  hosts: MacHosts;
  client: EC2Client;
  /** An EC2 call with the provider's rate limit, retries and telemetry. */
  call<T>(action: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  ctx: Pick<ProviderContext, 'connectOverride'>;
}

export class JobInstances {
  /** Instance id -> its host record id, for connect info. */
  private readonly jobHosts = new Map<string, string>();

  constructor(private readonly deps: JobInstancesDeps) {}

  tracked(): Record<string, number> {
    return { jobHosts: this.jobHosts.size };
  }

  async create(spec: VmSpec, fleet: HostFleet): Promise<CreatedVm> {
    const { hosts } = this.deps;
    const taken = new Set(hosts.placing.values());
    const host = hosts.records.find((h) => h.data.className === spec.className && h.state === 'ready' && !taken.has(h.id));
    if (!host) throw new ProviderError('stockout', `no free ${spec.className} host (each runs one job instance, then scrubs)`, { provider: 'mac', operation: 'create' });
    hosts.placing.set(spec.name, host.id);
    try {
      const instanceId = await fleet.launchJob(host, spec);
      host.state = 'busy';
      return { vmId: spec.vmId, cloudId: instanceId, zone: host.data.zone };
    } finally {
      hosts.placing.delete(spec.name);
    }
  }

  /**
   * Job instances of this shard (terminated ones included), or only those of these VMs (not
   * terminated): one DescribeInstances, none when no class runs job instances.
   */
  async find(vmIds?: string[]): Promise<CloudVm[]> {
    if (!this.deps.hosts.hasInstanceClasses || (vmIds && vmIds.length === 0)) return [];
    const out = await this.deps.call('DescribeInstances', (abortSignal) =>
      this.deps.client.send(
        new DescribeInstancesCommand({
          Filters: [
            { Name: `tag:${LABEL_SHARD}`, Values: [this.deps.shard] },
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
        if (vmState(i.State?.Name) !== 'terminated') this.jobHosts.set(i.InstanceId!, tags[TAG_HOST_RECORD] ?? '');
        vms.push({
          vmId: tags[LABEL_VM], name: tags['Name'] ?? i.InstanceId!, cloudId: i.InstanceId!, state: vmState(i.State?.Name), labels: tags,
          ...(i.Placement?.AvailabilityZone ? { zone: i.Placement.AvailabilityZone } : {}),
          ...(i.PrivateIpAddress ? { internalIp: i.PrivateIpAddress } : {}),
        });
      }
    }
    return vms.filter((v) => v.state !== 'terminated' || !vmIds);
  }

  /** Terminates the instances; ones already gone are fine. The host scrubs afterwards. */
  async delete(instanceIds: string[]): Promise<void> {
    if (!instanceIds.length) return;
    // The fleet sees the scrub and frees the host when EC2 does.
    await this.deps.call('TerminateInstances', (abortSignal) => this.deps.client.send(new TerminateInstancesCommand({ InstanceIds: instanceIds }), { abortSignal })).catch((err: unknown) => {
      if (!(err instanceof ProviderError && err.kind === 'notFound')) throw err;
    });
    for (const id of instanceIds) this.jobHosts.delete(id);
  }

  /** Straight to the instance, as the host's user: the instance is the job's whole machine. */
  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    const { hosts } = this.deps;
    const h = hosts.byId(this.jobHosts.get(vm.cloudId!));
    const machine = h ? hosts.machineOf(h.data.className) : [...hosts.classes.values()].find((c) => c.machine.perJob === 'instance')?.machine;
    if (!machine) throw new ProviderError('notFound', `no mac class runs job instances (VM ${vm.name})`, { provider: 'mac' });
    const info: ConnectInfo = { protocol: 'ssh', os: 'macos', host: vm.internalIp!, port: 22, username: machine.hostUsername, privateKey };
    return overrideEndpoint(this.deps.ctx, { ...vm, internalIp: vm.internalIp! }, info);
  }
}
