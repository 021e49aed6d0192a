// Per-class VM lifecycle and warm-pool bookkeeping. One serialized tick takes the live VMs
// from the pool's view of the shard (pool/view.ts), counts them by tier (pool/counts.ts, pure),
// asks the pure autoscaler what to do (pool/scaler.ts), and writes every intent (new rows, delete
// intents) before it starts the cloud calls that carry them out in the background
// (pool/lifecycle.ts, pool/boot.ts, pool/tasks.ts). This class composes those parts and keeps
// the pool's public face: reservations and room claims for intake (pool/reservations.ts), the
// boot probe's SSH sessions for the executor (pool/sessions.ts), counts for status and drain.
import type { ClassConfig } from '../config/types.js';
import type { VmRow } from '../db/schema.js';
import type { SshSession } from '../connect/ssh.js';
import { classRoom, type ClassCounts } from './autoscaler.js';
import type { NewVmInput } from './store.js';
import { BootWatch } from './pool/boot.js';
import { byClass, pickWarm, readyIds, stateTally } from './pool/counts.js';
import type { PoolDeps } from './pool/deps.js';
import { GrowthGate } from './pool/growth.js';
import { Lifecycle } from './pool/lifecycle.js';
import { Reservations } from './pool/reservations.js';
import { ClassScaler } from './pool/scaler.js';
import { Sessions } from './pool/sessions.js';
import { POOL_DB_WRITES, PoolTasks } from './pool/tasks.js';
import { RESYNC_MS, ShardView } from './pool/view.js';

export { PoolDatabaseError } from './pool/boot.js';
export { newVm, vmName, vmRef } from './pool/identity.js';

export class Pool {
  private rows: VmRow[] = [];
  private readonly view: ShardView;
  private readonly tasks: PoolTasks;
  private readonly sessions = new Sessions();
  private readonly reservations = new Reservations();
  private readonly growth: GrowthGate;
  private readonly lifecycle: Lifecycle;
  private readonly boot: BootWatch;
  private readonly scaler: ClassScaler;
  private readonly waiters = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | null = null;
  private again = false;

  constructor(private readonly d: PoolDeps) {
    this.tasks = new PoolTasks(d.log, d.dbWrites ?? POOL_DB_WRITES, () => void this.kick());
    this.view = new ShardView(d.store, d.resyncMs ?? RESYNC_MS);
    this.growth = new GrowthGate(d);
    const notify = () => this.notify();
    const { tasks, sessions, reservations, growth } = this;
    this.lifecycle = new Lifecycle({ d, tasks, sessions, reservations, growth, notify });
    this.boot = new BootWatch({ d, tasks, sessions, lifecycle: this.lifecycle, notify });
    this.scaler = new ClassScaler({ d, tasks, reservations, growth, lifecycle: this.lifecycle });
  }

  /** VM rows read from the table so far (tests, the scale bench). */
  get rowsRead(): number {
    return this.view.rowsRead;
  }

  start(): void {
    const every = this.d.tickMs ?? 500;
    const loop = () => {
      if (this.tasks.stopped) return;
      void this.kick();
      this.timer = setTimeout(loop, every);
    };
    loop();
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
      } while (this.again && !this.tasks.stopped);
      this.ticking = null;
    })();
    return this.ticking;
  }

  /** Stop creating; warm VMs of the class are retired at the next tick. */
  freeze(className?: string): void {
    this.growth.freeze(className ? [className] : Object.keys(this.d.config.classes));
    void this.kick();
  }

  /** Reserve a warm VM of the class for a job request; null when none is free. */
  reserve(className: string): VmRow | null {
    if (this.growth.isFrozen(className)) return null;
    // The tick's rows can be a tick old: a VM bound (and released) since is no longer ready in the
    // view, which follows every committed write; two requests must never get one VM.
    const vm = pickWarm(this.rows, className, this.scaler.marks, (id) => this.view.isReady(id));
    if (!vm) return null;
    this.reservations.hold(vm.id);
    return vm;
  }

  release(vmId: string): void {
    this.reservations.release(vmId);
  }

  /** A live SSH session opened by the boot probe, handed over once to the executor. */
  takeSession(vmId: string): SshSession | undefined {
    return this.sessions.take(vmId);
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

  /** The live VMs as of the last tick, for drain, the status page and tests. */
  snapshot(): VmRow[] {
    return this.rows;
  }

  /** The class's VM counts as of the last tick (intake's cold-start judgement); none before the first. */
  classCounts(className: string): ClassCounts | undefined {
    return this.scaler.classCounts(className);
  }

  /** The job is over: delete its VM now rather than at the next tick. */
  deleteNow(vmId: string): void {
    this.sessions.close(vmId);
    this.lifecycle.deleteDue(vmId);
    void this.kick();
  }

  /**
   * Claim room for one cold-start VM before asking GitLab for its job: null when the class is at
   * its max (or its provider's capacity, e.g. no Mac host ready), frozen or blocked. Atomic with
   * every other claim and with the pool's own creates; give it back with releaseRoom, or turn it
   * into the job's VM with launchForJob.
   */
  claimRoom(cls: ClassConfig): string | null {
    const c = this.classCounts(cls.name);
    if (!c || this.growth.isFrozen(cls.name) || this.growth.blocked(cls.name, this.d.clock.now())) return null;
    const max = this.scaler.max(cls.name) ?? cls.pool.max;
    return this.reservations.claim(cls.name, (promised) => classRoom(c, max, promised) >= 1);
  }

  releaseRoom(className: string, claim: string): void {
    this.reservations.releaseRoom(className, claim);
  }

  /** Cold start: create the VM whose row intake wrote with its job (Store.bindJobToNewVm), in the room `claim` held. */
  launchForJob(cls: ClassConfig, vm: Pick<NewVmInput, 'id' | 'name' | 'publicKey' | 'hostKey'>, claim?: string): void {
    this.lifecycle.launchForJob(cls, vm, claim);
  }

  async stop(): Promise<void> {
    this.tasks.stop(); // aborts probes and waits; no task kicks a tick after this
    this.view.close();
    clearTimeout(this.timer);
    await this.ticking;
    await this.tasks.settle();
    this.sessions.closeAll();
    this.notify();
  }

  /** Wait for background cloud calls (tests, drain). */
  async settle(): Promise<void> {
    await this.ticking;
    await this.tasks.settle();
  }

  private async tick(): Promise<void> {
    const now = this.d.clock.now();
    await this.view.refresh(now);
    this.tasks.stale.clear();
    this.rows = this.view.copies();
    this.reservations.seen(new Set(this.rows.map((r) => r.id)));
    this.reservations.keepOnly(readyIds(this.rows));
    this.updateGauge();
    const classes = byClass(this.rows);
    for (const [name, cls] of Object.entries(this.d.config.classes)) {
      await this.scaler.scale(cls, classes.get(name) ?? [], now);
    }
    await this.boot.watch(this.rows, now);
    await this.lifecycle.deleteLeaving(this.rows, now);
  }

  private updateGauge(): void {
    const g = this.d.metrics.vms;
    g.reset();
    for (const e of stateTally(this.rows, Object.keys(this.d.config.classes))) g.set({ class: e.class, state: e.state }, e.n);
  }
}
