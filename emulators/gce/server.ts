// A Compute Engine v1 REST emulator: the wire format the real InstancesClient/ZoneOperationsClient
// send in REST fallback mode (instances insert/bulkInsert/get/list/aggregatedList/delete/
// setMetadata/setLabels/stop/start/suspend/resume/getSerialPortOutput, zoneOperations get/wait,
// firewalls list/insert with their global operations), GCE's error
// JSON, fault injection (stockouts, 429s, quota, hung calls), and instances that are real SSH
// sandboxes (the local provider's) on their own loopback address, or for benches real OpenSSH
// sshds there (vmPeers: 'sshd', sshd-peers.ts). Used by tests, demo, benches.
import { constants as cryptoConstants, createHash, createPublicKey, publicEncrypt, randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { pino, type Logger } from 'pino';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { LocalProvider } from '../../src/providers/local/provider.js';
import { loopbackAddress } from '../../src/providers/local/layout.js';
import { gceConnectOverride } from '../connect-override.js';
import { SshdPeers } from './sshd-peers.js';
import { HOST_KEY_ITEM } from '../../src/providers/gcp/insert-body.js';
import type { ConnectOverride } from '../../src/providers/provider.js';
import { FilterError, matchFilter, parseFilter } from './filter.js';

/** The only user a sandbox accepts (the local provider's USERNAME). */
export const SANDBOX_USER = 'runner';

export type GceCall =
  | 'insert'
  | 'bulkInsert'
  | 'get'
  | 'list'
  | 'aggregatedList'
  | 'delete'
  | 'operationsGet'
  | 'operationsWait'
  | 'setMetadata'
  | 'setLabels'
  | 'stop'
  | 'start'
  | 'suspend'
  | 'resume'
  | 'serialPort'
  | 'guestAttributes'
  | 'firewallsList'
  | 'firewallsInsert'
  | 'globalOperationsGet';

// Each route's config names its Compute call (counts, injected faults). Declared because a typed
// FastifyContextConfig (@fastify/swagger's, in the same program) refuses unknown keys.
declare module 'fastify' {
  interface FastifyContextConfig {
    call?: GceCall;
  }
}

const CALLS: GceCall[] = ['insert', 'bulkInsert', 'get', 'list', 'aggregatedList', 'delete', 'operationsGet', 'operationsWait', 'setMetadata', 'setLabels', 'stop', 'start', 'suspend', 'resume', 'serialPort', 'guestAttributes', 'firewallsList', 'firewallsInsert', 'globalOperationsGet'];

export interface GceFaults {
  /** Inserts into these zones finish DONE with a ZONE_RESOURCE_POOL_EXHAUSTED operation error. */
  stockoutZones: Set<string>;
  /** Stockouts answer the insert itself with HTTP 503 `insufficientCapacity` instead. */
  stockoutAsHttp: boolean;
  /** Answer the next N API calls with rateLimitExceeded. */
  rateLimitNext: number;
  /** HTTP status of those answers: 429 (default) or 403. */
  rateLimitStatus: 403 | 429;
  /** Inserts answer 403 quotaExceeded while set. */
  quotaExceeded: boolean;
  /** The next N setMetadata calls answer RUNNING, change nothing, and their operation ends in an error. */
  failMetadataOps: number;
  /** The next N API calls never answer (until hangForMs passes, releaseHung() or close()). */
  hangNext: number;
  /** If > 0, a hung call answers 503 backendError after this long; 0 = never. */
  hangForMs: number;
  /** Answer the next API call with this error (once). */
  failNextWith?: { status: number; reason: string; message: string };
  /**
   * Zone -> until when (epoch ms, Infinity = until removed) aggregatedList cannot reach it. As
   * GCE does, that zone's scope then holds no instances and an UNREACHABLE warning, and with
   * returnPartialSuccess the answer's `unreachables` names it. Zonal calls are not affected.
   */
  unreachableZones: Map<string, number>;
  /** Chaos (0..1): share of API calls answered 429 rateLimitExceeded or 503 backendError before they act. */
  errorRate: number;
  /** Chaos (0..1): share of mutating calls (insert, delete, setLabels...) that act, then answer 503 anyway. */
  errorAfterRate: number;
  /** Of those, the share whose answer is lost instead (the connection drops: no status at all). */
  lostShare: number;
  /**
   * Fuzz: while set, a call's answer is replaced by what this returns for it (given the real
   * body, after the call acted); undefined leaves that answer alone.
   */
  mangle?: (call: GceCall, body: string) => { status?: number; body: string; contentType?: string } | undefined;
}

/** Calls that change something: the ones whose answer may be lost after they acted. */
const MUTATING: ReadonlySet<GceCall> = new Set(['insert', 'bulkInsert', 'delete', 'setMetadata', 'setLabels', 'stop', 'start', 'suspend', 'resume']);

export type InstanceStatus = 'PROVISIONING' | 'STAGING' | 'RUNNING' | 'STOPPING' | 'TERMINATED' | 'SUSPENDING' | 'SUSPENDED';
type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface GceEmulatorOptions {
  host?: string;
  port?: number;
  /** Where VM sandboxes live; a temporary directory (removed on close) by default. */
  dataDir?: string;
  log?: Logger;
  /** How long a sandbox boots before it listens (instance STAGING meanwhile). */
  bootDelayMs?: number;
  /** The longest an operations/wait call blocks before answering a RUNNING operation (GCE: ~2 min). */
  waitMaxMs?: number;
  /**
   * How long a setMetadata operation stays RUNNING after its answer (default 100 ms). GCE answers
   * the call with a RUNNING operation; the metadata itself is visible at once here.
   */
  metadataOpMs?: number;
  /** How long a sandbox may take to listen before its instance is TERMINATED. */
  bootTimeoutMs?: number;
  /**
   * How long a finished operation (and its requestId) is kept (default 60 min: GCE keeps a
   * requestId for at least 60 minutes). Soak benchmarks shorten it so the emulator stays flat.
   */
  operationRetentionMs?: number;
  /** Test hook: a directory put first on every VM's PATH (e.g. a `powershell.exe` shim for Windows VMs). */
  extraPathDir?: string;
  /** Randomness of the chaos faults (errorRate...), in [0, 1); Math.random by default. */
  random?: () => number;
  /** Scheduling priority (nice) of the VM sandboxes, set as each is spawned (benches: VMs are other machines). */
  sandboxNice?: number;
  /** A cgroup's `cgroup.procs` file every VM sandbox is moved into (benches: see LocalProviderConfig.cgroupProcs). */
  sandboxCgroupProcs?: string;
  /**
   * At most this many sandboxes booting at once (default: no limit); the rest wait, PROVISIONING.
   * Benches: 1,000 Node sandboxes started together on 2 cores thrashed (23 listening after 8 min).
   */
  maxConcurrentBoots?: number;
  /**
   * The project's zones: GCE names each in every aggregatedList answer, empty ones with a
   * NO_RESULTS_ON_PAGE warning, even before anything ran there. Zones a call names are added.
   */
  zones?: string[];
  /**
   * What a VM is: a local-provider sandbox (a Node ssh2 server, ~0.25 s of CPU to start; the
   * default) or, for benches, a real OpenSSH sshd (a few ms; needs root, /usr/sbin/sshd and the
   * user SANDBOX_USER: see sshd-peers.ts). sandboxNice and sandboxCgroupProcs apply to both.
   */
  vmPeers?: 'sandbox' | 'sshd';
}

/** What the emulator asks of its VMs: the local provider's sandboxes or sshd peers. */
type VmPeers = Pick<LocalProvider, 'create' | 'delete' | 'describe' | 'sandboxes' | 'connectInfo' | 'setAuthorizedKey' | 'setHostKey' | 'hostPublicKey' | 'freeze'>;

/** Zones of a project by default (a subset of GCE's). */
export const DEFAULT_GCE_ZONES = ['us-central1-a', 'us-central1-b', 'us-central1-c', 'us-central1-f', 'us-east1-b', 'us-east1-c', 'us-east1-d', 'europe-west1-b', 'europe-west1-c', 'europe-west1-d'];

export interface GceEmulator {
  /** `http://host:port`, for a provider's `endpoint`. */
  url: string;
  host: string;
  port: number;
  faults: GceFaults;
  /** API calls answered (or faulted), per method. */
  calls: Record<GceCall, number>;
  /** Plaintext Windows passwords the emulated agent generated, by `instanceName/userName`. */
  windowsPasswords: Map<string, string>;
  /** Boot delay for instances booted from now on. */
  bootDelayMs: number;
  /** How long a suspend (writing memory out) and a resume (reading it back) take. */
  suspendDelayMs: number;
  resumeDelayMs: number;
  /** Root directory of the VM sandboxes. */
  sandboxRoot: string;
  /** Where each instance's sshd listens, for startShard's connectOverride (test tools only). */
  connectOverride: ConnectOverride;
  /** The insert body received for this instance (bulkInsert: the effective per-instance body). */
  inserted(name: string): Json | undefined;
  /** The Instance resource as `get` would answer it, or undefined. */
  instance(name: string, zone?: string): Json | undefined;
  /** Every instance resource. */
  instances(): Json[];
  /** Resolves once the instance is RUNNING (its sandbox listens). */
  waitRunning(name: string, timeoutMs?: number): Promise<Json>;
  /** Append to an instance's serial port output. */
  serialWrite(name: string, port: number, text: string): void;
  /**
   * Replace a project's firewall rules (as `firewalls.insert` bodies: name, network, priority,
   * direction, sourceRanges, sourceTags, targetTags, allowed, denied, ...); `firewalls.list`
   * answers them with GCE's defaults and links filled in.
   */
  setFirewalls(project: string, rules: Json[]): void;
  resetCalls(): void;
  /** Calls held open by `hangNext` right now (a client that gives up releases its call). */
  hungCalls(): number;
  /** Answer every hung call with 503 backendError now; returns how many there were. */
  releaseHung(): number;
  /** Deletes every sandbox and stops the server. */
  close(): Promise<void>;
}

interface Inst {
  project: string;
  zone: string;
  name: string;
  id: string;
  sandboxName: string;
  body: Json;
  res: Json;
  serial: Map<number, string>;
  windowsKeysDone: Set<string>;
  /** The sandbox's create call, so a delete never races it. */
  creating?: Promise<unknown>;
  /** Bumped by delete/stop: an older boot loop gives up. */
  generation: number;
  maxRunTimer?: NodeJS.Timeout;
  runningWaiters: (() => void)[];
}

interface Op {
  json: Json;
  done: Promise<void>;
  finish(err?: { code: string; message: string; http?: number }): void;
}

const NAME_RE = /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const now = () => new Date().toISOString();

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly domain = 'global',
  ) {
    super(message);
  }
}

/** GCE's error body. */
export function gceErrorBody(status: number, reason: string, message: string, domain = 'global'): Json {
  return { error: { code: status, message, errors: [{ message, domain, reason }] } };
}

function fingerprint(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value ?? null)).digest().subarray(0, 8).toString('base64');
}

function lastSegment(u: unknown): string {
  return typeof u === 'string' ? (u.split('/').pop() ?? u) : '';
}

/** A Windows-ish random password: upper, lower, digit and symbol, 15 characters. */
function windowsPassword(): string {
  const sets = ['ABCDEFGHJKLMNPQRSTUVWXYZ', 'abcdefghijkmnopqrstuvwxyz', '23456789', '!#%()*+,-./:;<=>?@[]^_{|}~'];
  const all = sets.join('');
  const chars = sets.map((s) => s[randomInt(s.length)]!);
  while (chars.length < 15) chars.push(all[randomInt(all.length)]!);
  for (let i = chars.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [chars[i], chars[j]] = [chars[j]!, chars[i]!];
  }
  return chars.join('');
}

export async function startGceEmulator(opts: GceEmulatorOptions = {}): Promise<GceEmulator> {
  const host = opts.host ?? '127.0.0.1';
  if (!/^127\./.test(host) && host !== 'localhost') throw new Error(`GCE emulator: host ${host} is not a loopback address`);
  const log = opts.log ?? pino({ level: 'silent' });
  const ownDataDir = !opts.dataDir;
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'gce-emu-'));
  const sandboxRoot = join(dataDir, 'gce-vms');
  const peerOpts = { ...(opts.extraPathDir ? { extraPathDir: opts.extraPathDir } : {}), ...(opts.sandboxNice !== undefined ? { nice: opts.sandboxNice } : {}), ...(opts.sandboxCgroupProcs ? { cgroupProcs: opts.sandboxCgroupProcs } : {}) };
  const sshdPeers = opts.vmPeers === 'sshd' ? new SshdPeers({ root: sandboxRoot, user: SANDBOX_USER, ...peerOpts }) : undefined;
  const local: VmPeers = sshdPeers ?? new LocalProvider({ bootDelayMs: 0, dir: sandboxRoot, ...peerOpts }, { shard: 'gce-emulator', dataDir, log });
  const waitMaxMs = opts.waitMaxMs ?? 30_000;
  const bootTimeoutMs = opts.bootTimeoutMs ?? 60_000;

  const faults: GceFaults = {
    stockoutZones: new Set(), stockoutAsHttp: false, rateLimitNext: 0, rateLimitStatus: 429, quotaExceeded: false, failMetadataOps: 0, hangNext: 0, hangForMs: 0,
    unreachableZones: new Map(), errorRate: 0, errorAfterRate: 0, lostShare: 0,
  };
  const random = opts.random ?? Math.random;
  const unreachable = (zone: string) => (faults.unreachableZones.get(zone) ?? 0) > Date.now();
  const calls = Object.fromEntries(CALLS.map((c) => [c, 0])) as Record<GceCall, number>;
  const windowsPasswords = new Map<string, string>();
  const instances = new Map<string, Inst>(); // `${project}/${zone}/${name}`
  const operations = new Map<string, Op>(); // `${project}/${zone}/${opName}`
  const requestIds = new Map<string, Op>(); // `${project}/${requestId}`
  const inserted = new Map<string, Json>();
  /** Deleted instances, by name: their insert bodies are forgotten with the operations' retention. */
  const removedAt = new Map<string, number>();
  const firewalls = new Map<string, Json[]>(); // project -> Firewall resources
  const hung = new Set<() => void>();
  const hungFaults = new Set<() => void>();
  /** The project's zones and any a call named: aggregatedList mentions each, as GCE mentions every zone. */
  const knownZones = new Set<string>(opts.zones ?? DEFAULT_GCE_ZONES);
  let closing = false;
  let nextId = BigInt(`${1_000_000_000 + randomInt(1_000_000_000)}000000000`);
  let base = '';

  const emu: GceEmulator = {
    url: '',
    host,
    port: 0,
    faults,
    calls,
    windowsPasswords,
    bootDelayMs: opts.bootDelayMs ?? 0,
    suspendDelayMs: 50,
    resumeDelayMs: 50,
    sandboxRoot,
    connectOverride: gceConnectOverride(dataDir),
    inserted: (name) => inserted.get(name),
    instance: (name, zone) => findInst(name, zone)?.res,
    instances: () => [...instances.values()].map((i) => i.res),
    waitRunning: async (name, timeoutMs = 30_000) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const inst = findInst(name);
        if (inst?.res['status'] === 'RUNNING') return inst.res;
        if (Date.now() > end) throw new Error(`GCE emulator: ${name} not RUNNING after ${timeoutMs} ms (status ${inst?.res['status'] ?? 'absent'})`);
        await sleep(25);
      }
    },
    serialWrite: (name, port, text) => {
      const inst = findInst(name);
      if (inst) serialAppend(inst, port, text);
    },
    setFirewalls: (project, rules) => {
      firewalls.set(project, rules.map((r, i) => firewallResource(project, r, i)));
    },
    hungCalls: () => hungFaults.size,
    releaseHung: () => {
      const n = hungFaults.size;
      for (const release of [...hungFaults]) release();
      return n;
    },
    resetCalls: () => {
      for (const c of CALLS) calls[c] = 0;
    },
    close: async () => {
      closing = true;
      for (const release of [...hung]) release();
      hung.clear();
      for (const inst of instances.values()) {
        inst.generation++;
        if (inst.maxRunTimer) clearTimeout(inst.maxRunTimer);
      }
      await Promise.allSettled([...instances.values()].map((i) => i.creating));
      const names = new Set([...instances.values()].map((i) => i.sandboxName));
      try {
        for (const vm of local.sandboxes()) names.add(vm.name);
      } catch {
        // the root is gone already
      }
      await local.delete([...names].map((name) => ({ vmId: name, name })));
      await sshdPeers?.close();
      instances.clear();
      await app.close();
      if (ownDataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };

  const zoneUrl = (project: string, zone: string) => `${base}/compute/v1/projects/${project}/zones/${zone}`;
  const key = (project: string, zone: string, name: string) => `${project}/${zone}/${name}`;
  function findInst(name: string, zone?: string): Inst | undefined {
    for (const i of instances.values()) if (i.name === name && (!zone || i.zone === zone)) return i;
    return undefined;
  }
  function serialAppend(inst: Inst, port: number, text: string): void {
    inst.serial.set(port, (inst.serial.get(port) ?? '') + text);
  }
  const notFound = (what: string) => new HttpError(404, 'notFound', `The resource '${what}' was not found`);

  /** A firewall as the API returns it: defaults filled in, the network as a full URL. */
  function firewallResource(project: string, r: Json, i: number): Json {
    const network = String(r['network'] ?? 'global/networks/default');
    const name = String(r['name'] ?? `rule-${i}`);
    return {
      kind: 'compute#firewall',
      id: String(nextId++),
      creationTimestamp: now(),
      priority: 1000,
      direction: 'INGRESS',
      disabled: false,
      logConfig: { enable: false },
      ...r,
      name,
      network: network.startsWith('http') ? network : `${base}/compute/v1/${network.startsWith('projects/') ? network : `projects/${project}/${network}`}`,
      selfLink: `${base}/compute/v1/projects/${project}/global/firewalls/${name}`,
    };
  }

  /** The checks firewalls.insert makes on its body (compute/docs/reference/rest/v1/firewalls/insert). */
  function validateFirewall(project: string, body: Json): void {
    const name = body['name'];
    const bad = (field: string, why: string) => new HttpError(400, 'invalid', `Invalid value for field 'resource.${field}': '${JSON.stringify(body[field] ?? null)}'. ${why}`);
    if (typeof name !== 'string' || !/^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/.test(name)) throw bad('name', 'Must be a match of regex \'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)\'');
    if ((firewalls.get(project) ?? []).some((f) => f['name'] === name)) throw new HttpError(409, 'alreadyExists', `The resource 'projects/${project}/global/firewalls/${name}' already exists`);
    const direction = body['direction'] ?? 'INGRESS';
    if (direction !== 'INGRESS' && direction !== 'EGRESS') throw bad('direction', 'Must be INGRESS or EGRESS.');
    const priority = body['priority'] ?? 1000;
    if (!Number.isInteger(priority) || (priority as number) < 0 || (priority as number) > 65535) throw bad('priority', 'Must be between 0 and 65535.');
    const has = (k: string) => Array.isArray(body[k]) && (body[k] as unknown[]).length > 0;
    if (has('allowed') === has('denied')) throw new HttpError(400, 'invalid', `Invalid value for field 'resource': exactly one of 'allowed' or 'denied' must be set.`);
    if (direction === 'EGRESS' && (has('sourceRanges') || has('sourceTags') || has('sourceServiceAccounts'))) throw bad('sourceRanges', 'Source ranges, tags and service accounts apply to INGRESS rules only.');
    if (direction === 'INGRESS' && has('destinationRanges')) throw bad('destinationRanges', 'Destination ranges apply to EGRESS rules only.');
    for (const e of [...((body['allowed'] ?? []) as Json[]), ...((body['denied'] ?? []) as Json[])]) {
      if (typeof e['IPProtocol'] !== 'string') throw bad('allowed', 'Every entry needs an IPProtocol.');
      if (e['ports'] !== undefined && !['tcp', 'udp', 'sctp'].includes(String(e['IPProtocol']))) throw bad('allowed', 'Ports apply to tcp, udp and sctp only.');
    }
  }

  // ---- operations ----
  function newOp(project: string, zone: string, type: string, targetLink: string, targetId: string | undefined, reqId: string | undefined): Op {
    const name = `operation-${Date.now()}-${randomBytes(6).toString('hex')}-${randomBytes(4).toString('hex')}-${randomBytes(4).toString('hex')}`;
    const t = now();
    const json: Json = {
      kind: 'compute#operation',
      id: String(nextId++),
      name,
      zone: zoneUrl(project, zone),
      operationType: type,
      targetLink,
      ...(targetId ? { targetId } : {}),
      status: 'RUNNING',
      user: 'emulator@runner-fleet.invalid',
      progress: 0,
      insertTime: t,
      startTime: t,
      selfLink: `${zoneUrl(project, zone)}/operations/${name}`,
    };
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    const op: Op = {
      json,
      done,
      finish(err) {
        if (json['status'] === 'DONE') return;
        json['status'] = 'DONE';
        json['progress'] = 100;
        json['endTime'] = now();
        if (err) {
          json['error'] = { errors: [{ code: err.code, message: err.message }] };
          json['httpErrorStatusCode'] = err.http ?? 400;
          json['httpErrorMessage'] = err.http === 503 ? 'SERVICE UNAVAILABLE' : err.http === 403 ? 'FORBIDDEN' : 'BAD REQUEST';
        }
        resolve();
      },
    };
    pruneOperations();
    operations.set(key(project, zone, name), op);
    if (reqId) requestIds.set(`${project}/${reqId}`, op);
    return op;
  }

  /** Forget finished operations past their retention, oldest first (maps keep insertion order). */
  function pruneOperations(): void {
    const before = Date.now() - (opts.operationRetentionMs ?? 3600_000);
    for (const [k, op] of operations) {
      if (op.json['status'] !== 'DONE' || Date.parse(String(op.json['endTime'])) > before) break;
      operations.delete(k);
    }
    for (const [k, op] of requestIds) {
      if (op.json['status'] !== 'DONE' || Date.parse(String(op.json['endTime'])) > before) break;
      requestIds.delete(k);
    }
    for (const [name, at] of removedAt) {
      if (at > before) break;
      removedAt.delete(name);
      if (![...instances.values()].some((i) => i.name === name)) inserted.delete(name);
    }
  }

  /** The operation a request with this requestId already started, if any. */
  function replay(project: string, reqId: string | undefined): Op | undefined {
    return reqId ? requestIds.get(`${project}/${reqId}`) : undefined;
  }

  // ---- instances ----
  function buildInstance(project: string, zone: string, body: Json, sandboxName: string): Json {
    const name = body['name'] as string;
    const zUrl = zoneUrl(project, zone);
    const mt = typeof body['machineType'] === 'string' && body['machineType'] ? (body['machineType'] as string) : 'e2-medium';
    const items = Array.isArray(body['metadata']?.['items']) ? (body['metadata']['items'] as Json[]).map((i) => ({ key: String(i['key']), value: i['value'] ?? '' })) : [];
    const labels = { ...(body['labels'] ?? {}) } as Record<string, string>;
    const nics = (Array.isArray(body['networkInterfaces']) && body['networkInterfaces'].length ? body['networkInterfaces'] : [{}]) as Json[];
    const disks = (Array.isArray(body['disks']) ? body['disks'] : []) as Json[];
    return {
      kind: 'compute#instance',
      id: String(nextId++),
      creationTimestamp: now(),
      name,
      ...(body['description'] ? { description: body['description'] } : {}),
      tags: { items: body['tags']?.['items'] ?? [], fingerprint: fingerprint(body['tags']?.['items'] ?? []) },
      machineType: mt.startsWith('http') ? mt : `${zUrl}/machineTypes/${lastSegment(mt)}`,
      status: 'PROVISIONING',
      zone: zUrl,
      canIpForward: body['canIpForward'] ?? false,
      networkInterfaces: nics.map((ni, idx) => ({
        kind: 'compute#networkInterface',
        network: ni['network'] ? (String(ni['network']).startsWith('http') ? ni['network'] : `${base}/compute/v1/${ni['network']}`) : `${base}/compute/v1/projects/${project}/global/networks/default`,
        ...(ni['subnetwork'] ? { subnetwork: String(ni['subnetwork']).startsWith('http') ? ni['subnetwork'] : `${base}/compute/v1/${ni['subnetwork']}` } : {}),
        // A distinct loopback host per VM, as an internal address; extra NICs get a private address.
        networkIP: idx === 0 ? loopbackAddress(sandboxName) : `10.128.${idx}.${randomInt(2, 250)}`,
        name: `nic${idx}`,
        accessConfigs: (Array.isArray(ni['accessConfigs']) ? ni['accessConfigs'] : []).map((a: Json) => ({ kind: 'compute#accessConfig', type: 'ONE_TO_ONE_NAT', name: a['name'] ?? 'External NAT', networkTier: a['networkTier'] ?? 'PREMIUM' })),
        fingerprint: fingerprint([name, idx]),
        stackType: ni['stackType'] ?? 'IPV4_ONLY',
      })),
      disks: disks.map((d, idx) => {
        const image = String(d['initializeParams']?.['sourceImage'] ?? '');
        const windows = /windows/i.test(image);
        const deviceName = d['deviceName'] ?? (idx === 0 ? name : `${name}-${idx}`);
        return {
          kind: 'compute#attachedDisk',
          type: d['type'] ?? 'PERSISTENT',
          mode: d['mode'] ?? 'READ_WRITE',
          source: d['source'] ?? `${zUrl}/disks/${idx === 0 ? name : `${name}-${idx}`}`,
          deviceName,
          index: idx,
          boot: d['boot'] ?? idx === 0,
          autoDelete: d['autoDelete'] ?? false,
          interface: d['interface'] ?? 'SCSI',
          diskSizeGb: String(d['initializeParams']?.['diskSizeGb'] ?? 10),
          guestOsFeatures: [...(d['guestOsFeatures'] ?? []), ...(windows ? [{ type: 'WINDOWS' }, { type: 'MULTI_IP_SUBNET' }] : [{ type: 'VIRTIO_SCSI_MULTIQUEUE' }])],
          architecture: /arm64/i.test(image) ? 'ARM64' : 'X86_64',
        };
      }),
      metadata: { kind: 'compute#metadata', fingerprint: fingerprint(items), items },
      serviceAccounts: body['serviceAccounts'] ?? [],
      selfLink: `${zUrl}/instances/${name}`,
      scheduling: { onHostMaintenance: 'MIGRATE', automaticRestart: true, preemptible: false, provisioningModel: 'STANDARD', ...(body['scheduling'] ?? {}) },
      cpuPlatform: 'Intel Broadwell',
      labels,
      labelFingerprint: fingerprint(labels),
      guestAccelerators: body['guestAccelerators'] ?? [],
      ...(body['shieldedInstanceConfig'] ? { shieldedInstanceConfig: body['shieldedInstanceConfig'] } : {}),
      ...(body['advancedMachineFeatures'] ? { advancedMachineFeatures: body['advancedMachineFeatures'] } : {}),
      startRestricted: false,
      deletionProtection: body['deletionProtection'] ?? false,
      fingerprint: fingerprint([name, Date.now()]),
    };
  }

  function metadataItem(inst: Inst, k: string): string | undefined {
    return (inst.res['metadata']['items'] as Json[]).find((i) => i['key'] === k)?.['value'];
  }

  function setMetadataItems(inst: Inst, items: Json[]): void {
    inst.res['metadata'] = { kind: 'compute#metadata', items, fingerprint: fingerprint(items) };
  }

  /** The key the sandbox accepts: the first `USER:ssh-... ` entry of `ssh-keys`, or a throwaway. */
  function sandboxKey(inst: Inst): string {
    for (const line of (metadataItem(inst, 'ssh-keys') ?? '').split('\n')) {
      const m = /^[^:\s]+:(ssh-\S+ \S+.*)$/.exec(line.trim());
      if (m) return m[1]!.trim();
    }
    return generateVmKeyPair(`${inst.name}-nobody`).publicKey;
  }

  /**
   * The guest agent: installs the current `ssh-keys` key in a running (or booting) sandbox, and
   * the startup script the manager's host key (the sandbox's sshd reloads with it).
   */
  function applyGuestKey(inst: Inst): void {
    const hostKey = metadataItem(inst, HOST_KEY_ITEM);
    try {
      if (metadataItem(inst, 'ssh-keys') !== undefined) local.setAuthorizedKey(inst.sandboxName, sandboxKey(inst));
      if (hostKey) local.setHostKey(inst.sandboxName, hostKey);
    } catch (err) {
      log.warn({ name: inst.name, err: (err as Error).message }, 'gce emulator: could not install ssh keys');
    }
  }

  function setStatus(inst: Inst, status: InstanceStatus): void {
    inst.res['status'] = status;
    if (status === 'RUNNING') {
      inst.res['lastStartTimestamp'] = now();
      for (const w of inst.runningWaiters.splice(0)) w();
    }
    if (status === 'TERMINATED') inst.res['lastStopTimestamp'] = now();
    if (status === 'SUSPENDED') inst.res['lastSuspendedTimestamp'] = now();
  }

  let spawnChain: Promise<void> = Promise.resolve();
  const bootLimit = opts.maxConcurrentBoots ?? Infinity;
  let booting = 0;
  const bootQueue: (() => void)[] = [];
  const bootSlot = (): Promise<void> => {
    if (booting < bootLimit) {
      booting++;
      return Promise.resolve();
    }
    return new Promise((r) => bootQueue.push(r));
  };
  const freeBootSlot = (): void => {
    const next = bootQueue.shift();
    if (next) next();
    else booting--;
  };
  /** Resolves on a later event-loop turn than every earlier caller's: sandbox starts never pile up in one turn. */
  function spawnTurn(): Promise<void> {
    const turn = spawnChain.then(() => new Promise<void>((r) => setImmediate(r)));
    spawnChain = turn;
    return turn;
  }

  /** PROVISIONING -> STAGING (sandbox starting) -> RUNNING (sandbox listening; its port is for connectOverride only). */
  async function boot(inst: Inst): Promise<boolean> {
    const gen = inst.generation;
    setStatus(inst, 'STAGING');
    serialAppend(inst, 1, `${now()} emulator: booting ${inst.name}\n`);
    const maxRun = Number(inst.res['scheduling']?.['maxRunDuration']?.['seconds'] ?? 0);
    const spec = {
      vmId: inst.res['labels']?.['runner-fleet-vm'] ?? inst.name,
      name: inst.sandboxName,
      shard: 'gce-emulator',
      className: 'gce',
      labels: { ...(inst.res['labels'] as Record<string, string>) },
      publicKey: sandboxKey(inst),
      ...(metadataItem(inst, HOST_KEY_ITEM) ? { hostKey: metadataItem(inst, HOST_KEY_ITEM)! } : {}),
      machine: { bootDelayMs: emu.bootDelayMs },
      maxRunSeconds: maxRun > 0 ? maxRun + 60 : 24 * 3600,
    };
    // Started on its own turn of the event loop, one at a time: GCE answers an insert at once, and
    // a bulkInsert of 100 spawning 100 processes inside its handler outlasted the client's timeout.
    let slot = false;
    inst.creating = bootSlot().then(() => {
      slot = true;
      return spawnTurn();
    }).then(() => {
      if (gen !== inst.generation || closing) throw new Error('deleted before its sandbox started');
      return local.create(spec);
    });
    try {
      try {
        await inst.creating;
        // Keys set while the sandbox was being created (bulkInsert, then setMetadata per VM).
        if (gen === inst.generation) applyGuestKey(inst);
      } catch (err) {
        log.warn({ name: inst.name, err: (err as Error).message }, 'gce emulator: sandbox failed to start');
        if (gen === inst.generation) setStatus(inst, 'TERMINATED');
        return false;
      }
      const end = Date.now() + bootTimeoutMs + emu.bootDelayMs;
      for (;;) {
        if (gen !== inst.generation || closing) return false;
        try {
          const info = local.connectInfo({ vmId: spec.vmId, name: inst.sandboxName, internalIp: '' }, '');
          inst.res['networkInterfaces'][0]['networkIP'] = info.host;
          setStatus(inst, 'RUNNING');
          serialAppend(inst, 1, `${now()} emulator: sshd listening on ${info.host}:${info.port}\n`);
          if (maxRun > 0) armMaxRun(inst, maxRun);
          processWindowsKeys(inst);
          return true;
        } catch {
          if (Date.now() > end) {
            log.warn({ name: inst.name }, 'gce emulator: sandbox never listened');
            setStatus(inst, 'TERMINATED');
            return false;
          }
          await sleep(20);
        }
      }
    } finally {
      if (slot) freeBootSlot();
    }
  }

  /** GCE's max run duration: delete (or stop) the instance itself. */
  function armMaxRun(inst: Inst, seconds: number): void {
    if (inst.maxRunTimer) clearTimeout(inst.maxRunTimer);
    inst.maxRunTimer = setTimeout(() => {
      const action = inst.res['scheduling']?.['instanceTerminationAction'] === 'DELETE' ? 'delete' : 'stop';
      log.info({ name: inst.name, action }, 'gce emulator: max run duration reached');
      void (action === 'delete' ? removeInstance(inst) : stopInstance(inst)).catch(() => {});
    }, Math.min(seconds * 1000, 2 ** 31 - 1));
    inst.maxRunTimer.unref();
  }

  async function killSandbox(inst: Inst): Promise<void> {
    inst.generation++;
    if (inst.maxRunTimer) clearTimeout(inst.maxRunTimer);
    await inst.creating?.catch(() => {});
    await local.delete([{ vmId: inst.name, name: inst.sandboxName }]);
  }

  async function removeInstance(inst: Inst): Promise<void> {
    setStatus(inst, 'STOPPING');
    await killSandbox(inst);
    instances.delete(key(inst.project, inst.zone, inst.name));
    removedAt.set(inst.name, Date.now());
    for (const w of inst.runningWaiters.splice(0)) w();
  }

  async function stopInstance(inst: Inst): Promise<void> {
    setStatus(inst, 'STOPPING');
    await killSandbox(inst);
    setStatus(inst, 'TERMINATED');
  }

  /** The guest agent's answer to `windows-keys` entries: an RSA-OAEP encrypted password on port 4. */
  function processWindowsKeys(inst: Inst): void {
    if (inst.res['status'] !== 'RUNNING') return; // the agent answers once the VM runs
    for (const line of (metadataItem(inst, 'windows-keys') ?? '').split('\n')) {
      if (!line.trim()) continue;
      let entry: Json;
      try {
        entry = JSON.parse(line) as Json;
      } catch {
        continue;
      }
      const { userName, modulus, exponent, expireOn } = entry as { userName?: string; modulus?: string; exponent?: string; expireOn?: string };
      if (!userName || !modulus || !exponent || inst.windowsKeysDone.has(modulus)) continue;
      if (expireOn && Date.parse(expireOn) < Date.now()) continue;
      inst.windowsKeysDone.add(modulus);
      let out: Json;
      try {
        const pub = createPublicKey({ key: { kty: 'RSA', n: Buffer.from(modulus, 'base64').toString('base64url'), e: Buffer.from(exponent, 'base64').toString('base64url') }, format: 'jwk' });
        const password = windowsPassword();
        const encryptedPassword = publicEncrypt({ key: pub, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from(password, 'utf8')).toString('base64');
        windowsPasswords.set(`${inst.name}/${userName}`, password);
        out = { userName, passwordFound: true, encryptedPassword, modulus, exponent, ready: true };
      } catch (err) {
        out = { userName, passwordFound: false, modulus, exponent, ready: true, errorMessage: `cannot encrypt password: ${(err as Error).message}` };
      }
      serialAppend(inst, 4, `${JSON.stringify(out)}\n`);
    }
  }

  /** Instances whose sandbox died are TERMINATED, as a VM that crashed. */
  async function refresh(list: Inst[]): Promise<void> {
    const running = list.filter((i) => i.res['status'] === 'RUNNING');
    if (!running.length) return;
    const seen = (await local.describe(running.map((i) => ({ vmId: i.name, name: i.sandboxName })))).vms;
    const alive = new Map(seen.map((v) => [v.name, v.state]));
    for (const i of running) if (i.res['status'] === 'RUNNING' && alive.get(i.sandboxName) !== 'running') setStatus(i, 'TERMINATED');
  }

  /** Create one instance (insert, or one of a bulkInsert): returns it, or the stockout error. */
  function createInstance(project: string, zone: string, body: Json): Inst {
    const name = body['name'] as string;
    const taken = [...instances.values()].some((i) => i.sandboxName === name);
    const sandboxName = taken ? `${name}.${zone}` : name;
    const inst: Inst = {
      project,
      zone,
      name,
      id: '',
      sandboxName,
      body,
      res: buildInstance(project, zone, body, sandboxName),
      serial: new Map(),
      windowsKeysDone: new Set(),
      generation: 0,
      runningWaiters: [],
    };
    inst.id = inst.res['id'] as string;
    instances.set(key(project, zone, name), inst);
    inserted.set(name, body);
    return inst;
  }

  function validateInsert(project: string, zone: string, body: Json): void {
    const name = body['name'];
    if (typeof name !== 'string' || !NAME_RE.test(name)) {
      throw new HttpError(400, 'invalid', `Invalid value for field 'resource.name': '${String(name)}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'`);
    }
    if (instances.has(key(project, zone, name))) throw new HttpError(409, 'alreadyExists', `The resource 'projects/${project}/zones/${zone}/instances/${name}' already exists`);
  }

  function capacityChecks(project: string, zone: string): { code: string; message: string; http: number } | undefined {
    if (faults.quotaExceeded) throw new HttpError(403, 'quotaExceeded', `Quota 'CPUS' exceeded.  Limit: 24.0 in region ${zone.replace(/-[a-z]$/, '')}.`, 'usageLimits');
    if (!faults.stockoutZones.has(zone)) return undefined;
    const message = `The zone 'projects/${project}/zones/${zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.`;
    if (faults.stockoutAsHttp) throw new HttpError(503, 'insufficientCapacity', message);
    return { code: 'ZONE_RESOURCE_POOL_EXHAUSTED', message, http: 503 };
  }

  /** Start instances booting; the operation is DONE when all are RUNNING (or failed to boot). */
  function bootAll(op: Op, list: Inst[]): void {
    op.json['progress'] = 10;
    void Promise.all(list.map((i) => boot(i)))
      .catch(() => false)
      .then(() => op.finish());
  }

  // ---- HTTP ----
  const app = Fastify({ logger: false, bodyLimit: 32 * 1024 * 1024, forceCloseConnections: true });
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body ?? '');
    if (!text.trim()) return done(null, {});
    try {
      done(null, JSON.parse(text));
    } catch {
      done(Object.assign(new HttpError(400, 'parseError', 'This API does not support parsing form-encoded input.'), { statusCode: 400 }), undefined);
    }
  });

  const sendError = (reply: FastifyReply, e: HttpError) => reply.code(e.status).header('content-type', 'application/json; charset=UTF-8').send(gceErrorBody(e.status, e.reason, e.message, e.domain));

  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof HttpError) return sendError(reply, err);
    const status = (err as { statusCode?: number }).statusCode ?? 500;
    log.warn({ err: (err as Error).message }, 'gce emulator: request failed');
    return sendError(reply, new HttpError(status, status >= 500 ? 'backendError' : 'invalid', (err as Error).message));
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, new HttpError(404, 'notFound', `The requested URL ${req.url.split('?')[0]} was not found on this server.`)));

  // Counting and fault injection for every API call.
  app.addHook('preHandler', async (req, reply) => {
    const call = (req.routeOptions.config as { call?: GceCall }).call;
    if (!call) return;
    calls[call]++;
    const zone = (req.params as { zone?: string }).zone;
    if (zone) knownZones.add(zone);
    if (faults.hangNext > 0) {
      faults.hangNext--;
      await new Promise<void>((resolve) => {
        const release = () => {
          hung.delete(release);
          hungFaults.delete(release);
          resolve();
        };
        hung.add(release);
        hungFaults.add(release);
        if (faults.hangForMs > 0) setTimeout(release, faults.hangForMs).unref();
        // The response's close: the client gave up (a request's own close fires once its body is read).
        reply.raw.once('close', release);
      });
      return sendError(reply, new HttpError(503, 'backendError', 'The service is shutting down.'));
    }
    if (faults.rateLimitNext > 0) {
      faults.rateLimitNext--;
      const status = faults.rateLimitStatus;
      return sendError(reply, new HttpError(status, 'rateLimitExceeded', status === 429 ? 'Rate Limit Exceeded' : `Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service 'compute.googleapis.com'.`, 'usageLimits'));
    }
    if (faults.failNextWith) {
      const f = faults.failNextWith;
      delete faults.failNextWith;
      return sendError(reply, new HttpError(f.status, f.reason, f.message));
    }
    if (faults.errorRate > 0 && random() < faults.errorRate) {
      return sendError(reply, random() < 0.5 ? new HttpError(429, 'rateLimitExceeded', 'Rate Limit Exceeded', 'usageLimits') : new HttpError(503, 'backendError', 'Backend Error'));
    }
    return undefined;
  });

  app.addHook('onSend', async (req, reply, payload) => {
    const call = (req.routeOptions.config as { call?: GceCall }).call;
    const m = call && faults.mangle?.(call, typeof payload === 'string' ? payload : Buffer.isBuffer(payload) ? payload.toString() : '');
    if (!m) return payload;
    reply.code(m.status ?? 200).header('content-type', m.contentType ?? 'application/json; charset=UTF-8');
    return m.body;
  });

  // Chaos after the fact: the call acted (an instance was made, a delete started), but the client
  // hears a 503, or nothing at all. Its retry, with the same requestId, must find the same operation.
  app.addHook('onSend', async (req, reply, payload) => {
    const call = (req.routeOptions.config as { call?: GceCall }).call;
    if (!call || !MUTATING.has(call) || reply.statusCode >= 400 || !(faults.errorAfterRate > 0) || random() >= faults.errorAfterRate) return payload;
    if (random() < faults.lostShare) {
      req.raw.socket?.destroy();
      return payload;
    }
    reply.code(503).header('content-type', 'application/json; charset=UTF-8');
    return JSON.stringify(gceErrorBody(503, 'backendError', 'Backend Error'));
  });

  type P = { project: string; zone: string; name: string; op: string };
  type Req = FastifyRequest<{ Params: P; Querystring: Record<string, string | undefined>; Body: Json }>;
  const q = (req: Req, camel: string): string | undefined => {
    const snake = camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    const v = req.query[camel] ?? req.query[snake];
    return v === undefined || v === '' ? undefined : String(v);
  };
  const instOr404 = (p: P): Inst => {
    const inst = instances.get(key(p.project, p.zone, p.name));
    if (!inst) throw notFound(`projects/${p.project}/zones/${p.zone}/instances/${p.name}`);
    return inst;
  };
  const Z = '/compute/v1/projects/:project/zones/:zone';

  app.post(`${Z}/instances`, { config: { call: 'insert' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const rid = q(req, 'requestId');
    const again = replay(project, rid);
    if (again) return again.json;
    const body = (req.body ?? {}) as Json;
    validateInsert(project, zone, body);
    const stockout = capacityChecks(project, zone);
    const targetLink = `${zoneUrl(project, zone)}/instances/${body['name']}`;
    if (stockout) {
      const op = newOp(project, zone, 'insert', targetLink, String(nextId++), rid);
      setTimeout(() => op.finish(stockout), 5).unref();
      return op.json;
    }
    const inst = createInstance(project, zone, body);
    const op = newOp(project, zone, 'insert', inst.res['selfLink'], inst.id, rid);
    bootAll(op, [inst]);
    return op.json;
  });

  app.post(`${Z}/instances/bulkInsert`, { config: { call: 'bulkInsert' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const rid = q(req, 'requestId');
    const again = replay(project, rid);
    if (again) return again.json;
    const body = (req.body ?? {}) as Json;
    const count = Number(body['count'] ?? 0);
    const minCount = Number(body['minCount'] ?? count);
    const per = (body['perInstanceProperties'] ?? {}) as Record<string, Json>;
    const pattern = typeof body['namePattern'] === 'string' ? (body['namePattern'] as string) : undefined;
    const props = (body['instanceProperties'] ?? {}) as Json;
    if (!Number.isInteger(count) || count < 1) throw new HttpError(400, 'invalid', `Invalid value for field 'resource.count': '${body['count']}'. Must be greater than 0.`);
    if (!Number.isInteger(minCount) || minCount < 1 || minCount > count) throw new HttpError(400, 'invalid', `Invalid value for field 'resource.minCount': '${body['minCount']}'. Must be between 1 and count.`);
    const names = Object.keys(per);
    if (names.length > count) throw new HttpError(400, 'invalid', `Invalid value for field 'resource.perInstanceProperties': more entries (${names.length}) than count (${count}).`);
    if (names.length < count) {
      if (!pattern || !/#+/.test(pattern)) throw new HttpError(400, 'invalid', `Either namePattern or perInstanceProperties for all ${count} instances must be given.`);
      const hashes = /#+/.exec(pattern)![0];
      // Existing instances matching the pattern count towards `count`, as in GCE.
      const re = new RegExp(`^${pattern.replace(hashes, `\\d{${hashes.length}}`)}$`);
      const existing = [...instances.values()].filter((i) => i.project === project && i.zone === zone && re.test(i.name)).length;
      for (let n = 1; names.length + existing < count; n++) {
        const candidate = pattern.replace(hashes, String(n).padStart(hashes.length, '0'));
        if (!names.includes(candidate) && !instances.has(key(project, zone, candidate))) names.push(candidate);
        if (n > 10 ** hashes.length) throw new HttpError(400, 'invalid', `namePattern ${pattern} has no free names left`);
      }
    }
    const bodies = names.map((name) => {
      const b: Json = { ...structuredClone(props), name };
      if (per[name]?.['hostname']) b['hostname'] = per[name]['hostname'];
      return b;
    });
    for (const b of bodies) validateInsert(project, zone, b);
    const stockout = capacityChecks(project, zone);
    const op = newOp(project, zone, 'bulkInsert', `${zoneUrl(project, zone)}/instances/${names[0] ?? ''}`, undefined, rid);
    const status = (created: number, failed: number) => ({ perLocationStatus: { [`zones/${zone}`]: { status: failed ? 'FAILED' : 'FULFILLED', targetVmCount: count, createdVmCount: created, failedToCreateVmCount: failed, deletedVmCount: 0 } } });
    if (stockout) {
      op.json['instancesBulkInsertOperationMetadata'] = status(0, bodies.length);
      setTimeout(() => op.finish(stockout), 5).unref();
      return op.json;
    }
    const list = bodies.map((b) => createInstance(project, zone, b));
    op.json['instancesBulkInsertOperationMetadata'] = status(list.length, 0);
    bootAll(op, list);
    return op.json;
  });

  app.get(`${Z}/instances/:name`, { config: { call: 'get' } }, async (req: Req) => {
    const inst = instOr404(req.params);
    await refresh([inst]);
    return inst.res;
  });

  // The guest agent publishes the VM's own SSH host key under `hostkeys/` once sshd runs, when
  // guest attributes are enabled: what the manager pins for images that make their own key.
  app.get(`${Z}/instances/:name/getGuestAttributes`, { config: { call: 'guestAttributes' } }, async (req: Req) => {
    const inst = instOr404(req.params);
    const path = q(req, 'queryPath') ?? '';
    const state = inst.res['status'] === 'RUNNING' && metadataItem(inst, 'enable-guest-attributes')?.toUpperCase() === 'TRUE' ? local.hostPublicKey(inst.sandboxName) : undefined;
    if (!state || !(path === '' || 'hostkeys/'.startsWith(path))) throw new HttpError(404, 'notFound', `The resource 'guest attributes ${path}' of instance '${inst.name}' was not found`);
    const [type, blob] = state.split(' ');
    return { kind: 'compute#guestAttributes', queryPath: path, queryValue: { items: [{ namespace: 'hostkeys', key: type, value: `${type} ${blob}` }] } };
  });

  /** Filter + paging shared by list, aggregatedList and firewalls.list. */
  function page<T>(req: Req, all: T[], res: (t: T) => Json, order: (a: T, b: T) => number): { items: T[]; nextPageToken?: string } {
    let filter;
    try {
      filter = parseFilter(q(req, 'filter') ?? '');
    } catch (err) {
      if (err instanceof FilterError) throw new HttpError(400, 'invalid', `Invalid value for field 'filter': '${q(req, 'filter')}'. ${err.message}`);
      throw err;
    }
    let matched: T[];
    try {
      matched = all.filter((i) => matchFilter(filter, res(i))).sort(order);
    } catch (err) {
      if (err instanceof FilterError) throw new HttpError(400, 'invalid', err.message);
      throw err;
    }
    const max = Math.min(Math.max(Number(q(req, 'maxResults') ?? 500) || 500, 1), 500);
    const token = q(req, 'pageToken');
    const start = token ? Number(Buffer.from(token, 'base64url').toString()) : 0;
    if (!Number.isInteger(start) || start < 0) throw new HttpError(400, 'invalid', `Invalid value for field 'pageToken': '${token}'.`);
    const items = matched.slice(start, start + max);
    return { items, ...(start + max < matched.length ? { nextPageToken: Buffer.from(String(start + max)).toString('base64url') } : {}) };
  }

  const byZoneAndName = (a: Inst, b: Inst) => (a.zone === b.zone ? a.name.localeCompare(b.name) : a.zone.localeCompare(b.zone));

  app.get('/compute/v1/projects/:project/global/firewalls', { config: { call: 'firewallsList' } }, async (req: Req) => {
    const { project } = req.params;
    const { items, nextPageToken } = page(req, firewalls.get(project) ?? [], (f) => f, (a, b) => String(a['name']).localeCompare(String(b['name'])));
    return {
      kind: 'compute#firewallList',
      id: `projects/${project}/global/firewalls`,
      items,
      ...(nextPageToken ? { nextPageToken } : {}),
      selfLink: `${base}/compute/v1/projects/${project}/global/firewalls`,
    };
  });

  // A firewall takes effect at once here: its (global) operation is DONE when the insert answers.
  const globalOps = new Map<string, Json>(); // `${project}/${opName}`
  app.post('/compute/v1/projects/:project/global/firewalls', { config: { call: 'firewallsInsert' } }, async (req: Req) => {
    const { project } = req.params;
    const body = (req.body ?? {}) as Json;
    validateFirewall(project, body);
    const fw = firewallResource(project, body, 0);
    firewalls.set(project, [...(firewalls.get(project) ?? []), fw]);
    const name = `operation-${Date.now()}-${randomBytes(6).toString('hex')}`;
    const t = now();
    const op: Json = {
      kind: 'compute#operation', id: String(nextId++), name, operationType: 'insert', targetLink: fw['selfLink'], targetId: fw['id'],
      status: 'DONE', progress: 100, user: 'emulator@runner-fleet.invalid', insertTime: t, startTime: t, endTime: t,
      selfLink: `${base}/compute/v1/projects/${project}/global/operations/${name}`,
    };
    globalOps.set(`${project}/${name}`, op);
    return op;
  });
  const globalOpOr404 = async (req: Req) => {
    const { project, op } = req.params;
    const found = globalOps.get(`${project}/${op}`);
    if (!found) throw notFound(`projects/${project}/global/operations/${op}`);
    return found;
  };
  app.get('/compute/v1/projects/:project/global/operations/:op', { config: { call: 'globalOperationsGet' } }, globalOpOr404);
  app.post('/compute/v1/projects/:project/global/operations/:op/wait', { config: { call: 'globalOperationsGet' } }, globalOpOr404);

  app.get(`${Z}/instances`, { config: { call: 'list' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const all = [...instances.values()].filter((i) => i.project === project && i.zone === zone);
    await refresh(all);
    const { items, nextPageToken } = page(req, all, (i) => i.res, byZoneAndName);
    return {
      kind: 'compute#instanceList',
      id: `projects/${project}/zones/${zone}/instances`,
      items: items.map((i) => i.res),
      ...(nextPageToken ? { nextPageToken } : {}),
      selfLink: `${zoneUrl(project, zone)}/instances`,
    };
  });

  app.get('/compute/v1/projects/:project/aggregated/instances', { config: { call: 'aggregatedList' } }, async (req: Req) => {
    const { project } = req.params;
    // A zone aggregatedList cannot reach answers with nothing: its instances are not in the answer.
    const down = [...faults.unreachableZones.keys()].filter(unreachable).sort();
    const all = [...instances.values()].filter((i) => i.project === project && !down.includes(i.zone));
    await refresh(all);
    const { items, nextPageToken } = page(req, all, (i) => i.res, byZoneAndName);
    const byZone: Record<string, Json> = {};
    for (const i of items) ((byZone[`zones/${i.zone}`] ??= { instances: [] })['instances'] as Json[]).push(i.res);
    // GCE names every zone in an aggregated answer; one without instances gets a warning.
    for (const zone of [...knownZones].sort()) {
      if (down.includes(zone)) continue;
      byZone[`zones/${zone}`] ??= { warning: { code: 'NO_RESULTS_ON_PAGE', message: `There are no results for scope 'zones/${zone}' on this page.`, data: [{ key: 'scope', value: `zones/${zone}` }] } };
    }
    // The scopes that did not answer, once per listing (on its first page), as GCE reports them.
    const first = !q(req, 'pageToken');
    if (first) {
      for (const zone of down) {
        byZone[`zones/${zone}`] = {
          warning: { code: 'UNREACHABLE', message: `The resource 'projects/${project}/zones/${zone}' is currently unreachable.`, data: [{ key: 'scope', value: `zones/${zone}` }] },
        };
      }
    }
    const partial = q(req, 'returnPartialSuccess') === 'true';
    return {
      kind: 'compute#instanceAggregatedList',
      id: `projects/${project}/aggregated/instances`,
      items: byZone,
      ...(nextPageToken ? { nextPageToken } : {}),
      ...(first && partial && down.length ? { unreachables: down.map((z) => `zones/${z}`) } : {}),
      selfLink: `${base}/compute/v1/projects/${project}/aggregated/instances`,
    };
  });

  app.delete(`${Z}/instances/:name`, { config: { call: 'delete' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const rid = q(req, 'requestId');
    const again = replay(project, rid);
    if (again) return again.json;
    const inst = instOr404(req.params);
    const op = newOp(project, zone, 'delete', inst.res['selfLink'], inst.id, rid);
    void removeInstance(inst).then(
      () => op.finish(),
      (err: Error) => op.finish({ code: 'INTERNAL_ERROR', message: err.message, http: 500 }),
    );
    return op.json;
  });

  app.post(`${Z}/instances/:name/setMetadata`, { config: { call: 'setMetadata' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const rid = q(req, 'requestId');
    const again = replay(project, rid);
    if (again) return again.json;
    const inst = instOr404(req.params);
    const body = (req.body ?? {}) as Json;
    if (body['fingerprint'] && body['fingerprint'] !== inst.res['metadata']['fingerprint']) {
      throw new HttpError(412, 'conditionNotMet', `Supplied fingerprint does not match current metadata fingerprint.`);
    }
    if (faults.failMetadataOps > 0) {
      // GCE accepts the call and reports the failure only in the operation.
      faults.failMetadataOps--;
      const failed = newOp(project, zone, 'setMetadata', inst.res['selfLink'], inst.id, rid);
      const answer = structuredClone(failed.json);
      setTimeout(() => failed.finish({ code: 'INTERNAL_ERROR', message: 'Internal error. Please try again or contact Google Support.' }), opts.metadataOpMs ?? 100).unref();
      return answer;
    }
    const items = (Array.isArray(body['items']) ? (body['items'] as Json[]) : []).map((i) => ({ key: String(i['key']), value: i['value'] ?? '' }));
    setMetadataItems(inst, items);
    applyGuestKey(inst);
    const op = newOp(project, zone, 'setMetadata', inst.res['selfLink'], inst.id, rid);
    const answer = structuredClone(op.json);
    setTimeout(() => op.finish(), opts.metadataOpMs ?? 100).unref();
    processWindowsKeys(inst);
    return answer;
  });

  app.post(`${Z}/instances/:name/setLabels`, { config: { call: 'setLabels' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const rid = q(req, 'requestId');
    const again = replay(project, rid);
    if (again) return again.json;
    const inst = instOr404(req.params);
    const body = (req.body ?? {}) as Json;
    if (body['labelFingerprint'] && body['labelFingerprint'] !== inst.res['labelFingerprint']) {
      throw new HttpError(412, 'conditionNotMet', `Labels fingerprint either invalid or resource labels have changed`);
    }
    const labels = { ...(body['labels'] ?? {}) } as Record<string, string>;
    inst.res['labels'] = labels;
    inst.res['labelFingerprint'] = fingerprint(labels);
    const op = newOp(project, zone, 'setLabels', inst.res['selfLink'], inst.id, rid);
    op.finish();
    return op.json;
  });

  app.post(`${Z}/instances/:name/stop`, { config: { call: 'stop' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const rid = q(req, 'requestId');
    const again = replay(project, rid);
    if (again) return again.json;
    const inst = instOr404(req.params);
    const op = newOp(project, zone, 'stop', inst.res['selfLink'], inst.id, rid);
    void stopInstance(inst).then(
      () => op.finish(),
      (err: Error) => op.finish({ code: 'INTERNAL_ERROR', message: err.message, http: 500 }),
    );
    return op.json;
  });

  app.post(`${Z}/instances/:name/start`, { config: { call: 'start' } }, async (req: Req) => {
    const { project, zone } = req.params;
    const rid = q(req, 'requestId');
    const again = replay(project, rid);
    if (again) return again.json;
    const inst = instOr404(req.params);
    if (inst.res['status'] === 'SUSPENDED' || inst.res['status'] === 'SUSPENDING') throw new HttpError(400, 'badRequest', `Instance '${inst.name}' is suspended: resume it instead of starting it`);
    const op = newOp(project, zone, 'start', inst.res['selfLink'], inst.id, rid);
    if (inst.res['status'] !== 'TERMINATED') {
      op.finish(); // already running (or on its way): nothing to do, as in GCE
      return op.json;
    }
    bootAll(op, [inst]);
    return op.json;
  });

  // Suspend keeps the guest's memory: the sandbox and its commands are frozen (SIGSTOP), and a
  // resume thaws them, so the VM answers again without a boot. Both are idempotent: a VM already
  // where the call leads finishes at once.
  const freezeRoute = (call: 'suspend' | 'resume', from: InstanceStatus, via: InstanceStatus, to: InstanceStatus, delayMs: () => number): void => {
    app.post(`${Z}/instances/:name/${call}`, { config: { call } }, async (req: Req) => {
      const { project, zone } = req.params;
      const rid = q(req, 'requestId');
      const again = replay(project, rid);
      if (again) return again.json;
      const inst = instOr404(req.params);
      const status = inst.res['status'];
      if (status !== from && status !== via && status !== to) throw new HttpError(400, 'resourceNotReady', `The resource '${inst.res['selfLink']}' is not ready: status ${status} cannot be ${call}d`);
      const op = newOp(project, zone, call, inst.res['selfLink'], inst.id, rid);
      if (status !== from) {
        op.finish();
        return op.json;
      }
      setStatus(inst, via);
      void sleep(delayMs()).then(async () => {
        if (inst.res['status'] !== via) return op.finish();
        await local.freeze(inst.sandboxName, call === 'suspend');
        setStatus(inst, to);
        op.finish();
      });
      return op.json;
    });
  };
  freezeRoute('suspend', 'RUNNING', 'SUSPENDING', 'SUSPENDED', () => emu.suspendDelayMs);
  freezeRoute('resume', 'SUSPENDED', 'STAGING', 'RUNNING', () => emu.resumeDelayMs);

  app.get(`${Z}/instances/:name/serialPort`, { config: { call: 'serialPort' } }, async (req: Req) => {
    const inst = instOr404(req.params);
    const port = Number(q(req, 'port') ?? 1);
    if (!Number.isInteger(port) || port < 1 || port > 4) throw new HttpError(400, 'invalid', `Invalid value for field 'port': '${q(req, 'port')}'. Must be between 1 and 4.`);
    const text = inst.serial.get(port) ?? '';
    const total = Buffer.byteLength(text);
    const start = Math.min(Math.max(Number(q(req, 'start') ?? 0) || 0, 0), total);
    return {
      kind: 'compute#serialPortOutput',
      contents: Buffer.from(text).subarray(start).toString('utf8'),
      start: String(start),
      next: String(total),
      selfLink: `${inst.res['selfLink']}/serialPort?port=${port}`,
    };
  });

  const opOr404 = (p: P): Op => {
    const op = operations.get(key(p.project, p.zone, p.op));
    if (!op) throw notFound(`projects/${p.project}/zones/${p.zone}/operations/${p.op}`);
    return op;
  };
  app.get(`${Z}/operations/:op`, { config: { call: 'operationsGet' } }, async (req: Req) => opOr404(req.params).json);
  app.post(`${Z}/operations/:op`, { config: { call: 'operationsGet' } }, async (req: Req) => opOr404(req.params).json);
  const wait = async (req: Req, reply: FastifyReply) => {
    const op = opOr404(req.params);
    let timer: NodeJS.Timeout | undefined;
    let release: (() => void) | undefined;
    await Promise.race([
      op.done,
      new Promise<void>((r) => {
        timer = setTimeout(r, waitMaxMs);
        release = r;
        hung.add(r);
        reply.raw.once('close', r);
      }),
    ]);
    clearTimeout(timer);
    if (release) hung.delete(release);
    return op.json;
  };
  app.post(`${Z}/operations/:op/wait`, { config: { call: 'operationsWait' } }, wait);
  app.get(`${Z}/operations/:op/wait`, { config: { call: 'operationsWait' } }, wait);

  await app.listen({ host, port: opts.port ?? 0 });
  const addr = app.server.address();
  if (!addr || typeof addr === 'string') throw new Error('GCE emulator: no TCP address');
  emu.port = addr.port;
  emu.url = `http://${host}:${addr.port}`;
  base = emu.url;
  log.info({ url: emu.url, sandboxRoot }, 'GCE emulator listening');
  return emu;
}
