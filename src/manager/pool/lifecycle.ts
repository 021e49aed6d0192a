// The cloud lifecycle of the pool's VMs: create, stop and resume (the standby tier), retire,
// fail and delete. Crash-safety rule: every state change is written to the database (fenced by
// the shard epoch in the store) before the cloud call it stands for, which then runs as a
// background task.
import type { ClassConfig } from '../../config/types.js';
import type { VmRow } from '../../db/schema.js';
import type { CreateResult, VmSpec } from '../../providers/provider.js';
import type { NewVmInput } from '../store.js';
import type { VmState } from '../vm-states.js';
import { providerOf, timedCall } from './cloud.js';
import type { PoolDeps } from './deps.js';
import type { GrowthGate } from './growth.js';
import { newVm, vmRef, vmSpec } from './identity.js';
import type { Reservations } from './reservations.js';
import type { Sessions } from './sessions.js';
import type { PoolTasks } from './tasks.js';
import { groupBy } from './counts.js';

/** A failed cloud delete is retried after this long. */
const DELETE_RETRY_MS = 5_000;

/**
 * VMs per create call on clouds with a batch API: a scale-up of 1,000 as one call made the cloud's
 * answer outlast the call timeout, and one failure then failed them all.
 */
export const CREATE_BATCH_MAX = 100;

export interface LifecycleParts {
  d: PoolDeps;
  tasks: PoolTasks;
  sessions: Sessions;
  reservations: Reservations;
  growth: GrowthGate;
  /** A VM became ready or left: waiters look again. */
  notify: () => void;
}

export class Lifecycle {
  /** VMs whose cloud delete failed: not tried again before this time (ms). */
  private readonly deleteAfter = new Map<string, number>();

  constructor(private readonly p: LifecycleParts) {}

  /** New VMs for the pool (rows written first, in one transaction); their ids. */
  async createVms(cls: ClassConfig, n: number): Promise<string[]> {
    const { d, reservations } = this.p;
    const vms = Array.from({ length: n }, () => newVm(d.config.shard, cls));
    // Write-ahead: the rows exist before the cloud hears of the VMs (one transaction for all).
    await d.store.insertVms(vms);
    const specs = vms.map((vm) => {
      reservations.launched(cls.name, vm.id);
      return vmSpec(d.config.shard, cls, vm);
    });
    d.log.info({ class: cls.name, count: n }, 'creating VMs');
    this.launch(cls, specs);
    return specs.map((x) => x.vmId);
  }

  /** Cold start: create the VM whose row intake wrote with its job (Store.bindJobToNewVm), in the room `claim` held. */
  launchForJob(cls: ClassConfig, vm: Pick<NewVmInput, 'id' | 'name' | 'publicKey' | 'hostKey'>, claim?: string): void {
    const { d, reservations } = this.p;
    reservations.launched(cls.name, vm.id, claim);
    d.log.info({ class: cls.name, vm: vm.id }, 'creating a VM for a job (cold start)');
    this.launch(cls, [vmSpec(d.config.shard, cls, vm)]);
  }

  /**
   * One create call per batch on clouds with a batch API, else one per VM; each VM is marked
   * booting as its own create returns, so boot probes (and their writes) spread out rather
   * than all starting when the slowest create of the batch returns.
   */
  private launch(cls: ClassConfig, specs: VmSpec[]): void {
    const { d, tasks, growth } = this.p;
    const provider = providerOf(d.providers, cls.provider);
    const size = provider.capabilities.batchCreate ? CREATE_BATCH_MAX : 1;
    const batches = Array.from({ length: Math.ceil(specs.length / size) }, (_, i) => specs.slice(i * size, (i + 1) * size));
    for (const batch of batches) {
      tasks.spawn(
        batch.map((s) => s.vmId),
        async (release) => {
          for (const s of batch) await tasks.write(() => d.store.transition(s.vmId, 'requested', 'creating'));
          const settle = async (r: CreateResult): Promise<void> => {
            if (r.ok) {
              await tasks.write(() => d.store.transition(r.vm.vmId, 'creating', 'booting', { cloud_id: r.vm.cloudId, zone: r.vm.zone ?? null }));
            } else {
              d.metrics.vmFailures.inc({ class: cls.name, reason: `create_${r.error.kind}` });
              if (r.error.kind === 'quota') growth.block(cls.name, r.error.message);
              d.log.warn({ vm: r.vmId, class: cls.name, kind: r.error.kind, err: r.error.message }, 'VM creation failed');
              await tasks.write(() => d.store.transition(r.vmId, 'creating', 'failed', { failure: r.error.message.slice(0, 500) }));
            }
          };
          // A VM whose result comes early (gcp bulk: its own key is set) starts booting then,
          // not when the batch's slowest VM is done: 1,000 VMs' probes overlap the creates.
          const settled = new Map<string, Promise<void>>();
          const settleOnce = (r: CreateResult) => {
            const id = r.ok ? r.vm.vmId : r.vmId;
            if (settled.has(id)) return;
            // Handed back to the tick once booting (or failed): its probe need not wait for the batch.
            const done = settle(r).then(() => release(id));
            done.catch(() => {}); // handled below (Promise.all), not an unhandled rejection meanwhile
            settled.set(id, done);
          };
          let results: CreateResult[];
          try {
            results = await timedCall(d.metrics, provider, 'create', () => provider.createMany(batch, settleOnce));
          } finally {
            await Promise.allSettled(settled.values());
          }
          for (const r of results) settleOnce(r); // those the provider did not report early
          await Promise.all(settled.values()); // a write that failed fails the task
          this.p.notify();
        },
      );
    }
  }

  /** Write-ahead `deleting` for a warm VM, unless intake reserved it meanwhile (then it stays). */
  async retire(row: VmRow, why: string): Promise<void> {
    // Intake may have reserved it while this tick awaited. Marking the cached row first keeps
    // reserve() off it while the transition commits.
    if (this.p.reservations.has(row.id)) return;
    row.state = 'deleting';
    this.p.sessions.close(row.id);
    await this.p.d.store.transition(row.id, 'ready', 'deleting', {}, why);
  }

  /** Write-ahead `deleting` for a VM of the standby tier. */
  async retireStandby(row: VmRow, why: string): Promise<void> {
    await this.p.d.store.transition(row.id, 'stopped', 'deleting', {}, why);
  }

  /** Write-ahead `stopped`, then stop or suspend it in the cloud (its disk stays: the standby tier). */
  async stopVm(cls: ClassConfig, row: VmRow, why: string): Promise<void> {
    if (this.p.reservations.has(row.id)) return; // a job request holds it now
    row.state = 'stopped'; // keeps reserve() off it while the transition commits
    this.p.sessions.close(row.id);
    const op = cls.pool.standbyMode === 'suspend' ? 'suspend' : 'stop';
    await this.change(cls, row, 'ready', 'stopped', `${why} (${op})`, op);
  }

  /** Write-ahead `booting` (a resume), then start it; the boot probe makes it ready again. */
  async resumeVm(cls: ClassConfig, row: VmRow): Promise<void> {
    await this.change(cls, row, 'stopped', 'booting', 'resume from standby', 'start');
  }

  /** The state change first, then the cloud call it stands for; a failed call fails the VM. */
  private async change(cls: ClassConfig, row: VmRow, from: VmState, to: VmState, why: string, op: 'stop' | 'suspend' | 'start'): Promise<void> {
    const { d, tasks } = this.p;
    if (!(await d.store.transition(row.id, from, to, {}, why))) return;
    const provider = providerOf(d.providers, cls.provider);
    tasks.spawn([row.id], async () => {
      try {
        await timedCall(d.metrics, provider, op, () => provider[op]!([vmRef(row)]));
      } catch (err) {
        await this.failVm({ ...row, state: to }, `${op} failed: ${(err as Error).message}`, `${op}_failed`);
      }
    });
  }

  /** Fails the VM (deleted next); `err`, the cause, goes to the log whole. */
  async failVm(row: VmRow, why: string, reason: string, err?: unknown): Promise<void> {
    const { d, tasks } = this.p;
    d.metrics.vmFailures.inc({ class: row.class, reason });
    d.log.warn({ vm: row.id, class: row.class, why, ...(err ? { err } : {}) }, 'VM failed');
    await tasks.write(() => d.store.transition(row.id, row.state as VmState, 'failed', { failure: why.slice(0, 500) }));
  }

  /** The VM's job is over: its delete is due now, whatever a failed delete had put off. */
  deleteDue(vmId: string): void {
    this.deleteAfter.delete(vmId);
  }

  /** Failed VMs to `deleting`, then one delete call per provider for the VMs leaving (retried later on failure). */
  async deleteLeaving(rows: VmRow[], now: number): Promise<void> {
    const { d, tasks, sessions, reservations } = this.p;
    const leaving = rows.filter((r) => (r.state === 'deleting' || r.state === 'failed') && !tasks.busy.has(r.id) && !tasks.stale.has(r.id) && (this.deleteAfter.get(r.id) ?? 0) <= now);
    const due: VmRow[] = [];
    for (const r of leaving) {
      if (r.state === 'failed') await d.store.transition(r.id, 'failed', 'deleting');
      sessions.close(r.id);
      due.push(r);
    }
    for (const [pname, group] of groupBy(due, (r) => r.provider)) {
      const provider = providerOf(d.providers, pname);
      tasks.spawn(
        group.map((r) => r.id),
        async () => {
          try {
            await timedCall(d.metrics, provider, 'delete', () => provider.delete(group.map(vmRef)));
          } catch (err) {
            d.log.warn({ err, provider: pname, vms: group.map((r) => r.id) }, 'delete failed; will retry');
            for (const r of group) this.deleteAfter.set(r.id, d.clock.now() + DELETE_RETRY_MS);
            return;
          }
          for (const r of group) {
            this.deleteAfter.delete(r.id);
            reservations.release(r.id);
            await tasks.write(() => d.store.transition(r.id, 'deleting', 'deleted'));
          }
          this.p.notify();
        },
      );
    }
  }
}
