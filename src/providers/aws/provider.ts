// EC2 provider: the imperative shell around the pure parts (config, run-input, errors). Every
// call goes through `call`: the account's token bucket, a timeout that aborts the request, and
// bounded jittered retries (p-retry) for throttling and transient errors only. The SDK's own
// retries are off (maxAttempts 1) so that one policy, with its metrics, governs.
import {
  CreateTagsCommand,
  DescribeInstancesCommand,
  DescribeSecurityGroupsCommand,
  EC2Client,
  RunInstancesCommand,
  StartInstancesCommand,
  StopInstancesCommand,
  TerminateInstancesCommand,
  type EC2ClientConfig,
  type Filter,
  type Instance,
} from '@aws-sdk/client-ec2';
import type { Logger } from 'pino';
import {
  LABEL_SHARD,
  LABEL_VM,
  ProviderError,
  noTelemetry,
  overrideEndpoint,
  type ClassFinding,
  type CloudListing,
  type CloudTelemetry,
  type CloudVm,
  type CloudVmState,
  type ConnectInfo,
  type CreateResult,
  type CreatedVm,
  type Provider,
  type ProviderCapabilities,
  type ProviderContext,
  type VmRef,
  type VmSpec,
} from '../provider.js';
import { coolDown, usableZones, type ZoneCooldowns } from '../shared/placement.js';
import { projectBucket, type TokenBucket } from '../shared/rate-limit.js';
import { machineProfiles } from '../shared/config-fields.js';
import { parseAwsMachine, type AwsMachine, type AwsProviderConfig } from './config.js';
import { ec2Call } from './call.js';
import { classifyAwsError } from './errors.js';
import { runInstancesInput } from './run-input.js';
import { TAG_BATCH, TAG_HOST_RECORD } from './run-input.js';
import type { Cidr } from '../../isolation/cidr.js';
import { auditClasses, fromEc2SecurityGroup, type IngressRule } from '../../isolation/firewall-audit.js';


const LIVE_STATES = ['pending', 'running', 'stopping', 'stopped', 'shutting-down'];

export function ec2ClientConfig(cfg: AwsProviderConfig): EC2ClientConfig {
  const out: EC2ClientConfig = { region: cfg.region, maxAttempts: 1 };
  if (cfg.endpoint) {
    out.endpoint = cfg.endpoint;
    const url = new URL(cfg.endpoint);
    // Plain http is only ever an emulator on loopback: static throwaway credentials.
    if (url.protocol === 'http:' && /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])$/.test(url.hostname)) {
      out.credentials = { accessKeyId: 'runner-fleet-emulator', secretAccessKey: 'runner-fleet-emulator' };
    }
  }
  return out;
}

/** EC2 instance state -> CloudVmState. */
export function vmState(name: string | undefined): CloudVmState {
  switch (name) {
    case 'running':
      return 'running';
    case 'stopping':
      return 'stopping';
    case 'stopped':
      return 'stopped';
    case 'shutting-down':
    case 'terminated':
      return 'terminated';
    default:
      return 'pending';
  }
}

const tagsOf = (i: Instance): Record<string, string> => Object.fromEntries((i.Tags ?? []).filter((t) => t.Key).map((t) => [t.Key!, t.Value ?? '']));

interface Seen {
  username: string;
  zone?: string;
  /** When its RunInstances answered (ms): EC2's eventual consistency counts from the launch. */
  launchedAt: number;
}

/**
 * EC2 is eventually consistent: for a while after RunInstances, calls naming the new instance may
 * answer InvalidInstanceID.NotFound, which then does not mean it does not exist. AWS documents
 * "typically seconds, up to several minutes"; a NotFound on terminate within this window is
 * retried, not read as gone (that would leak a running instance until a sweep found it).
 */
const CONSISTENCY_WINDOW_MS = 5 * 60_000;

export interface AwsStats {
  calls: Record<string, number>;
  retries: number;
  timeouts: number;
  stockouts: number;
  rateLimited: number;
  batches: number;
}

const malformedDescribe = (why: string) => new ProviderError('retryable', `aws DescribeInstances: malformed answer (${why}); the VMs are unknown, not gone`, { provider: 'aws', operation: 'DescribeInstances' });

export class AwsProvider implements Provider {
  readonly name = 'aws';
  readonly capabilities: ProviderCapabilities = { batchCreate: true, stopStart: true, gpu: false, windows: false, nestedVms: false };
  readonly stats: AwsStats = { calls: {}, retries: 0, timeouts: 0, stockouts: 0, rateLimited: 0, batches: 0 };
  private readonly client: EC2Client;
  private readonly bucket: TokenBucket;
  private readonly log: Logger;
  private readonly telemetry: CloudTelemetry;
  private cooldowns: ZoneCooldowns = new Map();
  private readonly seen = new Map<string, Seen>();
  private readonly shardOf = new Map<string, string>();

  constructor(
    readonly cfg: AwsProviderConfig,
    private readonly ctx: ProviderContext,
    deps: { client?: EC2Client; now?: () => number } = {},
  ) {
    this.log = ctx.log;
    this.telemetry = ctx.telemetry ?? noTelemetry;
    this.now = deps.now ?? Date.now;
    this.client = deps.client ?? new EC2Client(ec2ClientConfig(cfg));
    this.pollIntervalMs = cfg.pollIntervalMs;
    this.bucket = projectBucket(`aws/${cfg.endpoint ?? 'amazonaws'}/${cfg.region}`, cfg.requestsPerSecond);
  }

  private readonly now: () => number;
  readonly pollIntervalMs: number;

  /** Entries of the per-VM maps: bounded by the VMs that exist (a 24-hour run keeps flat memory). */
  tracked(): Record<string, number> {
    return { seen: this.seen.size, shardOf: this.shardOf.size };
  }

  /** Subnets still cooling down after a capacity error (subnet -> until, ms). */
  subnetCooldowns(): ZoneCooldowns {
    return this.cooldowns;
  }

  // ---- the one path every EC2 call takes ------------------------------------------------------

  private call<T>(action: string, zone: string | undefined, fn: (signal: AbortSignal) => Promise<T>, opts: { justLaunched?: boolean } = {}): Promise<T> {
    return ec2Call({ provider: 'aws', cfg: this.cfg, bucket: this.bucket, telemetry: this.telemetry, log: this.log, stats: this.stats }, action, zone, fn, opts);
  }

  /** When a VM was launched: by this provider, or (after a restart) its row's creation. */
  private launchedAt(r: VmRef): number | undefined {
    return this.seen.get(r.name)?.launchedAt ?? r.createdAt ?? undefined;
  }

  /** Whether one of these VMs was launched within EC2's consistency window. */
  private justLaunched(refs: VmRef[]): boolean {
    const now = this.now();
    return refs.some((r) => {
      const at = this.launchedAt(r);
      return at !== undefined && now - at < CONSISTENCY_WINDOW_MS;
    });
  }

  private readonly machine = machineProfiles('aws', parseAwsMachine);


  // ---- create ---------------------------------------------------------------------------------

  async create(spec: VmSpec): Promise<CreatedVm> {
    const [r] = await this.createMany([spec]);
    if (!r!.ok) throw r!.error;
    return r!.vm;
  }

  async createMany(specs: VmSpec[]): Promise<CreateResult[]> {
    const results = new Map<string, CreateResult>();
    const groups = new Map<string, VmSpec[]>();
    for (const s of specs) {
      const key = `${s.className}\0${JSON.stringify(s.machine)}\0${s.labels[LABEL_SHARD] ?? s.shard}`;
      groups.set(key, [...(groups.get(key) ?? []), s]);
    }
    await Promise.all(
      [...groups.values()].map(async (group) => {
        try {
          for (const r of await this.launch(group)) results.set(r.ok ? r.vm.vmId : r.vmId, r);
        } catch (err) {
          const error = classifyAwsError(err, { operation: 'RunInstances' });
          for (const s of group) results.set(s.vmId, { ok: false, vmId: s.vmId, error });
        }
      }),
    );
    return specs.map((s) => results.get(s.vmId)!);
  }

  /** One RunInstances for the group (MinCount = MaxCount = its size), walking the subnets on capacity errors. */
  private async launch(group: VmSpec[]): Promise<CreateResult[]> {
    const machine = this.machine(group[0]!);
    const subnets = usableZones(machine.subnets, this.cooldowns, this.now());
    if (subnets.length === 0) {
      throw new ProviderError('stockout', `aws RunInstances: every subnet of ${group[0]!.className} (${machine.subnets.join(', ')}) is cooling down after a capacity error`, { provider: 'aws', operation: 'RunInstances' });
    }
    let last: ProviderError | undefined;
    for (const subnet of subnets) {
      const input = runInstancesInput(group, machine, subnet);
      let instances: Instance[];
      try {
        const out = await this.call('RunInstances', subnet, (abortSignal) => this.client.send(new RunInstancesCommand(input), { abortSignal }));
        instances = out.Instances ?? [];
      } catch (err) {
        const pe = classifyAwsError(err, { operation: 'RunInstances', zone: subnet });
        if (pe.kind !== 'stockout') throw pe;
        this.stats.stockouts++;
        this.telemetry.stockout(subnet);
        this.cooldowns = coolDown(this.cooldowns, subnet, this.now(), this.cfg.subnetCooldownMs);
        this.log.warn({ subnet, coolDownMs: this.cfg.subnetCooldownMs, err: pe.message }, 'aws subnet out of capacity; avoiding it');
        last = pe;
        continue;
      }
      return this.adopt(group, machine, instances);
    }
    throw last!;
  }

  /** Match launched instances to VMs by launch index; a batch's instances then get their own tags. */
  private async adopt(group: VmSpec[], machine: AwsMachine, instances: Instance[]): Promise<CreateResult[]> {
    const byIndex = new Map(instances.map((i) => [i.AmiLaunchIndex ?? 0, i]));
    if (group.length > 1) this.stats.batches++;
    return Promise.all(
      group.map(async (spec, index): Promise<CreateResult> => {
        const inst = byIndex.get(index);
        if (!inst?.InstanceId) {
          return { ok: false, vmId: spec.vmId, error: new ProviderError('retryable', `aws RunInstances: no instance with launch index ${index} in the answer`, { provider: 'aws' }) };
        }
        const zone = inst.Placement?.AvailabilityZone;
        this.seen.set(spec.name, { username: machine.username, ...(zone ? { zone } : {}), launchedAt: this.now() });
        this.shardOf.set(spec.name, spec.labels[LABEL_SHARD] ?? spec.shard);
        if (group.length > 1) {
          try {
            const Tags = [{ Key: 'Name', Value: spec.name }, ...Object.entries(spec.labels).map(([Key, Value]) => ({ Key, Value }))];
            await this.call('CreateTags', zone, (abortSignal) => this.client.send(new CreateTagsCommand({ Resources: [inst.InstanceId!], Tags }), { abortSignal }));
          } catch (err) {
            return { ok: false, vmId: spec.vmId, error: classifyAwsError(err, { operation: 'CreateTags' }) };
          }
        }
        return { ok: true, vm: { vmId: spec.vmId, cloudId: inst.InstanceId, ...(zone ? { zone } : {}) } };
      }),
    );
  }

  // ---- describe / list ----------------------------------------------------------------------------

  private async describeInstances(filters: Filter[], ids?: string[]): Promise<Instance[]> {
    const out: Instance[] = [];
    let NextToken: string | undefined;
    do {
      const page = await this.call('DescribeInstances', undefined, (abortSignal) =>
        this.client.send(new DescribeInstancesCommand({ Filters: filters, ...(ids ? { InstanceIds: ids } : { MaxResults: 1000 }), ...(NextToken ? { NextToken } : {}) }), { abortSignal }),
      );
      // EC2 always answers <reservationSet> and instance ids: without them the answer is broken,
      // and reading it as "no instances" would take every VM for gone.
      if (!Array.isArray(page.Reservations)) throw malformedDescribe('no reservation set');
      for (const r of page.Reservations) {
        for (const i of r?.Instances ?? []) {
          if (typeof i?.InstanceId !== 'string' || !i.InstanceId) throw malformedDescribe('an instance without an id');
          out.push(i);
        }
      }
      NextToken = page.NextToken;
    } while (NextToken);
    return out;
  }

  private toCloudVm(i: Instance): CloudVm {
    const labels = tagsOf(i);
    const name = labels['Name'] ?? i.InstanceId ?? '';
    const zone = i.Placement?.AvailabilityZone;
    const state = vmState(i.State?.Name);
    const ip = i.PrivateIpAddress;
    return {
      ...(labels[LABEL_VM] ? { vmId: labels[LABEL_VM] } : {}),
      name,
      cloudId: i.InstanceId ?? name,
      ...(zone ? { zone } : {}),
      state,
      ...(ip && state !== 'terminated' ? { internalIp: ip } : {}),
      labels,
    };
  }

  /**
   * EC2 answers a DescribeInstances whole or not at all (an error throws), so nothing is ever
   * `unreachable`; its lists are eventually consistent, which the reconciler's grace covers.
   */
  async describe(refs: VmRef[]): Promise<CloudListing> {
    if (refs.length === 0) return { vms: [], unreachable: [] };
    // One DescribeInstances for the whole shard per poll, never one per VM.
    const shards = [...new Set(refs.map((r) => this.shardOf.get(r.name) ?? this.ctx.shard))];
    const all = await this.describeInstances([{ Name: `tag:${LABEL_SHARD}`, Values: shards }]);
    const byKey = new Map<string, Instance>();
    for (const i of all) {
      const t = tagsOf(i);
      for (const k of [i.InstanceId, t[LABEL_VM], t['Name']]) if (k) byKey.set(k, i);
    }
    const out: CloudVm[] = [];
    for (const r of refs) {
      const i = (r.cloudId && byKey.get(r.cloudId)) || byKey.get(r.vmId) || byKey.get(r.name);
      if (i) out.push(this.toCloudVm(i));
    }
    return { vms: out, unreachable: [] };
  }

  /**
   * Job VMs only: instances with their VM tag, or members of one of our batch launches that do
   * not carry it yet. Mac hosts' instances (TAG_HOST_RECORD) share the shard tag in a shard with
   * mac classes, and are never ours: terminating one sends a host billed for 24 h into a scrub.
   */
  async list(labels: Record<string, string>): Promise<CloudListing> {
    const filters: Filter[] = [
      ...Object.entries(labels).map(([k, v]) => ({ Name: `tag:${k}`, Values: [v] })),
      { Name: 'tag-key', Values: [LABEL_VM, TAG_BATCH] },
      { Name: 'instance-state-name', Values: LIVE_STATES },
    ];
    const found = await this.describeInstances(filters);
    const ours = (t: Record<string, string>) => (t[LABEL_VM] !== undefined || t[TAG_BATCH] !== undefined) && t[TAG_HOST_RECORD] === undefined;
    return { vms: found.filter((i) => ours(tagsOf(i)) && Object.entries(labels).every(([k, v]) => tagsOf(i)[k] === v)).map((i) => this.toCloudVm(i)), unreachable: [] };
  }

  // ---- delete / stop / start ------------------------------------------------------------------------

  /** Instance ids of refs: from the ref, else one DescribeInstances of the shard. */
  private async idsOf(refs: VmRef[]): Promise<string[]> {
    const ids = refs.map((r) => r.cloudId).filter((c): c is string => !!c && c.startsWith('i-'));
    const unknown = refs.filter((r) => !r.cloudId || !r.cloudId.startsWith('i-'));
    if (unknown.length) for (const vm of (await this.describe(unknown)).vms) if (vm.state !== 'terminated') ids.push(vm.cloudId);
    return [...new Set(ids)];
  }

  async delete(refs: VmRef[]): Promise<void> {
    if (refs.length === 0) return;
    const ids = await this.idsOf(refs);
    const refOf = new Map(refs.filter((r) => r.cloudId).map((r) => [r.cloudId!, r]));
    const terminate = (chunk: string[]) => this.call('TerminateInstances', undefined, (abortSignal) => this.client.send(new TerminateInstancesCommand({ InstanceIds: chunk }), { abortSignal }));
    // An instance EC2 does not know yet must not hold up the others: they are terminated, then it
    // is retried (the caller's next delete).
    let notYet: ProviderError | null = null;
    for (let i = 0; i < ids.length; i += 500) {
      const chunk = ids.slice(i, i + 500);
      const failed = await terminate(chunk).then(() => null, (err: unknown) => err);
      if (!failed) continue;
      if (!(failed instanceof ProviderError) || failed.kind !== 'notFound') throw failed;
      // One unknown id fails the whole request (EC2 terminates none of it): one by one.
      for (const id of chunk) {
        const one = chunk.length > 1 ? await terminate([id]).then(() => null, (err: unknown) => err) : failed;
        if (!one) continue;
        if (!(one instanceof ProviderError) || one.kind !== 'notFound') throw one;
        const ref = refOf.get(id);
        const launchedAt = ref ? this.launchedAt(ref) : undefined;
        if (launchedAt !== undefined && this.now() - launchedAt < CONSISTENCY_WINDOW_MS) {
          notYet ??= new ProviderError('retryable', `aws TerminateInstances: ${id} is not found yet ${Math.round((this.now() - launchedAt) / 1000)} s after its launch (EC2 eventual consistency); retry`, { provider: 'aws', operation: 'delete', cause: one });
        }
        // Otherwise long gone (terminated instances drop out of EC2's answers after about an hour).
      }
    }
    if (notYet) throw notYet;
    // Gone (or going): per-VM maps stay bounded by the VMs that exist.
    for (const r of refs) {
      this.seen.delete(r.name);
      this.shardOf.delete(r.name);
    }
  }

  async stop(refs: VmRef[]): Promise<void> {
    const ids = await this.idsOf(refs);
    if (ids.length) await this.call('StopInstances', undefined, (abortSignal) => this.client.send(new StopInstancesCommand({ InstanceIds: ids }), { abortSignal }), { justLaunched: this.justLaunched(refs) });
  }

  async start(refs: VmRef[]): Promise<void> {
    const ids = await this.idsOf(refs);
    if (ids.length) await this.call('StartInstances', undefined, (abortSignal) => this.client.send(new StartInstancesCommand({ InstanceIds: ids }), { abortSignal }), { justLaunched: this.justLaunched(refs) });
  }

  // ---- connect --------------------------------------------------------------------------------------

  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    if (!vm.internalIp) throw new Error(`aws VM ${vm.name} has no private address yet`);
    const info: ConnectInfo = { protocol: 'ssh', os: 'linux', host: vm.internalIp, port: 22, username: this.seen.get(vm.name)?.username ?? 'runner', privateKey };
    return overrideEndpoint(this.ctx, { ...vm, internalIp: vm.internalIp }, info);
  }

  /**
   * One DescribeSecurityGroups for the groups of every class; each class is audited against the
   * inbound rules of its own groups (a rule referencing one of them is VM-to-VM traffic).
   */
  async auditIsolation(managerRanges: Cidr[]): Promise<ClassFinding[]> {
    const classes = Object.entries(this.ctx.classes ?? {}).map(([className, machine]) => ({ className, groups: this.machine({ className, machine }).securityGroupIds }));
    const ids = [...new Set(classes.flatMap((c) => c.groups))];
    if (ids.length === 0) return [];
    const out = await this.call('DescribeSecurityGroups', undefined, (abortSignal) => this.client.send(new DescribeSecurityGroupsCommand({ GroupIds: ids }), { abortSignal }));
    const rulesOf = new Map<string, IngressRule[]>((out.SecurityGroups ?? []).map((g) => [g.GroupId ?? '', fromEc2SecurityGroup(g)]));
    return auditClasses(classes.map((c) => ({ className: c.className, rules: c.groups.flatMap((g) => rulesOf.get(g) ?? []), vmTags: c.groups })), managerRanges, [22]);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
