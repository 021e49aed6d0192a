// An EC2 Query API emulator: the wire format the real EC2Client sends (form-encoded POST /,
// `Action=...`, lists as `X.1`, XML answers, EC2's error XML) for the instance actions the aws
// provider uses (RunInstances with ClientToken and MinCount/MaxCount, DescribeInstances with
// filters and paging, TerminateInstances, CreateTags, Stop/StartInstances, DescribeSecurityGroups
// for the isolation audit, CreateSecurityGroup and AuthorizeSecurityGroupIngress), fault injection
// (capacity per subnet, RequestLimitExceeded, InstanceLimitExceeded, hung calls), Dedicated Hosts
// (AllocateHosts, DescribeHosts, ReleaseHosts; one instance per host; Mac hosts scrub after their
// instance leaves and cannot be released before 24 h, on an injectable clock), and instances
// that are real SSH sandboxes (the local provider's) on their own loopback address. The
// emulated cloud-init installs the key of the instance's launch index from the user data.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { pino, type Logger } from 'pino';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { hostKeysInUserData, keysInUserData } from '../../src/providers/aws/run-input.js';
import { ec2ConnectOverride } from '../connect-override.js';
import type { ConnectOverride } from '../../src/providers/provider.js';
import { LocalProvider } from '../../src/providers/local/provider.js';


export type Ec2Action = 'RunInstances' | 'DescribeInstances' | 'TerminateInstances' | 'CreateTags' | 'StopInstances' | 'StartInstances' | 'AllocateHosts' | 'DescribeHosts' | 'ReleaseHosts' | 'DescribeSecurityGroups'
  | 'CreateSecurityGroup' | 'AuthorizeSecurityGroupIngress';
const ACTIONS: Ec2Action[] = ['RunInstances', 'DescribeInstances', 'TerminateInstances', 'CreateTags', 'StopInstances', 'StartInstances', 'AllocateHosts', 'DescribeHosts', 'ReleaseHosts', 'DescribeSecurityGroups', 'CreateSecurityGroup', 'AuthorizeSecurityGroupIngress'];

/** A security group's inbound rules, as DescribeSecurityGroups answers them. */
export interface EmulatedSecurityGroup {
  groupId: string;
  groupName?: string;
  vpcId?: string;
  ingress: { protocol: string; fromPort?: number; toPort?: number; cidrs?: string[]; ipv6Cidrs?: string[]; groups?: string[] }[];
}

/** EC2 bills a Mac host for at least this long and refuses to release it earlier. */
export const MAC_MIN_ALLOCATION_MS = 24 * 3600_000;

interface Host {
  id: string;
  instanceType: string;
  zone: string;
  allocatedAt: number;
  /** Scrubbing after its Mac instance stopped or terminated: DescribeHosts says `pending`. */
  scrubUntil?: number;
  released?: number;
  instanceId?: string;
  tags: Map<string, string>;
}

const isMacType = (t: string | undefined) => !!t && /^mac[0-9a-z-]*\.metal$/.test(t);

export interface Ec2Faults {
  /** RunInstances into these subnets fails with InsufficientInstanceCapacity. */
  noCapacitySubnets: Set<string>;
  /** The next N calls answer RequestLimitExceeded (HTTP 503, as EC2 does). */
  throttleNext: number;
  /** RunInstances answers InstanceLimitExceeded while set. */
  instanceLimitExceeded: boolean;
  /** The next N calls never answer (until close). */
  hangNext: number;
  /** AllocateHosts in these availability zones fails with InsufficientHostCapacity. */
  noHostCapacityZones: Set<string>;
  /**
   * Eventual consistency, as EC2 documents it: for this long after its launch an instance is
   * missing from filtered DescribeInstances lists, and DescribeInstances by its id (and Terminate,
   * Stop, StartInstances naming it) answers InvalidInstanceID.NotFound (which does not mean the
   * instance does not exist).
   */
  listLagMs: number;
  /** Chaos (0..1): share of calls answered RequestLimitExceeded or Unavailable (503) before they act. */
  errorRate: number;
  /** Chaos (0..1): share of mutating calls (RunInstances, TerminateInstances, CreateTags...) that act, then answer 503 anyway. */
  errorAfterRate: number;
  /** Of those, the share whose answer is lost instead (the connection drops: no status at all). */
  lostShare: number;
  /**
   * Fuzz: while set, an action's answer is replaced by what this returns for it (given the real
   * body, after the action acted); undefined leaves that answer alone.
   */
  mangle?: (action: string, body: string) => { status?: number; body: string; contentType?: string } | undefined;
}

/** Actions that change something: the ones whose answer may be lost after they acted. */
const MUTATING: ReadonlySet<string> = new Set(['RunInstances', 'TerminateInstances', 'CreateTags', 'StopInstances', 'StartInstances', 'AllocateHosts', 'ReleaseHosts']);

interface Inst {
  id: string;
  reservationId: string;
  sandboxName: string;
  state: 'pending' | 'running' | 'stopping' | 'stopped' | 'shutting-down' | 'terminated';
  tags: Map<string, string>;
  launchIndex: number;
  clientToken: string;
  params: Record<string, string>;
  privateIp?: string;
  subnetId: string;
  zone: string;
  launchTime: string;
  /** Epoch ms of the launch (the eventual-consistency lag counts from it). */
  launchedAt: number;
  terminatedAt?: number;
  hostId?: string;
}

export interface Ec2EmulatorOptions {
  host?: string;
  port?: number;
  dataDir?: string;
  log?: Logger;
  /** Subnet -> availability zone. Unknown subnets are InvalidSubnetID.NotFound. */
  subnets?: Record<string, string>;
  /** How long a sandbox boots before it listens (instance `pending` meanwhile). */
  bootDelayMs?: number;
  /** How long terminated instances stay visible (EC2: about an hour). */
  terminatedVisibleMs?: number;
  /** The clock of dedicated hosts (allocation time, 24-hour minimum, scrubbing); tests pass a virtual one. */
  now?: () => number;
  /** How long a Mac host scrubs after its instance stops or terminates (EC2: 110 min up to hours). */
  scrubMs?: number;
  /** A directory put first on the instances' PATH: programs the AMI has (a Tart double on Mac hosts). */
  sandboxPathDir?: string;
  /** Randomness of the chaos faults (errorRate...), in [0, 1); Math.random by default. */
  random?: () => number;
}

export interface Ec2Emulator {
  url: string;
  faults: Ec2Faults;
  calls: Record<Ec2Action, number>;
  /** The form parameters of the RunInstances that launched this instance. */
  runRequest(instanceId: string): Record<string, string> | undefined;
  instances(): { id: string; state: string; tags: Record<string, string>; subnetId: string; privateIp?: string; launchIndex: number; hostId?: string }[];
  hosts(): { id: string; state: string; instanceType: string; zone: string; allocatedAt: number; instanceId?: string }[];
  /** Replace the account's security groups (DescribeSecurityGroups answers them). */
  setSecurityGroups(groups: EmulatedSecurityGroup[]): void;
  resetCalls(): void;
  /** Where each instance's sshd listens, for startShard's connectOverride (test tools only). */
  connectOverride: ConnectOverride;
  close(): Promise<void>;
}

const DEFAULT_SUBNETS: Record<string, string> = { 'subnet-0aaa1111': 'us-east-1a', 'subnet-0bbb2222': 'us-east-1b', 'subnet-0ccc3333': 'us-east-1c' };
const STATE_CODE: Record<Inst['state'], number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48, stopping: 64, stopped: 80 };

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

class Ec2Error extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/** `Prefix.1`, `Prefix.2`, ... values. */
function list(p: Record<string, string>, prefix: string): string[] {
  const out: string[] = [];
  for (let i = 1; p[`${prefix}.${i}`] !== undefined; i++) out.push(p[`${prefix}.${i}`]!);
  return out;
}

export async function startEc2Emulator(opts: Ec2EmulatorOptions = {}): Promise<Ec2Emulator> {
  const host = opts.host ?? '127.0.0.1';
  if (!/^127\./.test(host)) throw new Error(`EC2 emulator: host ${host} is not a loopback address`);
  const log = opts.log ?? pino({ level: 'silent' });
  const ownDataDir = !opts.dataDir;
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'ec2-emu-'));
  const local = new LocalProvider({ bootDelayMs: opts.bootDelayMs ?? 0, dir: join(dataDir, 'ec2-vms'), ...(opts.sandboxPathDir ? { extraPathDir: opts.sandboxPathDir } : {}) }, { shard: 'ec2-emulator', dataDir, log });
  const subnets = opts.subnets ?? DEFAULT_SUBNETS;
  const terminatedVisibleMs = opts.terminatedVisibleMs ?? 60_000;
  const faults: Ec2Faults = { noCapacitySubnets: new Set(), throttleNext: 0, instanceLimitExceeded: false, hangNext: 0, noHostCapacityZones: new Set(), listLagMs: 0, errorRate: 0, errorAfterRate: 0, lostShare: 0 };
  const random = opts.random ?? Math.random;
  /** Launched too recently for DescribeInstances to know it yet. */
  const lagging = (i: Inst) => faults.listLagMs > 0 && Date.now() - i.launchedAt < faults.listLagMs;
  const now = opts.now ?? Date.now;
  const scrubMs = opts.scrubMs ?? 110 * 60_000;
  const hosts = new Map<string, Host>();
  const securityGroups = new Map<string, EmulatedSecurityGroup>();
  const hostTokens = new Map<string, string[]>();

  function hostState(h: Host): string {
    if (h.released !== undefined) return 'released';
    if (h.scrubUntil !== undefined && now() < h.scrubUntil) return 'pending';
    return 'available';
  }

  /** The instance left the host: a Mac host scrubs before it takes another. */
  function leaveHost(i: Inst): void {
    const h = i.hostId ? hosts.get(i.hostId) : undefined;
    if (!h || h.instanceId !== i.id) return;
    h.instanceId = undefined;
    if (isMacType(h.instanceType)) h.scrubUntil = now() + scrubMs;
  }

  /** Placement on a dedicated host: the named one, or (auto-placement) any free one of the type in the zone. */
  function placeOnHost(p: Record<string, string>, zone: string): Host {
    const wanted = p['Placement.HostId'];
    const type = p['InstanceType'];
    const free = (h: Host) => hostState(h) === 'available' && !h.instanceId && h.instanceType === type && h.zone === zone;
    if (wanted) {
      const h = hosts.get(wanted);
      if (!h || h.released !== undefined) throw new Ec2Error('InvalidHostID.NotFound', `The host ID '${wanted}' does not exist`);
      if (!free(h)) throw new Ec2Error('InsufficientHostCapacity', `There is no available capacity on host ${wanted} for ${type} (state ${hostState(h)}${h.instanceId ? `, running ${h.instanceId}` : ''}).`);
      return h;
    }
    const h = [...hosts.values()].find(free);
    if (!h) throw new Ec2Error('InsufficientHostCapacity', `There are no available Dedicated Hosts of type ${type} in ${zone}.`);
    return h;
  }
  const calls = Object.fromEntries(ACTIONS.map((a) => [a, 0])) as Record<Ec2Action, number>;
  const instances = new Map<string, Inst>();
  const tokens = new Map<string, { params: string; ids: string[] }>();
  const hung = new Set<() => void>();
  const booting = new Set<Promise<unknown>>();
  let closing = false;

  const hex = (n: number) => randomBytes(n).toString('hex').slice(0, 17);

  function visible(i: Inst): boolean {
    return i.state !== 'terminated' || Date.now() - (i.terminatedAt ?? 0) < terminatedVisibleMs;
  }

  /** The user the user-data script sets up (Linux `id -u NAME`, macOS `/Users/NAME`), as an AMI would. */
  function userOf(script: string): string | undefined {
    const m = /\bid -u ([a-z_][a-z0-9_-]*)|dscl \. -read \/Users\/([a-z_][a-z0-9_-]*)/.exec(script);
    return m?.[1] ?? m?.[2];
  }

  async function boot(inst: Inst, publicKey: string, username: string | undefined, hostKey: string | undefined): Promise<void> {
    const spec = {
      vmId: inst.id, name: inst.sandboxName, shard: 'ec2-emulator', className: 'ec2',
      labels: Object.fromEntries(inst.tags), publicKey, ...(hostKey ? { hostKey } : {}), machine: username ? { username } : {}, maxRunSeconds: 24 * 3600,
    };
    try {
      await local.create(spec);
      for (let t = 0; t < 3000 && !closing; t++) {
        if (inst.state !== 'pending') return;
        try {
          const info = local.connectInfo({ vmId: inst.id, name: inst.sandboxName, internalIp: '' }, '');
          inst.privateIp = info.host;
          inst.state = 'running';
          return;
        } catch {
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    } catch (err) {
      log.warn({ id: inst.id, err: (err as Error).message }, 'ec2 emulator: sandbox failed');
      inst.state = 'terminated';
      inst.terminatedAt = Date.now();
    }
  }

  function runInstances(p: Record<string, string>): Inst[] {
    const token = p['ClientToken'] ?? '';
    const { ClientToken: _t, ...rest } = p;
    const fingerprint = JSON.stringify(Object.entries(rest).sort());
    if (token && tokens.has(token)) {
      const prior = tokens.get(token)!;
      if (prior.params !== fingerprint) throw new Ec2Error('IdempotentParameterMismatch', `Arguments on this idempotent request are inconsistent with arguments used in previous request(s).`);
      return prior.ids.map((id) => instances.get(id)!);
    }
    const min = Number(p['MinCount'] ?? 1);
    const max = Number(p['MaxCount'] ?? min);
    if (!(min >= 1) || !(max >= min)) throw new Ec2Error('InvalidParameterValue', `MinCount ${p['MinCount']} / MaxCount ${p['MaxCount']} are not valid`);
    if (!/^ami-[0-9a-f]{8,17}$/.test(p['ImageId'] ?? '')) throw new Ec2Error('InvalidAMIID.Malformed', `Invalid id: "${p['ImageId']}"`);
    const subnetId = p['NetworkInterface.1.SubnetId'] ?? p['SubnetId'] ?? Object.keys(subnets)[0]!;
    const zone = subnets[subnetId];
    if (!zone) throw new Ec2Error('InvalidSubnetID.NotFound', `The subnet ID '${subnetId}' does not exist`);
    if (faults.instanceLimitExceeded) throw new Ec2Error('InstanceLimitExceeded', `You have requested more instances (${max}) than your current instance limit allows for the specified instance type.`);
    if (faults.noCapacitySubnets.has(subnetId)) {
      throw new Ec2Error('InsufficientInstanceCapacity', `We currently do not have sufficient ${p['InstanceType']} capacity in the Availability Zone you requested (${zone}). Our system will be working on provisioning additional capacity.`, 500);
    }
    const tags = new Map<string, string>();
    for (let i = 1; p[`TagSpecification.${i}.ResourceType`] !== undefined; i++) {
      if (p[`TagSpecification.${i}.ResourceType`] !== 'instance') continue;
      for (let j = 1; p[`TagSpecification.${i}.Tag.${j}.Key`] !== undefined; j++) tags.set(p[`TagSpecification.${i}.Tag.${j}.Key`]!, p[`TagSpecification.${i}.Tag.${j}.Value`] ?? '');
    }
    let host: Host | undefined;
    if (isMacType(p['InstanceType']) || p['Placement.Tenancy'] === 'host') {
      if (max !== 1) throw new Ec2Error('InvalidParameterCombination', 'One instance per Dedicated Host: MinCount and MaxCount must be 1.');
      host = placeOnHost(p, zone);
    }
    const userData = p['UserData'] ? Buffer.from(p['UserData'], 'base64').toString() : '';
    const keys = keysInUserData(userData);
    const hostKeys = hostKeysInUserData(userData);
    const reservationId = `r-${hex(9)}`;
    const out: Inst[] = [];
    for (let idx = 0; idx < max; idx++) {
      const id = `i-${hex(9)}`;
      const inst: Inst = { id, reservationId, sandboxName: `ec2-${id}`, state: 'pending', tags: new Map(tags), launchIndex: idx, clientToken: token, params: p, subnetId, zone, launchTime: new Date().toISOString(), launchedAt: Date.now() };
      if (host) {
        inst.hostId = host.id;
        host.instanceId = id;
      }
      instances.set(id, inst);
      out.push(inst);
      // Cloud-init: the key listed for this launch index, or a throwaway (nobody gets in).
      const key = keys.get(idx) ?? generateVmKeyPair(`${id}-nobody`).publicKey;
      // The user data's host key for this launch index, installed before sshd answers.
      const b = boot(inst, key, userOf(userData), hostKeys.get(idx));
      booting.add(b);
      void b.finally(() => booting.delete(b));
    }
    if (token) tokens.set(token, { params: fingerprint, ids: out.map((i) => i.id) });
    return out;
  }

  function instanceXml(i: Inst): string {
    const tagSet = [...i.tags].map(([k, v]) => `<item><key>${esc(k)}</key><value>${esc(v)}</value></item>`).join('');
    return `<item><instanceId>${i.id}</instanceId><imageId>${esc(i.params['ImageId'] ?? '')}</imageId><instanceState><code>${STATE_CODE[i.state]}</code><name>${i.state}</name></instanceState>${i.privateIp && i.state !== 'terminated' ? `<privateIpAddress>${i.privateIp}</privateIpAddress>` : ''}<amiLaunchIndex>${i.launchIndex}</amiLaunchIndex><instanceType>${esc(i.params['InstanceType'] ?? '')}</instanceType><launchTime>${i.launchTime}</launchTime><placement><availabilityZone>${i.zone}</availabilityZone><tenancy>${i.hostId ? 'host' : 'default'}</tenancy>${i.hostId ? `<hostId>${i.hostId}</hostId>` : ''}</placement><subnetId>${i.subnetId}</subnetId><clientToken>${esc(i.clientToken)}</clientToken><tagSet>${tagSet}</tagSet></item>`;
  }

  function matches(i: Inst, filters: { name: string; values: string[] }[]): boolean {
    return filters.every(({ name, values }) => {
      if (name.startsWith('tag:')) return values.includes(i.tags.get(name.slice(4)) ?? '\0');
      if (name === 'tag-key') return values.some((v) => i.tags.has(v));
      if (name === 'instance-state-name') return values.includes(i.state);
      if (name === 'instance-id') return values.includes(i.id);
      if (name === 'client-token') return values.includes(i.clientToken);
      throw new Ec2Error('InvalidParameterValue', `The filter '${name}' is invalid`);
    });
  }

  async function setState(ids: string[], to: 'terminate' | 'stop' | 'start'): Promise<string> {
    // Eventual consistency reaches every action that names a just-launched instance, not only
    // DescribeInstances: a terminate right after the launch may be told it does not exist.
    for (const id of ids) if (!instances.has(id) || !visible(instances.get(id)!) || lagging(instances.get(id)!)) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
    const items: string[] = [];
    for (const id of ids) {
      const i = instances.get(id)!;
      const prev = i.state;
      if (to === 'terminate' && i.state !== 'terminated') {
        i.state = 'terminated';
        i.terminatedAt = Date.now();
        leaveHost(i);
        await local.delete([{ vmId: i.id, name: i.sandboxName }]);
      } else if (to === 'stop' && (i.state === 'running' || i.state === 'pending')) {
        i.state = 'stopped';
        leaveHost(i);
      } else if (to === 'start' && i.state === 'stopped') {
        i.state = 'running';
      }
      items.push(`<item><instanceId>${id}</instanceId><currentState><code>${STATE_CODE[i.state]}</code><name>${i.state}</name></currentState><previousState><code>${STATE_CODE[prev]}</code><name>${prev}</name></previousState></item>`);
    }
    return `<instancesSet>${items.join('')}</instancesSet>`;
  }

  const app = Fastify({ logger: false, forceCloseConnections: true });
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => done(null, Object.fromEntries(new URLSearchParams(String(body)))));
  app.post('/', async (req, reply) => {
    const p = (req.body ?? {}) as Record<string, string>;
    const action = p['Action'] as Ec2Action;
    const requestId = `${hex(8)}-${hex(4)}`;
    const answer = (inner: string) => reply.type('text/xml').send(`<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>${requestId}</requestId>${inner}</${action}Response>`);
    try {
      if (!ACTIONS.includes(action)) throw new Ec2Error('InvalidAction', `The action ${action} is not valid for this web service.`);
      calls[action]++;
      if (faults.hangNext > 0) {
        faults.hangNext--;
        await new Promise<void>((r) => hung.add(r));
        throw new Ec2Error('ServiceUnavailable', 'emulator closing', 503);
      }
      if (faults.throttleNext > 0) {
        faults.throttleNext--;
        throw new Ec2Error('RequestLimitExceeded', 'Request limit exceeded.', 503);
      }
      if (faults.errorRate > 0 && random() < faults.errorRate) {
        throw random() < 0.5 ? new Ec2Error('RequestLimitExceeded', 'Request limit exceeded.', 503) : new Ec2Error('Unavailable', 'The server is overloaded and cannot handle the request.', 503);
      }
      switch (action) {
        case 'RunInstances': {
          const out = runInstances(p);
          return answer(`<reservationId>${out[0]!.reservationId}</reservationId><ownerId>000000000000</ownerId><groupSet/><instancesSet>${out.map(instanceXml).join('')}</instancesSet>`);
        }
        case 'DescribeInstances': {
          const ids = list(p, 'InstanceId');
          const filters: { name: string; values: string[] }[] = [];
          for (let i = 1; p[`Filter.${i}.Name`] !== undefined; i++) filters.push({ name: p[`Filter.${i}.Name`]!, values: list(p, `Filter.${i}.Value`) });
          for (const id of ids) if (!instances.has(id) || lagging(instances.get(id)!)) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
          const all = [...instances.values()].filter((i) => visible(i) && !lagging(i) && (ids.length === 0 || ids.includes(i.id)) && matches(i, filters));
          const max = Math.max(5, Math.min(1000, Number(p['MaxResults'] ?? 1000)));
          const start = Number(p['NextToken'] ?? 0);
          const page = all.slice(start, start + max);
          const next = start + max < all.length ? `<nextToken>${start + max}</nextToken>` : '';
          const byRes = new Map<string, Inst[]>();
          for (const i of page) byRes.set(i.reservationId, [...(byRes.get(i.reservationId) ?? []), i]);
          const res = [...byRes].map(([rid, is]) => `<item><reservationId>${rid}</reservationId><ownerId>000000000000</ownerId><groupSet/><instancesSet>${is.map(instanceXml).join('')}</instancesSet></item>`).join('');
          return answer(`<reservationSet>${res}</reservationSet>${next}`);
        }
        case 'TerminateInstances':
          return answer(await setState(list(p, 'InstanceId'), 'terminate'));
        case 'StopInstances':
          return answer(await setState(list(p, 'InstanceId'), 'stop'));
        case 'StartInstances':
          return answer(await setState(list(p, 'InstanceId'), 'start'));
        case 'AllocateHosts': {
          const type = p['InstanceType'];
          const zone = p['AvailabilityZone'] ?? '';
          if (!type) throw new Ec2Error('MissingParameter', 'The request must contain the parameter InstanceType');
          if (!Object.values(subnets).includes(zone)) throw new Ec2Error('InvalidParameterValue', `Invalid availability zone: [${zone}]`);
          const token = p['ClientToken'];
          if (token && hostTokens.has(token)) return answer(`<hostIdSet>${hostTokens.get(token)!.map((h) => `<item>${h}</item>`).join('')}</hostIdSet>`);
          if (faults.noHostCapacityZones.has(zone)) throw new Ec2Error('InsufficientHostCapacity', `There is no Dedicated Host capacity available for instance type ${type} in Availability Zone ${zone}.`);
          const quantity = Number(p['Quantity'] ?? 1);
          const tags = new Map<string, string>();
          for (let i = 1; p[`TagSpecification.${i}.ResourceType`] !== undefined; i++) {
            for (let j = 1; p[`TagSpecification.${i}.Tag.${j}.Key`] !== undefined; j++) tags.set(p[`TagSpecification.${i}.Tag.${j}.Key`]!, p[`TagSpecification.${i}.Tag.${j}.Value`] ?? '');
          }
          const ids: string[] = [];
          for (let n = 0; n < quantity; n++) {
            const id = `h-${hex(9)}`;
            hosts.set(id, { id, instanceType: type, zone, allocatedAt: now(), tags: new Map(tags) });
            ids.push(id);
          }
          if (token) hostTokens.set(token, ids);
          return answer(`<hostIdSet>${ids.map((h) => `<item>${h}</item>`).join('')}</hostIdSet>`);
        }
        case 'DescribeHosts': {
          const ids = list(p, 'HostId');
          const filters: { name: string; values: string[] }[] = [];
          for (let i = 1; p[`Filter.${i}.Name`] !== undefined; i++) filters.push({ name: p[`Filter.${i}.Name`]!, values: list(p, `Filter.${i}.Value`) });
          for (const id of ids) if (!hosts.has(id)) throw new Ec2Error('InvalidHostID.NotFound', `The host ID '${id}' does not exist`);
          const shown = [...hosts.values()].filter((h) => (ids.length === 0 || ids.includes(h.id)) && filters.every(({ name, values }) => {
            if (name.startsWith('tag:')) return values.includes(h.tags.get(name.slice(4)) ?? '\0');
            if (name === 'state') return values.includes(hostState(h));
            if (name === 'instance-type') return values.includes(h.instanceType);
            if (name === 'availability-zone') return values.includes(h.zone);
            throw new Ec2Error('InvalidParameterValue', `The filter '${name}' is invalid`);
          }));
          const items = shown.map((h) => {
            const inst = h.instanceId ? `<item><instanceId>${h.instanceId}</instanceId><instanceType>${esc(h.instanceType)}</instanceType></item>` : '';
            const tagSet = [...h.tags].map(([k, v]) => `<item><key>${esc(k)}</key><value>${esc(v)}</value></item>`).join('');
            return `<item><hostId>${h.id}</hostId><autoPlacement>off</autoPlacement><availabilityZone>${h.zone}</availabilityZone><hostProperties><instanceType>${esc(h.instanceType)}</instanceType><cores>8</cores><sockets>1</sockets><totalVCpus>8</totalVCpus></hostProperties><instances>${inst}</instances><state>${hostState(h)}</state><allocationTime>${new Date(h.allocatedAt).toISOString()}</allocationTime>${h.released !== undefined ? `<releaseTime>${new Date(h.released).toISOString()}</releaseTime>` : ''}<tagSet>${tagSet}</tagSet></item>`;
          });
          return answer(`<hostSet>${items.join('')}</hostSet>`);
        }
        case 'ReleaseHosts': {
          const ok: string[] = [];
          const bad: string[] = [];
          for (const id of list(p, 'HostId')) {
            const h = hosts.get(id);
            const fail = (code: string, message: string) => bad.push(`<item><resourceId>${id}</resourceId><error><code>${code}</code><message>${esc(message)}</message></error></item>`);
            if (!h || h.released !== undefined) fail('Client.InvalidHost.NotFound', `The host ID '${id}' does not exist or is released`);
            else if (h.instanceId) fail('Client.InvalidHostState', `Dedicated host ${id} still has instance ${h.instanceId}: stop or terminate it first`);
            else if (isMacType(h.instanceType) && now() - h.allocatedAt < MAC_MIN_ALLOCATION_MS) fail('Client.InvalidHostState', `Mac Dedicated Host ${id} cannot be released until 24 hours after allocation (${new Date(h.allocatedAt + MAC_MIN_ALLOCATION_MS).toISOString()})`);
            else {
              h.released = now();
              ok.push(`<item>${id}</item>`);
            }
          }
          return answer(`<successful>${ok.join('')}</successful><unsuccessful>${bad.join('')}</unsuccessful>`);
        }
        case 'DescribeSecurityGroups': {
          const ids = list(p, 'GroupId');
          for (const id of ids) if (!securityGroups.has(id)) throw new Ec2Error('InvalidGroup.NotFound', `The security group '${id}' does not exist`);
          const shown = ids.length ? ids.map((id) => securityGroups.get(id)!) : [...securityGroups.values()];
          const perm = (r: EmulatedSecurityGroup['ingress'][number]) =>
            `<item><ipProtocol>${esc(r.protocol)}</ipProtocol>${r.fromPort !== undefined ? `<fromPort>${r.fromPort}</fromPort><toPort>${r.toPort ?? r.fromPort}</toPort>` : ''}`
            + `<groups>${(r.groups ?? []).map((g) => `<item><userId>000000000000</userId><groupId>${esc(g)}</groupId></item>`).join('')}</groups>`
            + `<ipRanges>${(r.cidrs ?? []).map((c) => `<item><cidrIp>${esc(c)}</cidrIp></item>`).join('')}</ipRanges>`
            + `<ipv6Ranges>${(r.ipv6Cidrs ?? []).map((c) => `<item><cidrIpv6>${esc(c)}</cidrIpv6></item>`).join('')}</ipv6Ranges><prefixListIds/></item>`;
          const items = shown.map((g) => `<item><ownerId>000000000000</ownerId><groupId>${esc(g.groupId)}</groupId><groupName>${esc(g.groupName ?? g.groupId)}</groupName><groupDescription>emulated</groupDescription><vpcId>${esc(g.vpcId ?? 'vpc-0emulator')}</vpcId><ipPermissions>${g.ingress.map(perm).join('')}</ipPermissions><ipPermissionsEgress/></item>`);
          return answer(`<securityGroupInfo>${items.join('')}</securityGroupInfo>`);
        }
        case 'CreateSecurityGroup': {
          const name = p['GroupName'];
          const vpcId = p['VpcId'] ?? 'vpc-0emulator';
          if (!name) throw new Ec2Error('MissingParameter', 'The request must contain the parameter GroupName');
          if (!p['GroupDescription']) throw new Ec2Error('MissingParameter', 'The request must contain the parameter GroupDescription');
          if (/^sg-/i.test(name)) throw new Ec2Error('InvalidParameterValue', `Group names may not be in the format sg-*: ${name}`);
          if ([...securityGroups.values()].some((g) => g.groupName === name && (g.vpcId ?? 'vpc-0emulator') === vpcId)) throw new Ec2Error('InvalidGroup.Duplicate', `The security group '${name}' already exists for VPC '${vpcId}'`);
          const groupId = `sg-${hex(17)}`;
          securityGroups.set(groupId, { groupId, groupName: name, vpcId, ingress: [] });
          return answer(`<return>true</return><groupId>${groupId}</groupId>`);
        }
        case 'AuthorizeSecurityGroupIngress': {
          const g = securityGroups.get(p['GroupId'] ?? '');
          if (!g) throw new Ec2Error('InvalidGroup.NotFound', `The security group '${p['GroupId'] ?? ''}' does not exist`);
          const added: EmulatedSecurityGroup['ingress'] = [];
          for (let i = 1; p[`IpPermissions.${i}.IpProtocol`] !== undefined; i++) {
            const at = `IpPermissions.${i}`;
            const field = (sub: string, key: string) => { const out: string[] = []; for (let j = 1; p[`${at}.${sub}.${j}.${key}`] !== undefined; j++) out.push(p[`${at}.${sub}.${j}.${key}`]!); return out; };
            const protocol = p[`${at}.IpProtocol`]!;
            const ported = protocol !== '-1' && p[`${at}.FromPort`] !== undefined;
            const rule = {
              protocol,
              ...(ported ? { fromPort: Number(p[`${at}.FromPort`]), toPort: Number(p[`${at}.ToPort`] ?? p[`${at}.FromPort`]) } : {}),
              cidrs: field('IpRanges', 'CidrIp'), ipv6Cidrs: field('Ipv6Ranges', 'CidrIpv6'),
              // The Query API names a permission's UserIdGroupPairs `Groups`.
              groups: field('Groups', 'GroupId'),
            };
            for (const id of rule.groups) if (!securityGroups.has(id)) throw new Ec2Error('InvalidGroup.NotFound', `The security group '${id}' does not exist`);
            if (rule.cidrs.length + rule.ipv6Cidrs.length + rule.groups.length === 0) throw new Ec2Error('InvalidParameterValue', 'The request must contain a source: an IP range or a security group');
            if ([...g.ingress, ...added].some((r) => JSON.stringify(r) === JSON.stringify(rule))) throw new Ec2Error('InvalidPermission.Duplicate', `the specified rule "peer: ${[...rule.cidrs, ...rule.groups].join(', ')}, ${protocol.toUpperCase()}" already exists`);
            added.push(rule);
          }
          if (added.length === 0) throw new Ec2Error('MissingParameter', 'The request must contain the parameter IpPermissions');
          g.ingress.push(...added);
          return answer('<return>true</return>');
        }
        case 'CreateTags': {
          const ids = list(p, 'ResourceId');
          for (const id of ids) if (!instances.has(id)) throw new Ec2Error('InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
          for (const id of ids) for (let j = 1; p[`Tag.${j}.Key`] !== undefined; j++) instances.get(id)!.tags.set(p[`Tag.${j}.Key`]!, p[`Tag.${j}.Value`] ?? '');
          return answer('<return>true</return>');
        }
      }
    } catch (err) {
      const e = err instanceof Ec2Error ? err : new Ec2Error('InternalError', (err as Error).message, 500);
      return reply
        .code(e.status)
        .type('text/xml')
        .send(`<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${e.code}</Code><Message>${esc(e.message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`);
    }
  });
  app.addHook('onSend', async (req, reply, payload) => {
    const action = ((req.body ?? {}) as Record<string, string>)['Action'] ?? '';
    const m = faults.mangle?.(action, typeof payload === 'string' ? payload : Buffer.isBuffer(payload) ? payload.toString() : '');
    if (!m) return payload;
    reply.code(m.status ?? 200).type(m.contentType ?? 'text/xml');
    return m.body;
  });

  // Chaos after the fact: the action was done (an instance launched, a terminate begun), but the
  // client hears a 503, or nothing at all. Its retry, with the same ClientToken, must find it done.
  app.addHook('onSend', async (req, reply, payload) => {
    const action = ((req.body ?? {}) as Record<string, string>)['Action'] ?? '';
    if (!MUTATING.has(action) || reply.statusCode >= 400 || !(faults.errorAfterRate > 0) || random() >= faults.errorAfterRate) return payload;
    if (random() < faults.lostShare) {
      req.raw.socket?.destroy();
      return payload;
    }
    reply.code(503).type('text/xml');
    return `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>Unavailable</Code><Message>The server is overloaded and cannot handle the request.</Message></Error></Errors><RequestID>${hex(8)}</RequestID></Response>`;
  });
  const address = await app.listen({ host, port: opts.port ?? 0 });

  return {
    connectOverride: ec2ConnectOverride(dataDir),
    url: address.replace('localhost', host),
    faults,
    calls,
    runRequest: (id) => instances.get(id)?.params,
    instances: () => [...instances.values()].filter(visible).map((i) => ({ id: i.id, state: i.state, tags: Object.fromEntries(i.tags), subnetId: i.subnetId, ...(i.privateIp ? { privateIp: i.privateIp } : {}), launchIndex: i.launchIndex, ...(i.hostId ? { hostId: i.hostId } : {}) })),
    setSecurityGroups: (groups) => {
      securityGroups.clear();
      for (const g of groups) securityGroups.set(g.groupId, g);
    },
    hosts: () => [...hosts.values()].map((h) => ({ id: h.id, state: hostState(h), instanceType: h.instanceType, zone: h.zone, allocatedAt: h.allocatedAt, ...(h.instanceId ? { instanceId: h.instanceId } : {}) })),
    resetCalls() {
      for (const a of ACTIONS) calls[a] = 0;
    },
    async close() {
      closing = true;
      for (const r of hung) r();
      await Promise.allSettled([...booting]);
      await app.close();
      await local.delete([...instances.values()].map((i) => ({ vmId: i.id, name: i.sandboxName })));
      await local.close();
      if (ownDataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
