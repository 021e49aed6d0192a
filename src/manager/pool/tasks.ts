// The pool's background work: cloud calls and the database writes that follow them run off the
// tick, one task per set of VMs, which the tick leaves alone while it runs (busy) and for the
// rest of the tick in which it ended (stale). Their writes share one Limiter.
import type { Logger } from 'pino';
import { Limiter } from '../limit.js';

/** Database writes the pool's background tasks (creates, probes, deletes) make at once. */
export const POOL_DB_WRITES = 4;

export class PoolTasks {
  /** VM ids with a background task (create, boot probe, delete) in flight. */
  readonly busy = new Set<string>();
  /**
   * VMs whose background task ended after this tick read its rows: their row here is out of
   * date (a VM just deleted still reads `deleting`), so this tick leaves them alone.
   */
  readonly stale = new Set<string>();
  private readonly tasks = new Set<Promise<unknown>>();
  private readonly writes: Limiter;
  private readonly abort = new AbortController();

  /** `ended` runs after each task (the pool ticks again), unless stopped. */
  constructor(
    private readonly log: Logger,
    dbWrites: number,
    private readonly ended: () => void,
  ) {
    this.writes = new Limiter(dbWrites);
  }

  /** Aborted when the pool stops: probes and waits give up. */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  /**
   * Runs `work` off the tick for these VMs. `release(id)` hands one VM back before the task ends
   * (a batch create whose VM is booting already), so the tick may probe it meanwhile.
   */
  spawn(vmIds: string[], work: (release: (vmId: string) => void) => Promise<void>): void {
    const owned = new Set(vmIds);
    for (const id of vmIds) this.busy.add(id);
    const giveBack = (id: string) => {
      this.busy.delete(id);
      this.stale.add(id);
    };
    const release = (id: string) => {
      if (!owned.delete(id)) return;
      giveBack(id);
      if (!this.stopped) this.ended();
    };
    const p = work(release)
      .catch((err) => this.log.error({ err, vms: vmIds }, 'pool task failed'))
      .finally(() => {
        for (const id of owned) giveBack(id);
        this.tasks.delete(p);
        if (!this.stopped) this.ended();
      });
    this.tasks.add(p);
  }

  /** A background task's database write, bounded with the others (see Limiter). */
  write<T>(fn: () => Promise<T>): Promise<T> {
    return this.writes.run(fn);
  }

  stop(): void {
    this.abort.abort();
  }

  /** Wait for the tasks in flight. */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.tasks]);
  }
}
