// Per-class VM lifecycle and warm-pool bookkeeping. One serialized tick reads the live VMs
// from the database, asks the pure autoscaler what to do, and writes every intent (new rows,
// delete intents) before it starts the cloud calls that carry them out in the background.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { ClassConfig, ShardConfig } from '../config/types.js';
import type { VmRow } from '../db/schema.js';
import type { SshSession } from '../connect/ssh.js';
import { generateVmKeyPair } from '../isolation/keys.js';
import { LABEL_SHARD, LABEL_VM, type ConnectInfo, type Provider, type VmRef, type VmSpec } from '../providers/provider.js';
import { decideScale, type ClassCounts } from './autoscaler.js';
import type { Clock } from './clock.js';
import type { Metrics } from './metrics.js';
import type { Store } from './store.js';
import { VM_STATES, type VmState } from './vm-states.js';

/** Warm VMs are recycled after this long, well before the cloud-side max run duration. */
export const WARM_MAX_AGE_MS = 6 * 3600_000;
/** Surplus warm VMs (above `idle`) are retired after idling this long. */
const SURPLUS_IDLE_MS = 60_000;
/** A failed cloud delete is retried after this long. */
const DELETE_RETRY_MS = 5_000;
/** After a quota refusal the class creates nothing for this long, then tries again. */
export const QUOTA_BACKOFF_MS = 5 * 60_000;

export type Probe = (info: ConnectInfo, opts: { deadlineMs: number; signal: AbortSignal }) => Promise<SshSession>;

export interface PoolDeps {
  config: ShardConfig;
  store: Store;
  providers: Map<string, Provider>;
  metrics: Metrics;
  log: Logger;
  clock: Clock;
  probe: Probe;
  tickMs?: number;
}

export function vmName(shard: string, vmId: string): string {
  return `rf-${shard}-${vmId}`;
}

export function vmRef(row: Pick<VmRow, 'id' | 'name' | 'cloud_id' | 'zone'>): VmRef {
  return { vmId: row.id, name: row.name, cloudId: row.cloud_id, zone: row.zone };
}

export class Pool {
  private rows: VmRow[] = [];
  private readonly reserved = new Set<string>();
  /** VM ids with a background task (create, boot probe, delete) in flight. */
  /**
   * VMs whose background task ended after this tick read its rows: their row here is out of
   * date (a VM just deleted still reads `deleting`), so this tick leaves them alone.
   */
  private readonly stale = new Set<string>();
  private readonly busy = new Set<string>();
  private readonly deleteAfter = new Map<string, number>();
  private readonly sessions = new Map<string, SshSession>();
  private readonly frozen = new Set<string>();
  /** Classes whose growth the cloud refused (quota), until when (ms). */
  private readonly blockedUntil = new Map<string, number>();
  /** When each provider was last asked about booting VMs. */
  private readonly lastDescribe = new Map<string, number>();
  private readonly waiters = new Set<() => void>();
  private readonly tasks = new Set<Promise<unknown>>();
  private readonly abort = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | null = null;
  private again = false;
  private stopped = false;

  constructor(private readonly d: PoolDeps) {}

  start(): void {
    const every = this.d.tickMs ?? 500;
    const loop = () => {
      if (this.stopped) return;
      this.kick();
      this.timer = setTimeout(loop, every);
    };
    loop();
  }

  /** Quota exhausted: stop creating VMs of the class for a while; warm and running VMs stay. */
  private blockGrowth(className: string, why: string): void {
    const until = this.d.clock.now() + QUOTA_BACKOFF_MS;
    if ((this.blockedUntil.get(className) ?? 0) < this.d.clock.now()) {
      this.d.log.warn({ class: className, until: new Date(until).toISOString(), why }, 'cloud quota exhausted: not growing this class until the quota frees up');
    }
    this.blockedUntil.set(className, until);
    this.d.metrics.classGrowthBlocked.set({ class: className, reason: 'quota' }, 1);
  }

  private growthBlocked(className: string, now: number): boolean {
    const until = this.blockedUntil.get(className);
    if (until === undefined) return false;
    if (now < until) return true;
    this.blockedUntil.delete(className);
    this.d.metrics.classGrowthBlocked.set({ class: className, reason: 'quota' }, 0);
    this.d.log.info({ class: className }, 'retrying growth of a class after a quota stop');
    return false;
  }

  /** Run a tick now (or right after the one in progress). */
  kick(): Promise<void> {
    if (this.ticking) {
      this.again = true;
      return this.ticking;
    }
    this.ticking = (async () => {
      do {
        this.again = false;
        try {
          await this.tick();
        } catch (err) {
          this.d.log.error({ err }, 'pool tick failed');
        }
      } while (this.again && !this.stopped);
      this.ticking = null;
    })();
    return this.ticking;
  }

  /** Stop creating; warm VMs of the class are retired at the next tick. */
  freeze(className?: string): void {
    for (const c of className ? [className] : Object.keys(this.d.config.classes)) this.frozen.add(c);
    void this.kick();
  }

  /** Reserve a warm VM of the class for a job request; null when none is free. */
  reserve(className: string): VmRow | null {
    if (this.frozen.has(className)) return null;
    const vm = this.rows.find((r) => r.class === className && r.state === 'ready' && !this.reserved.has(r.id) && !this.busy.has(r.id));
    if (!vm) return null;
    this.reserved.add(vm.id);
    return vm;
  }

  release(vmId: string): void {
    this.reserved.delete(vmId);
  }

  /** A live SSH session opened by the boot probe, handed over once to the executor. */
  takeSession(vmId: string): SshSession | undefined {
    const s = this.sessions.get(vmId);
    this.sessions.delete(vmId);
    return s;
  }

  /** Resolves when a VM becomes ready, the pool changes, or after `ms`. */
  waitForChange(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.waiters.delete(done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.waiters.add(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Counts of live VMs in the last tick, for drain and tests. */
  snapshot(): VmRow[] {
    return this.rows;
  }

  /** The job is over: delete its VM now rather than at the next tick. */
  deleteNow(vmId: string): void {
    this.closeSession(vmId);
    this.deleteAfter.delete(vmId);
    void this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abort.abort();
    await this.ticking;
    await Promise.allSettled([...this.tasks]);
    for (const id of [...this.sessions.keys()]) this.closeSession(id);
    this.notify();
  }

  /** Wait for background cloud calls (tests, drain). */
  async settle(): Promise<void> {
    await this.ticking;
    await Promise.allSettled([...this.tasks]);
  }

  private closeSession(vmId: string): void {
    const s = this.sessions.get(vmId);
    this.sessions.delete(vmId);
    s?.close();
  }

  private provider(name: string): Provider {
    const p = this.d.providers.get(name);
    if (!p) throw new Error(`provider ${name} is not configured`);
    return p;
  }

  private spawn(vmIds: string[], work: () => Promise<void>): void {
    for (const id of vmIds) this.busy.add(id);
    const p = work()
      .catch((err) => this.d.log.error({ err, vms: vmIds }, 'pool task failed'))
      .finally(() => {
        for (const id of vmIds) {
          this.busy.delete(id);
          this.stale.add(id);
        }
        this.tasks.delete(p);
        if (!this.stopped) void this.kick();
      });
    this.tasks.add(p);
  }

  private async tick(): Promise<void> {
    const now = this.d.clock.now();
    this.stale.clear();
    this.rows = await this.d.store.liveVms();
    // A reservation ends when its VM is no longer warm (bound to a job, or gone).
    const warm = new Set(this.rows.filter((r) => r.state === 'ready').map((r) => r.id));
    for (const id of this.reserved) if (!warm.has(id)) this.reserved.delete(id);
    this.updateGauge();
    const byClass = new Map<string, VmRow[]>();
    for (const r of this.rows) {
      const list = byClass.get(r.class) ?? [];
      list.push(r);
      byClass.set(r.class, list);
    }
    for (const [name, cls] of Object.entries(this.d.config.classes)) {
      await this.scaleClass(cls, byClass.get(name) ?? [], now);
    }
    await this.watchBooting(now);
    await this.deleteLeaving(now);
  }

  private updateGauge(): void {
    const g = this.d.metrics.vms;
    g.reset();
    for (const c of Object.keys(this.d.config.classes)) for (const s of VM_STATES) if (s !== 'deleted') g.set({ class: c, state: s }, 0);
    for (const r of this.rows) g.inc({ class: r.class, state: r.state });
  }

  private async scaleClass(cls: ClassConfig, rows: VmRow[], now: number): Promise<void> {
    const count = (states: VmState[]) => rows.filter((r) => states.includes(r.state as VmState)).length;
    // A reserved VM still counts as warm: the reservation only covers a job request in flight,
    // which mostly answers "no job". Counting it as taken made the pool create a VM on every
    // poll that a tick happened to overlap, and retire the surplus a minute later.
    const warm = rows.filter((r) => r.state === 'ready' && !this.busy.has(r.id));
    const free = warm.filter((r) => !this.reserved.has(r.id));
    const counts: ClassCounts = {
      pending: count(['requested', 'creating', 'booting']),
      ready: warm.length,
      busy: count(['assigned', 'running']) + (count(['ready']) - warm.length),
      leaving: count(['deleting', 'failed']),
    };
    const decision = decideScale({
      pool: cls.pool,
      counts,
      readyVms: free.map((r) => ({ id: r.id, readyAt: (r.ready_at ?? r.created_at).getTime() })),
      frozen: this.frozen.has(cls.name),
      blocked: this.growthBlocked(cls.name, now),
      idleTimeMs: SURPLUS_IDLE_MS,
      now,
    });
    const stale = free.filter((r) => now - (r.ready_at ?? r.created_at).getTime() > WARM_MAX_AGE_MS).map((r) => r.id);
    for (const id of new Set([...decision.retire, ...stale])) {
      this.closeSession(id);
      await this.d.store.transition(id, 'ready', 'deleting', {}, decision.retire.includes(id) ? 'pool surplus' : 'warm VM recycled');
    }
    if (decision.create > 0) await this.createVms(cls, decision.create);
  }

  private async createVms(cls: ClassConfig, n: number): Promise<void> {
    const { shard } = this.d.config;
    const specs: VmSpec[] = [];
    for (let i = 0; i < n; i++) {
      const id = randomBytes(6).toString('hex');
      const name = vmName(shard, id);
      const keys = generateVmKeyPair(name);
      // Write-ahead: the row exists before the cloud hears of the VM.
      await this.d.store.insertVm({ id, class: cls.name, provider: cls.provider, name, publicKey: keys.publicKey, privateKey: keys.privateKey });
      specs.push({
        vmId: id,
        name,
        shard,
        className: cls.name,
        labels: { [LABEL_SHARD]: shard, [LABEL_VM]: id },
        publicKey: keys.publicKey,
        machine: cls.machine,
        maxRunSeconds: Math.ceil((WARM_MAX_AGE_MS + cls.bootTimeoutMs + cls.jobTimeoutMs) / 1000) + 600,
      });
    }
    this.d.log.info({ class: cls.name, count: n }, 'creating VMs');
    const provider = this.provider(cls.provider);
    this.spawn(specs.map((s) => s.vmId), async () => {
      for (const s of specs) await this.d.store.transition(s.vmId, 'requested', 'creating');
      const results = await this.cloud(provider, 'create', () => provider.createMany(specs));
      for (const r of results) {
        if (r.ok) {
          await this.d.store.transition(r.vm.vmId, 'creating', 'booting', { cloud_id: r.vm.cloudId, zone: r.vm.zone ?? null });
        } else {
          this.d.metrics.vmFailures.inc({ class: cls.name, reason: `create_${r.error.kind}` });
          if (r.error.kind === 'quota') this.blockGrowth(cls.name, r.error.message);
          this.d.log.warn({ vm: r.vmId, class: cls.name, kind: r.error.kind, err: r.error.message }, 'VM creation failed');
          await this.d.store.transition(r.vmId, 'creating', 'failed', { failure: r.error.message.slice(0, 500) });
        }
      }
    });
  }

  /** One describe per provider for all booting VMs, then an SSH probe for each running one. */
  private async watchBooting(now: number): Promise<void> {
    const booting = this.rows.filter((r) => r.state === 'booting' && !this.busy.has(r.id) && !this.stale.has(r.id));
    const byProvider = new Map<string, VmRow[]>();
    for (const r of booting) {
      const cls = this.d.config.classes[r.class];
      if (!cls || now - r.created_at.getTime() > cls.bootTimeoutMs) {
        await this.failVm(r, cls ? 'boot timeout' : 'class no longer configured', 'boot_timeout');
        continue;
      }
      byProvider.set(r.provider, [...(byProvider.get(r.provider) ?? []), r]);
    }
    for (const [pname, rows] of byProvider) {
      const provider = this.provider(pname);
      if (now - (this.lastDescribe.get(pname) ?? -Infinity) < (provider.pollIntervalMs ?? 0)) continue;
      this.lastDescribe.set(pname, now);
      let cloud;
      try {
        cloud = await this.cloud(provider, 'describe', () => provider.describe(rows.map(vmRef)));
      } catch (err) {
        this.d.log.warn({ err, provider: pname }, 'describe failed');
        continue;
      }
      const byId = new Map(cloud.map((c) => [c.vmId ?? c.name, c]));
      for (const r of rows) {
        const c = byId.get(r.id) ?? byId.get(r.name);
        if (!c) continue;
        if (c.state === 'terminated') {
          await this.failVm(r, 'VM terminated while booting', 'terminated');
          continue;
        }
        if (c.state !== 'running' || !c.internalIp) continue;
        this.probeVm(r, provider, c.internalIp);
      }
    }
  }

  private probeVm(row: VmRow, provider: Provider, internalIp: string): void {
    const cls = this.d.config.classes[row.class]!;
    const privateKey = this.d.store.tryDecrypt(row.private_key_enc);
    this.spawn([row.id], async () => {
      if (!privateKey) return void (await this.failVm(row, 'private key unreadable with the current secrets.key', 'key'));
      const info = provider.connectInfo({ ...vmRef(row), internalIp }, privateKey);
      try {
        const session = await this.d.probe(info, { deadlineMs: row.created_at.getTime() + cls.bootTimeoutMs, signal: this.abort.signal });
        const readyAt = new Date(this.d.clock.now());
        if (await this.d.store.transition(row.id, 'booting', 'ready', { internal_ip: internalIp, ready_at: readyAt })) {
          this.sessions.set(row.id, session);
          this.d.metrics.vmBoot.observe({ class: row.class }, (readyAt.getTime() - row.created_at.getTime()) / 1000);
          this.d.log.info({ vm: row.id, class: row.class, bootSeconds: (readyAt.getTime() - row.created_at.getTime()) / 1000 }, 'VM ready');
        } else {
          session.close();
        }
      } catch (err) {
        if (this.stopped) return;
        await this.failVm(row, `not reachable over SSH: ${(err as Error).message}`, 'unreachable');
      }
      this.notify();
    });
  }

  private async failVm(row: VmRow, why: string, reason: string): Promise<void> {
    this.d.metrics.vmFailures.inc({ class: row.class, reason });
    this.d.log.warn({ vm: row.id, class: row.class, why }, 'VM failed');
    await this.d.store.transition(row.id, row.state as VmState, 'failed', { failure: why.slice(0, 500) });
  }

  private async deleteLeaving(now: number): Promise<void> {
    const leaving = this.rows.filter((r) => (r.state === 'deleting' || r.state === 'failed') && !this.busy.has(r.id) && !this.stale.has(r.id) && (this.deleteAfter.get(r.id) ?? 0) <= now);
    const byProvider = new Map<string, VmRow[]>();
    for (const r of leaving) {
      if (r.state === 'failed') await this.d.store.transition(r.id, 'failed', 'deleting');
      this.closeSession(r.id);
      byProvider.set(r.provider, [...(byProvider.get(r.provider) ?? []), r]);
    }
    for (const [pname, rows] of byProvider) {
      const provider = this.provider(pname);
      this.spawn(rows.map((r) => r.id), async () => {
        try {
          await this.cloud(provider, 'delete', () => provider.delete(rows.map(vmRef)));
        } catch (err) {
          this.d.log.warn({ err, provider: pname, vms: rows.map((r) => r.id) }, 'delete failed; will retry');
          for (const r of rows) this.deleteAfter.set(r.id, this.d.clock.now() + DELETE_RETRY_MS);
          return;
        }
        for (const r of rows) {
          this.deleteAfter.delete(r.id);
          this.reserved.delete(r.id);
          await this.d.store.transition(r.id, 'deleting', 'deleted');
        }
        this.notify();
      });
    }
  }

  /** Time a pool-level provider operation; the provider reports its API calls one by one. */
  private async cloud<T>(provider: Provider, operation: string, fn: () => Promise<T>): Promise<T> {
    const start = performance.now();
    let outcome = 'ok';
    try {
      return await fn();
    } catch (err) {
      outcome = (err as { kind?: string }).kind ?? 'error';
      throw err;
    } finally {
      this.d.metrics.providerOperationSeconds.observe({ provider: provider.name, operation, outcome }, (performance.now() - start) / 1000);
    }
  }
}
