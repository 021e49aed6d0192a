// A class's scaling step, the shell around the pure autoscaler: counts the class's VMs by tier
// (counts.ts), asks decideScale what to do under the class's policy and max, and carries the
// decision out through the lifecycle (every intent written before its cloud call).
import type { ClassConfig } from '../../config/types.js';
import type { VmRow } from '../../db/schema.js';
import { supportsStandby } from '../../providers/provider.js';
import { decideScale, staticSettings, staticTargets, type ClassCounts, type TierTargets } from '../autoscaler.js';
import { bootingForStandby, classTiers, overAge, readyForStandby, splitJobVms, type TierMarks } from './counts.js';
import type { PoolDeps } from './deps.js';
import type { GrowthGate } from './growth.js';
import type { Lifecycle } from './lifecycle.js';
import type { Reservations } from './reservations.js';
import type { PoolTasks } from './tasks.js';

export interface ScalerParts {
  d: PoolDeps;
  tasks: PoolTasks;
  reservations: Reservations;
  growth: GrowthGate;
  lifecycle: Lifecycle;
}

export class ClassScaler {
  /** VMs being made for the standby tier (stopped once up); a restart just keeps them hot. */
  readonly toStandby = new Set<string>();
  private readonly counts = new Map<string, ClassCounts>();
  /** The class's max at the last tick: pool.max, or less where the provider holds less (Mac hosts). */
  private readonly maxNow = new Map<string, number>();
  /** The pool's live marks on VMs, as the counting reads them. */
  readonly marks: TierMarks;

  constructor(private readonly p: ScalerParts) {
    this.marks = { busy: p.tasks.busy, reserved: p.reservations.reserved, toStandby: this.toStandby };
  }

  /** The class's VM counts as of the last tick; none before the first. */
  classCounts(className: string): ClassCounts | undefined {
    return this.counts.get(className);
  }

  /** The class's max as of the last tick; none before the first. */
  max(className: string): number | undefined {
    return this.maxNow.get(className);
  }

  /** One scaling step for the class over its rows of this tick. */
  async scale(cls: ClassConfig, rows: VmRow[], now: number): Promise<void> {
    const { d, reservations, growth, lifecycle } = this.p;
    // VMs made for a cold-start job are that job's, whatever their state: busy.
    const { own, forJob } = splitJobVms(rows);
    const provider = d.providers.get(cls.provider);
    const standbyCapable = supportsStandby(provider);
    // VMs made for standby go there as soon as they are up.
    for (const r of readyForStandby(own, this.marks)) {
      this.toStandby.delete(r.id);
      await lifecycle.stopVm(cls, r, 'made for standby');
      r.updated_at = new Date(now);
    }
    const { free, standby, counts } = classTiers(own, forJob, this.marks);
    this.counts.set(cls.name, counts);
    // Providers that run VMs on capacity of their own (Mac hosts) cap the class at what they hold
    // now, and learn what it wants so they can grow: running jobs plus the warm target.
    const frozen = growth.isFrozen(cls.name);
    const { targets, idleTimeMs } = this.targets(cls, counts, now);
    const held = provider?.capacity?.(cls.name, counts.busy + (frozen ? 0 : targets.hot));
    const max = held === undefined ? cls.pool.max : Math.min(cls.pool.max, held);
    this.maxNow.set(cls.name, max);
    const decision = decideScale({
      targets,
      // Room claimed by cold starts, or taken by VMs made since the rows were read, is not free.
      max: Math.max(0, max - reservations.promised(cls.name)),
      counts,
      readyVms: free.map((r) => ({ id: r.id, readyAt: (r.ready_at ?? r.created_at).getTime() })),
      frozen,
      blocked: growth.blocked(cls.name, now),
      idleTimeMs,
      standbyCapable,
      standbySince: standby.map((r) => r.updated_at.getTime()),
      now,
    });
    const stale = overAge(free, now);
    for (const id of new Set([...decision.retire, ...stale])) {
      await lifecycle.retire(free.find((r) => r.id === id)!, decision.retire.includes(id) ? 'pool surplus' : 'warm VM recycled');
    }
    for (const id of decision.stop) if (!stale.includes(id)) await lifecycle.stopVm(cls, free.find((r) => r.id === id)!, 'surplus hot VM to standby');
    for (const r of standby.slice(0, decision.resume)) await lifecycle.resumeVm(cls, r);
    // Kept hot instead: the VMs booting for standby that are nearest to up.
    for (const r of bootingForStandby(own, this.marks).slice(0, decision.redirect)) this.toStandby.delete(r.id);
    for (const r of standby.slice(decision.resume, decision.resume + decision.retireStandby)) await lifecycle.retireStandby(r, 'standby surplus');
    if (decision.create > 0) await lifecycle.createVms(cls, decision.create);
    if (decision.createStandby > 0) for (const id of await lifecycle.createVms(cls, decision.createStandby)) this.toStandby.add(id);
  }

  /** The class's tier targets now, from its policy. */
  private targets(cls: ClassConfig, counts: ClassCounts, now: number): { targets: TierTargets; idleTimeMs: number } {
    const s = staticSettings(cls.pool, now);
    const model = this.p.d.demand?.get(cls.name);
    if (cls.pool.policy === 'predictive' && model) return { targets: model.targets(now, counts), idleTimeMs: model.idleTimeMs(s.idleTimeMs) };
    return { targets: staticTargets(s, counts.busy), idleTimeMs: s.idleTimeMs };
  }
}
