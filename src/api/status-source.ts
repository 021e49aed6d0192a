// What the status page needs from the running shard that the database does not hold: this
// manager's role, the pool's tiers as of its last tick, the isolation audit's last answer.
// Read-only and typed, so the API never reaches into the manager's parts (shard.ts fills it).
import type { AuditSnapshot } from '../manager/isolation-audit.js';
import type { ClassCounts } from '../manager/autoscaler.js';
import type { VmState } from '../manager/vm-states.js';

export type ManagerRole = 'active' | 'standby' | 'stopped';

/** A class's VMs by tier, as the status page names them. */
export interface PoolTiers {
  /** Warm: booted, never used, ready for a job. */
  hot: number;
  /** Stopped, never used: a start away from hot. */
  standby: number;
  /** On their way to hot or standby (requested, creating, booting, stopping, resuming). */
  booting: number;
  /** Running a job (assigned or running). */
  busy: number;
  /** Still in the cloud, on their way out (deleting, failed). */
  leaving: number;
}

export interface StatusSource {
  role(): ManagerRole;
  /** The configured classes, in config order (a class with no VM and no job is still listed). */
  classes(): readonly string[];
  /** The class's tiers as of the pool's last tick; null while there is no pool (standby) or before its first tick. */
  pool(className: string): PoolTiers | null;
  /** `off`: the audit never runs; otherwise its last answer (at null: none yet). */
  isolation(): { mode: 'off' | 'warn' | 'enforce'; last: AuditSnapshot };
}

export function tiersOfCounts(c: ClassCounts): PoolTiers {
  return {
    hot: c.ready,
    standby: c.standby ?? 0,
    booting: c.pending + (c.pendingStandby ?? 0) + (c.resuming ?? 0),
    busy: c.busy,
    leaving: c.leaving,
  };
}

/** The same tiers from VM rows' states, for a manager without a pool (standby): stopping and resuming VMs read as standby and booting. */
export function tiersOfStates(counts: Iterable<{ state: string; n: number }>): PoolTiers {
  const t: PoolTiers = { hot: 0, standby: 0, booting: 0, busy: 0, leaving: 0 };
  // Every live state is named: a new VmState fails the build here instead of going uncounted.
  const tier: Record<Exclude<VmState, 'deleted'>, keyof PoolTiers> = {
    ready: 'hot', stopped: 'standby', requested: 'booting', creating: 'booting', booting: 'booting',
    assigned: 'busy', running: 'busy', deleting: 'leaving', failed: 'leaving',
  };
  for (const { state, n } of counts) {
    const k = tier[state as Exclude<VmState, 'deleted'>];
    if (k) t[k] += n;
  }
  return t;
}
