// Per-class VM lifecycle and warm-pool bookkeeping. One serialized tick takes the live VMs
// from the pool's view of the shard (kept from the store's committed writes, re-read from the
// table only at activation and every resyncMs), asks the pure autoscaler what to do, and writes
// every intent (new rows, delete intents) before it starts the cloud calls that carry them out
// in the background.
import { randomBytes } from 'node:crypto';
import pRetry from 'p-retry';
import type { Logger } from 'pino';
import type { ClassConfig, ShardConfig } from '../config/types.js';
import type { VmRow } from '../db/schema.js';
import type { SshSession } from '../connect/ssh.js';
import { generateHostKey, generateVmKeyPair } from '../isolation/keys.js';
import { isHostKeyRefusal, pinnedConnectInfo, refusalReason, reportHostKeyRefusal } from './host-key.js';
import { LABEL_SHARD, LABEL_VM, supportsStandby, type ConnectInfo, type Provider, type VmRef, type VmSpec } from '../providers/provider.js';
import { classRoom, decideScale, staticSettings, staticTargets, type ClassCounts, type TierTargets } from './autoscaler.js';
import type { DemandModel } from './predictive.js';
import type { Clock } from './clock.js';
import type { Metrics } from './metrics.js';
import type { NewVmInput, Store } from './store.js';
import { isTransientDbError } from '../db/fence.js';
import { Limiter } from './limit.js';
import { PENDING_STATES, VM_STATES, type VmState } from './vm-states.js';

/** Warm VMs are recycled after this long, well before the cloud-side max run duration. */
export const WARM_MAX_AGE_MS = 6 * 3600_000;
/** A failed cloud delete is retried after this long. */
const DELETE_RETRY_MS = 5_000;
/** After a quota refusal the class creates nothing for this long, then tries again. */
export const QUOTA_BACKOFF_MS = 5 * 60_000;
/** The view of the shard's VMs is re-read from the table this often: a safety net for writes made outside this store. */
export const RESYNC_MS = 60_000;
/** Database writes the pool's background tasks (creates, probes, deletes) make at once. */
export const POOL_DB_WRITES = 4;

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
  /** Learned demand per class (predictive policy). */
  demand?: Map<string, DemandModel>;
  /** How often the view is re-read from the table (default RESYNC_MS). */
  resyncMs?: number;
  /** Concurrent database writes of background tasks (default POOL_DB_WRITES). */
  dbWrites?: number;
}

/**
 * VMs per create call on clouds with a batch API: a scale-up of 1,000 as one call made the cloud's
 * answer outlast the call timeout, and one failure then failed them all.
 */
export const CREATE_BATCH_MAX = 100;

/**
 * Whether the VM's Docker Engine answers, asked until the boot deadline (it may start after sshd);
 * true, or the last error.
 */
export async function dockerEngineReady(session: SshSession, deadlineMs: number, clock: Clock, signal: AbortSignal): Promise<true | string> {
  let last = 'no answer';
  while (!signal.aborted) {
    const out: Buffer[] = [];
    const ask = new AbortController();
    const stop = () => ask.abort();
    signal.addEventListener('abort', stop, { once: true });
    const t = setTimeout(stop, 10_000);
    try {
      const r = await session.exec("docker version --format '{{.Server.Version}}'", { signal: ask.signal, onData: (c) => out.push(c) });
      const text = Buffer.concat(out).toString().trim().slice(-300);
      if (r.exitCode === 0 && text) return true;
      last = text || `exit code ${r.exitCode}`;
    } catch (err) {
      last = (err as Error).message;
      if (session.closed) return last;
    } finally {
      clearTimeout(t);
      signal.removeEventListener('abort', stop);
    }
    if (clock.now() + 1000 > deadlineMs) return last;
    await clock.sleep(1000, signal).catch(() => {});
  }
  return 'aborted';
}

export function vmName(shard: string, vmId: string): string {
  return `rf-${shard}-${vmId}`;
}

/** A new VM's identity and its own key pair. */
export function newVm(shard: string, cls: Pick<ClassConfig, 'name' | 'provider'>): NewVmInput {
  const id = randomBytes(6).toString('hex');
  const name = vmName(shard, id);
  const keys = generateVmKeyPair(name);
  const host = generateHostKey(`${name}-host`);
  return { id, class: cls.name, provider: cls.provider, name, publicKey: keys.publicKey, privateKey: keys.privateKey, hostKey: host.privateKey, hostKeyFingerprint: host.fingerprint };
}

/** When a VM's current boot began: its creation, or for a resume from standby its `booting` transition. */
function bootStart(row: Pick<VmRow, 'created_at' | 'ready_at' | 'updated_at'>): number {
  return row.ready_at ? row.updated_at.getTime() : row.created_at.getTime();
}

export function vmRef(row: Pick<VmRow, 'id' | 'name' | 'cloud_id' | 'zone'>): VmRef {
  return { vmId: row.id, name: row.name, cloudId: row.cloud_id, zone: row.zone };
}

/** A database write that failed: kept apart from the SSH or cloud failure it must not be taken for. */
export class PoolDatabaseError extends Error {
  constructor(message: string, options: { cause: unknown }) {
    super(message, options);
    this.name = 'PoolDatabaseError';
  }
}

export class Pool {
  private rows: VmRow[] = [];
  /** This shard's live VMs as last committed, by id (in creation order). */
  private view = new Map<string, VmRow>();
  private viewLoaded = false;
  private lastResync = -Infinity;
  /** Ids written while a re-read was in flight: their row in the view is newer than the read. */
  private resyncing: Set<string> | null = null;
  private unsubscribe: () => void = () => {};
  /** VM rows read from the table so far (tests, the scale bench). */
  rowsRead = 0;
  private readonly writes: Limiter;
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
  private readonly counts = new Map<string, ClassCounts>();
  /** The class's max at the last tick: pool.max, or less where the provider holds less (Mac hosts). */
  private readonly maxNow = new Map<string, number>();
  /**
   * Room promised since the last read of the rows, per class: cold-start claims in flight
   * (`claim-N`) and VMs created since (their ids), dropped once a tick reads their rows.
   */
  private readonly unseen = new Map<string, Set<string>>();
  private claimSeq = 0;
  /** VMs being made for the standby tier (stopped once up); a restart just keeps them hot. */
  private readonly toStandby = new Set<string>();
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

  constructor(private readonly d: PoolDeps) {
    this.writes = new Limiter(d.dbWrites ?? POOL_DB_WRITES);
    this.unsubscribe = d.store.onVmChange((row) => this.applyChange(row));
  }

  /** A write the store committed: the view follows it. */
  private applyChange(row: VmRow): void {
    if (row.shard !== this.d.store.shard) return;
    this.resyncing?.add(row.id);
    const cur = this.view.get(row.id);
    // Announcements of one row can cross (two connections): the older write loses.
    if (cur && cur.updated_at.getTime() > row.updated_at.getTime()) return;
    if (row.state === 'deleted') this.view.delete(row.id);
    else this.view.set(row.id, row);
  }

  /** Re-read the view from the table (activation, then rarely): writes made elsewhere show up. */
  private async resync(now: number): Promise<void> {
    const changed = (this.resyncing = new Set());
    try {
      const rows = await this.d.store.liveVms();
      this.rowsRead += rows.length;
      const next = new Map<string, VmRow>();
      for (const r of rows) if (!changed.has(r.id)) next.set(r.id, r);
      // Rows written during the read keep what their write announced.
      for (const id of changed) {
        const r = this.view.get(id);
        if (r) next.set(id, r);
      }
      this.view = next;
      this.viewLoaded = true;
      this.lastResync = now;
    } finally {
      this.resyncing = null;
    }
  }

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
    const vm = this.rows.find((r) => r.class === className && r.state === 'ready' && r.job_id === null && !this.toStandby.has(r.id) && !this.reserved.has(r.id) && !this.busy.has(r.id));
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
    this.unsubscribe();
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
    if (!this.viewLoaded || now - this.lastResync >= (this.d.resyncMs ?? RESYNC_MS)) await this.resync(now);
    this.stale.clear();
    // Copies: the tick marks its rows (state, updated_at) ahead of the writes it then makes.
    this.rows = [...this.view.values()].map((r) => ({ ...r }));
    const read = new Set(this.rows.map((r) => r.id));
    for (const ids of this.unseen.values()) for (const id of ids) if (read.has(id)) ids.delete(id);
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

  /** The class's VM counts as of the last tick (intake's cold-start judgement); none before the first. */
  classCounts(className: string): ClassCounts | undefined {
    return this.counts.get(className);
  }

  private unseenOf(className: string): Set<string> {
    let s = this.unseen.get(className);
    if (!s) this.unseen.set(className, (s = new Set()));
    return s;
  }

  /**
   * Claim room for one cold-start VM before asking GitLab for its job: null when the class is at
   * its max (or its provider's capacity, e.g. no Mac host ready), frozen or blocked. Atomic with
   * every other claim and with the pool's own creates; give it back with releaseRoom, or turn it
   * into the job's VM with launchForJob.
   */
  claimRoom(cls: ClassConfig): string | null {
    const c = this.classCounts(cls.name);
    if (!c || this.frozen.has(cls.name) || this.growthBlocked(cls.name, this.d.clock.now())) return null;
    const claimed = this.unseenOf(cls.name);
    if (classRoom(c, this.maxNow.get(cls.name) ?? cls.pool.max, claimed.size) < 1) return null;
    const claim = `claim-${++this.claimSeq}`;
    claimed.add(claim);
    return claim;
  }

  releaseRoom(className: string, claim: string): void {
    this.unseen.get(className)?.delete(claim);
  }

  private async scaleClass(cls: ClassConfig, rows: VmRow[], now: number): Promise<void> {
    // VMs made for a cold-start job are that job's, whatever their state: busy.
    const forJob = rows.filter((r) => r.job_id !== null && (PENDING_STATES.includes(r.state as VmState) || r.state === 'ready')).length;
    rows = rows.filter((r) => r.job_id === null || !(PENDING_STATES.includes(r.state as VmState) || r.state === 'ready'));
    const provider = this.d.providers.get(cls.provider);
    const standbyCapable = supportsStandby(provider);
    // VMs made for standby go there as soon as they are up.
    for (const r of rows.filter((x) => x.state === 'ready' && this.toStandby.has(x.id) && !this.busy.has(x.id) && !this.reserved.has(x.id))) {
      this.toStandby.delete(r.id);
      await this.stopVm(cls, r, 'made for standby');
      r.updated_at = new Date(now);
    }
    const count = (states: VmState[]) => rows.filter((r) => states.includes(r.state as VmState)).length;
    // A reserved VM still counts as warm: the reservation only covers a job request in flight,
    // which mostly answers "no job". Counting it as taken made the pool create a VM on every
    // poll that a tick happened to overlap, and retire the surplus a minute later.
    const warm = rows.filter((r) => r.state === 'ready' && !this.busy.has(r.id) && !this.toStandby.has(r.id));
    const free = warm.filter((r) => !this.reserved.has(r.id));
    const standby = rows.filter((r) => r.state === 'stopped' && !this.busy.has(r.id)).sort((a, b) => a.updated_at.getTime() - b.updated_at.getTime());
    const pendingRows = rows.filter((r) => PENDING_STATES.includes(r.state as VmState));
    // A booting VM that was ready before is a resume from standby.
    const resuming = pendingRows.filter((r) => r.state === 'booting' && r.ready_at !== null).length;
    // Made for standby and still booting, or being stopped right now (its stop call in flight).
    const pendingStandby =
      rows.filter((r) => this.toStandby.has(r.id) && (PENDING_STATES.includes(r.state as VmState) || r.state === 'ready')).length +
      rows.filter((r) => r.state === 'stopped' && this.busy.has(r.id)).length;
    const counts: ClassCounts = {
      pending: pendingRows.length - resuming - pendingStandby,
      ready: warm.length,
      busy: count(['assigned', 'running']) + rows.filter((r) => r.state === 'ready' && this.busy.has(r.id) && !this.toStandby.has(r.id)).length + forJob,
      leaving: count(['deleting', 'failed']),
      standby: standby.length,
      pendingStandby,
      resuming,
    };
    this.counts.set(cls.name, counts);
    // Providers that run VMs on capacity of their own (Mac hosts) cap the class at what they hold
    // now, and learn what it wants so they can grow: running jobs plus the warm target.
    const frozen = this.frozen.has(cls.name);
    const { targets, idleTimeMs } = this.targets(cls, counts, now);
    const held = provider?.capacity?.(cls.name, counts.busy + (frozen ? 0 : targets.hot));
    const max = held === undefined ? cls.pool.max : Math.min(cls.pool.max, held);
    this.maxNow.set(cls.name, max);
    const decision = decideScale({
      targets,
      // Room claimed by cold starts, or taken by VMs made since the rows were read, is not free.
      max: Math.max(0, max - this.unseenOf(cls.name).size),
      counts,
      readyVms: free.map((r) => ({ id: r.id, readyAt: (r.ready_at ?? r.created_at).getTime() })),
      frozen,
      blocked: this.growthBlocked(cls.name, now),
      idleTimeMs,
      standbyCapable,
      standbySince: standby.map((r) => r.updated_at.getTime()),
      now,
    });
    const stale = free.filter((r) => now - (r.ready_at ?? r.created_at).getTime() > WARM_MAX_AGE_MS).map((r) => r.id);
    for (const id of new Set([...decision.retire, ...stale])) {
      const row = free.find((r) => r.id === id)!;
      // Intake may have reserved it while this tick awaited: then it stays. Marking the cached
      // row first keeps reserve() off it while the transition commits.
      if (this.reserved.has(id)) continue;
      row.state = 'deleting';
      this.closeSession(id);
      await this.d.store.transition(id, 'ready', 'deleting', {}, decision.retire.includes(id) ? 'pool surplus' : 'warm VM recycled');
    }
    for (const id of decision.stop) if (!stale.includes(id)) await this.stopVm(cls, free.find((r) => r.id === id)!, 'surplus hot VM to standby');
    for (const r of standby.slice(0, decision.resume)) await this.resumeVm(cls, r);
    for (const r of standby.slice(decision.resume, decision.resume + decision.retireStandby)) await this.d.store.transition(r.id, 'stopped', 'deleting', {}, 'standby surplus');
    if (decision.create > 0) await this.createVms(cls, decision.create);
    if (decision.createStandby > 0) for (const id of await this.createVms(cls, decision.createStandby)) this.toStandby.add(id);
  }

  /** Write-ahead `stopped`, then stop or suspend it in the cloud (its disk stays: the standby tier). */
  private async stopVm(cls: ClassConfig, row: VmRow, why: string): Promise<void> {
    if (this.reserved.has(row.id)) return; // a job request holds it now
    row.state = 'stopped'; // keeps reserve() off it while the transition commits
    this.closeSession(row.id);
    const op = cls.pool.standbyMode === 'suspend' ? 'suspend' : 'stop';
    await this.lifecycle(cls, row, 'ready', 'stopped', `${why} (${op})`, op);
  }

  /** Write-ahead `booting` (a resume), then start it; the boot probe makes it ready again. */
  private async resumeVm(cls: ClassConfig, row: VmRow): Promise<void> {
    await this.lifecycle(cls, row, 'stopped', 'booting', 'resume from standby', 'start');
  }

  /** The state change first, then the cloud call it stands for; a failed call fails the VM. */
  private async lifecycle(cls: ClassConfig, row: VmRow, from: VmState, to: VmState, why: string, op: 'stop' | 'suspend' | 'start'): Promise<void> {
    if (!(await this.d.store.transition(row.id, from, to, {}, why))) return;
    const provider = this.provider(cls.provider);
    this.spawn([row.id], async () => {
      try {
        await this.cloud(provider, op, () => provider[op]!([vmRef(row)]));
      } catch (err) {
        await this.failVm({ ...row, state: to }, `${op} failed: ${(err as Error).message}`, `${op}_failed`);
      }
    });
  }

  /** The class's tier targets now, from its policy. */
  private targets(cls: ClassConfig, counts: ClassCounts, now: number): { targets: TierTargets; idleTimeMs: number } {
    const s = staticSettings(cls.pool, now);
    const model = this.d.demand?.get(cls.name);
    if (cls.pool.policy === 'predictive' && model) return { targets: model.targets(now, counts), idleTimeMs: model.idleTimeMs(s.idleTimeMs) };
    return { targets: staticTargets(s, counts.busy), idleTimeMs: s.idleTimeMs };
  }

  private async createVms(cls: ClassConfig, n: number): Promise<string[]> {
    const vms = Array.from({ length: n }, () => newVm(this.d.config.shard, cls));
    // Write-ahead: the rows exist before the cloud hears of the VMs (one transaction for all).
    await this.d.store.insertVms(vms);
    const specs = vms.map((vm) => {
      this.unseenOf(cls.name).add(vm.id);
      return this.spec(cls, vm);
    });
    this.d.log.info({ class: cls.name, count: n }, 'creating VMs');
    this.launch(cls, specs);
    return specs.map((x) => x.vmId);
  }

  /** Cold start: create the VM whose row intake wrote with its job (Store.bindJobToNewVm), in the room `claim` held. */
  launchForJob(cls: ClassConfig, vm: Pick<NewVmInput, 'id' | 'name' | 'publicKey' | 'hostKey'>, claim?: string): void {
    const claimed = this.unseenOf(cls.name);
    if (claim) claimed.delete(claim);
    claimed.add(vm.id);
    this.d.log.info({ class: cls.name, vm: vm.id }, 'creating a VM for a job (cold start)');
    this.launch(cls, [this.spec(cls, vm)]);
  }

  private spec(cls: ClassConfig, vm: Pick<NewVmInput, 'id' | 'name' | 'publicKey' | 'hostKey'>): VmSpec {
    const { shard } = this.d.config;
    return {
      vmId: vm.id,
      name: vm.name,
      shard,
      className: cls.name,
      labels: { [LABEL_SHARD]: shard, [LABEL_VM]: vm.id },
      publicKey: vm.publicKey,
      ...(vm.hostKey ? { hostKey: vm.hostKey } : {}),
      machine: cls.machine,
      maxRunSeconds: Math.ceil((WARM_MAX_AGE_MS + cls.bootTimeoutMs + cls.jobTimeoutMs) / 1000) + 600,
    };
  }

  /** A background task's database write, bounded with the others (see Limiter). */
  private write<T>(fn: () => Promise<T>): Promise<T> {
    return this.writes.run(fn);
  }

  /**
   * One create call per batch on clouds with a batch API, else one per VM; each VM is marked
   * booting as its own create returns, so boot probes (and their writes) spread out rather
   * than all starting when the slowest create of the batch returns.
   */
  private launch(cls: ClassConfig, specs: VmSpec[]): void {
    const provider = this.provider(cls.provider);
    const size = provider.capabilities.batchCreate ? CREATE_BATCH_MAX : 1;
    const batches = Array.from({ length: Math.ceil(specs.length / size) }, (_, i) => specs.slice(i * size, (i + 1) * size));
    for (const batch of batches) {
      this.spawn(batch.map((s) => s.vmId), async () => {
        for (const s of batch) await this.write(() => this.d.store.transition(s.vmId, 'requested', 'creating'));
        const results = await this.cloud(provider, 'create', () => provider.createMany(batch));
        for (const r of results) {
          if (r.ok) {
            await this.write(() => this.d.store.transition(r.vm.vmId, 'creating', 'booting', { cloud_id: r.vm.cloudId, zone: r.vm.zone ?? null }));
          } else {
            this.d.metrics.vmFailures.inc({ class: cls.name, reason: `create_${r.error.kind}` });
            if (r.error.kind === 'quota') this.blockGrowth(cls.name, r.error.message);
            this.d.log.warn({ vm: r.vmId, class: cls.name, kind: r.error.kind, err: r.error.message }, 'VM creation failed');
            await this.write(() => this.d.store.transition(r.vmId, 'creating', 'failed', { failure: r.error.message.slice(0, 500) }));
          }
        }
        this.notify();
      });
    }
  }


  /** One describe per provider for all booting VMs, then an SSH probe for each running one. */
  private async watchBooting(now: number): Promise<void> {
    const booting = this.rows.filter((r) => r.state === 'booting' && !this.busy.has(r.id) && !this.stale.has(r.id));
    const byProvider = new Map<string, VmRow[]>();
    for (const r of booting) {
      const cls = this.d.config.classes[r.class];
      if (!cls || now - bootStart(r) > cls.bootTimeoutMs) {
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
        cloud = (await this.cloud(provider, 'describe', () => provider.describe(rows.map(vmRef)))).vms;
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
    const privateKey = this.d.store.vmPrivateKey(row);
    this.spawn([row.id], async () => {
      if (!privateKey) return void (await this.failVm(row, 'private key unreadable with the current secrets.key', 'key'));
      const unpinned = provider.connectInfo({ ...vmRef(row), internalIp }, privateKey);
      const deadlineMs = bootStart(row) + cls.bootTimeoutMs;
      let session: SshSession;
      let published: string | undefined;
      try {
        // A VM that made its own host key (Windows on GCE): pinned to what it published.
        published = await this.publishedHostKey(provider, row, deadlineMs);
        const pin = published ?? row.host_key_fingerprint;
        const info = pinnedConnectInfo(unpinned, { id: row.id, host_key_fingerprint: pin });
        session = await this.d.probe(info, { deadlineMs, signal: this.abort.signal });
      } catch (err) {
        if (this.stopped) return;
        if (isHostKeyRefusal(err)) {
          reportHostKeyRefusal(this.d, row, err);
          return void (await this.failVm(row, err.message, refusalReason(err), err));
        }
        return void (await this.failVm(row, `not reachable over SSH: ${(err as Error).message}`, 'unreachable', err));
      }
      if (cls.executor === 'docker') {
        // The image must provide Docker Engine: a VM without it would fail every job it gets.
        const docker = await dockerEngineReady(session, deadlineMs, this.d.clock, this.abort.signal);
        if (docker !== true) {
          session.close();
          if (this.stopped) return;
          return void (await this.failVm(row, `Docker Engine not running on the VM (executor: docker): ${docker}`, 'docker'));
        }
      }
      const readyAt = new Date(this.d.clock.now());
      let marked: boolean;
      try {
        marked = await this.recordReady(row, { internal_ip: internalIp, ready_at: readyAt, ...(published ? { host_key_fingerprint: published } : {}) });
      } catch (err) {
        // The VM answered: a database failure is no reason to delete it. It stays booting and
        // the next describe probes it again.
        session.close();
        if (this.stopped) return;
        this.d.log.error({ vm: row.id, class: row.class, err }, 'database error recording a ready VM; it stays booting and is probed again');
        return;
      }
      if (marked) {
        this.sessions.set(row.id, session);
        const seconds = (readyAt.getTime() - bootStart(row)) / 1000;
        if (row.ready_at) {
          this.d.metrics.vmResume.observe({ class: row.class }, seconds);
          this.d.demand?.get(row.class)?.observeResume(seconds, row.zone);
        } else {
          this.d.metrics.vmBoot.observe({ class: row.class }, seconds);
          this.d.demand?.get(row.class)?.observeBoot(seconds, row.zone);
        }
        this.d.log.info({ vm: row.id, class: row.class, [row.ready_at ? 'resumeSeconds' : 'bootSeconds']: seconds }, 'VM ready');
      } else {
        session.close();
      }
      this.notify();
    });
  }

  /** booting -> ready, retried over transient database errors; a final failure is a PoolDatabaseError. */
  private async recordReady(row: VmRow, patch: { internal_ip: string; ready_at: Date; host_key_fingerprint?: string }): Promise<boolean> {
    try {
      return await pRetry(() => this.write(() => this.d.store.transition(row.id, 'booting', 'ready', patch)), {
        retries: 4,
        minTimeout: 100,
        maxTimeout: 2000,
        signal: this.abort.signal,
        shouldRetry: ({ error }) => isTransientDbError(error),
      });
    } catch (err) {
      throw new PoolDatabaseError(`could not record VM ${row.id} ready: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The provider's trusted reading of a VM's own host key, retried until it is published or the boot deadline. */
  private async publishedHostKey(provider: Provider, row: VmRow, deadlineMs: number): Promise<string | undefined> {
    if (!provider.hostKeyFingerprint) return undefined;
    for (;;) {
      try {
        return await this.cloud(provider, 'hostKey', () => provider.hostKeyFingerprint!(vmRef(row)));
      } catch (err) {
        if ((err as { kind?: string }).kind !== 'retryable' && (err as { kind?: string }).kind !== 'rateLimited') throw err;
        if (this.d.clock.now() >= deadlineMs) throw new Error(`its SSH host key was never published: ${(err as Error).message}`);
        await this.d.clock.sleep(1000, this.abort.signal);
      }
    }
  }

  /** Fails the VM (deleted next); `err`, the cause, goes to the log whole. */
  private async failVm(row: VmRow, why: string, reason: string, err?: unknown): Promise<void> {
    this.d.metrics.vmFailures.inc({ class: row.class, reason });
    this.d.log.warn({ vm: row.id, class: row.class, why, ...(err ? { err } : {}) }, 'VM failed');
    await this.write(() => this.d.store.transition(row.id, row.state as VmState, 'failed', { failure: why.slice(0, 500) }));
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
          await this.write(() => this.d.store.transition(r.id, 'deleting', 'deleted'));
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
