// Pure pool policy: how many never-used VMs of each tier a class holds, and what to do now.
// No I/O, no clock reads: callers pass `now` and what they observed, so the manager and the
// simulator (runner-fleet simulate) run the same decisions, the simulator on virtual time.
//
// Tiers: hot (booted, reachable, idle), standby (booted once, then stopped: disk only, resumes in
// seconds; only where the provider can stop/start), cold (created on demand).
import { Cron } from 'croner';
import type { PoolConfig, PoolPeriod } from '../config/types.js';

export interface ClassCounts {
  /** requested + creating + booting, on their way to hot. */
  pending: number;
  /** Hot: warm VMs, including one reserved by a job request in flight (it mostly stays warm). */
  ready: number;
  /** assigned + running. */
  busy: number;
  /** deleting + failed: still in the cloud, on their way out. */
  leaving: number;
  /** Standby: stopped, never used. */
  standby?: number;
  /** On their way to standby (booting for standby, or stopping). */
  pendingStandby?: number;
  /** Of pendingStandby: still booting (they can be kept hot instead). */
  bootingStandby?: number;
  /** Standby VMs being started (resume), on their way to hot. */
  resuming?: number;
}

export interface ReadyVm {
  id: string;
  readyAt: number;
}

/** What a class should hold, never-used, per tier. */
export interface TierTargets {
  hot: number;
  standby: number;
  /**
   * Surplus hot VMs are counted above this (>= hot; default hot): a policy that expects to want
   * them again soon keeps them rather than deleting and re-making them.
   */
  keepHot?: number;
}

export interface ScaleDecision {
  /** New VMs to create for the hot tier. */
  create: number;
  /** New VMs to create for the standby tier (booted once, then stopped). */
  createStandby: number;
  /** Standby VMs to start (resume) into the hot tier. */
  resume: number;
  /** VMs booting for standby to keep hot instead (sooner than a new boot, and no stop and resume). */
  redirect: number;
  /** Hot VMs to stop into the standby tier (surplus hot, standby short). */
  stop: string[];
  /** Hot VMs to retire (delete). */
  retire: string[];
  /** Standby VMs to retire (delete), by count (the oldest). */
  retireStandby: number;
  /** The class wanted more VMs than `max` (or the idle budget) allows. */
  capped: boolean;
}

export interface ScaleInput {
  targets: TierTargets;
  max: number;
  counts: ClassCounts;
  /** Hot VMs that may be retired or stopped (not reserved), oldest first. */
  readyVms: ReadyVm[];
  /** Draining: no new VMs, and never-used ones are retired. */
  frozen: boolean;
  /** The cloud refused to grow the class (quota, stockout): create nothing, keep what is warm. */
  blocked?: boolean;
  /** Hot VMs above target idle this long are retired or stopped. */
  idleTimeMs: number;
  /** Whether the provider can stop/start VMs (a standby tier). */
  standbyCapable: boolean;
  /** When each standby VM entered standby (oldest first); surplus ones go only after STANDBY_KEEP x idleTimeMs. */
  standbySince?: number[];
  now: number;
}

/** Every VM of the class that exists or is on its way: what counts toward `max`. */
export function liveVmCount(c: ClassCounts): number {
  return c.pending + c.ready + c.busy + c.leaving + (c.standby ?? 0) + (c.pendingStandby ?? 0) + (c.resuming ?? 0);
}

/**
 * How many more VMs the class may have now. `claimed`: room already promised since `counts` was
 * taken (cold-start job requests in flight, VMs created but not yet counted). The pool's
 * scaling, intake's cold start and the simulator all ask this one function, so a burst of
 * cold starts between two pool ticks cannot pass `max`.
 */
export function classRoom(c: ClassCounts, max: number, claimed = 0): number {
  return Math.max(0, max - liveVmCount(c) - claimed);
}

/** Surplus standby VMs are deleted after this many idle times unused. */
export const STANDBY_KEEP = 10;

/**
 * Move the class towards its tier targets within `max`. Hot comes first from standby (resume:
 * seconds) before cold (create: a boot); surplus hot VMs past `idleTimeMs` go to standby when it
 * is short, else are deleted.
 */
export function decideScale(input: ScaleInput): ScaleDecision {
  const { counts } = input;
  const standby = counts.standby ?? 0;
  const pendingStandby = counts.pendingStandby ?? 0;
  const resuming = counts.resuming ?? 0;
  const targets = input.standbyCapable ? input.targets : { hot: input.targets.hot, standby: 0 };
  const out: ScaleDecision = { create: 0, createStandby: 0, resume: 0, redirect: 0, stop: [], retire: [], retireStandby: 0, capped: false };

  if (input.frozen) {
    out.retire = input.readyVms.map((v) => v.id).slice(0, counts.ready);
    out.retireStandby = standby;
    return out;
  }

  const hotSoon = counts.pending + counts.ready + resuming;
  let hotShort = Math.max(0, targets.hot - hotSoon);
  // Resume standby first: seconds instead of a boot, and no new VM.
  out.resume = Math.min(hotShort, standby);
  hotShort -= out.resume;
  const standbyLeft = standby - out.resume;
  // Then VMs booting for standby: they are up sooner than a new VM, and skip the stop and resume.
  out.redirect = Math.min(hotShort, counts.bootingStandby ?? 0);
  hotShort -= out.redirect;
  // Surplus hot VMs idle long enough: to standby while it is short (no new VM), else delete. A
  // blocked class keeps what it has: it cannot get it back.
  let standbyShort = Math.max(0, targets.standby - standbyLeft - (pendingStandby - out.redirect));
  const hotSurplus = counts.ready + counts.pending - Math.max(targets.hot, input.targets.keepHot ?? 0);
  if (hotSurplus > 0 && !input.blocked) {
    for (const vm of input.readyVms) {
      if (out.stop.length + out.retire.length >= Math.min(hotSurplus, counts.ready)) break;
      if (input.now - vm.readyAt < input.idleTimeMs) continue;
      if (standbyShort > 0) {
        out.stop.push(vm.id);
        standbyShort--;
      } else {
        out.retire.push(vm.id);
      }
    }
  }
  let room = classRoom(counts, input.max);
  if (!input.blocked) {
    out.create = Math.min(hotShort, room);
    room -= out.create;
    out.createStandby = Math.min(standbyShort, room);
    out.capped = out.create < hotShort || out.createStandby < standbyShort;
  } else {
    out.capped = hotShort > 0;
  }
  // Standby costs a disk, re-making it a boot: surplus goes only after it stayed unused a while.
  const standbySurplus = standbyLeft + pendingStandby - out.redirect - targets.standby;
  if (standbySurplus > 0 && !input.blocked) {
    const old = input.standbySince ? input.standbySince.slice(out.resume).filter((t) => input.now - t >= STANDBY_KEEP * input.idleTimeMs).length : standbyLeft;
    out.retireStandby = Math.min(standbySurplus, standbyLeft, old);
  }
  return out;
}

// ---- static policy (GitLab autoscaler semantics) ---------------------------------------------

export interface StaticSettings {
  idle: number;
  idleTimeMs: number;
  scaleFactor: number;
  scaleFactorLimit: number;
  standby: number;
}

const crons = new Map<string, Cron>();
function cronOf(p: PoolPeriod): Cron {
  const key = `${p.cron}\0${p.timezone}`;
  let c = crons.get(key);
  if (!c) {
    c = new Cron(p.cron, { timezone: p.timezone, paused: true });
    crons.set(key, c);
  }
  return c;
}

/** The class's settings at `now`: the base, overridden by the last period whose schedule matches. */
export function staticSettings(pool: PoolConfig, now: number): StaticSettings {
  let s: StaticSettings = { idle: pool.idle, idleTimeMs: pool.idleTimeMs, scaleFactor: pool.scaleFactor, scaleFactorLimit: pool.scaleFactorLimit, standby: pool.standby };
  const at = new Date(Math.floor(now / 60_000) * 60_000);
  for (const p of pool.periods) {
    if (!cronOf(p).match(at)) continue;
    s = {
      idle: p.idle ?? s.idle,
      idleTimeMs: p.idleTimeMs ?? s.idleTimeMs,
      scaleFactor: p.scaleFactor ?? s.scaleFactor,
      scaleFactorLimit: p.scaleFactorLimit ?? s.scaleFactorLimit,
      standby: p.standby ?? s.standby,
    };
  }
  return s;
}

/**
 * GitLab's rule: idle capacity = max(idle, scaleFactor x busy), the factor's part capped at
 * scaleFactorLimit (0 = no cap).
 */
export function staticTargets(s: StaticSettings, busy: number): TierTargets {
  let scaled = Math.ceil(s.scaleFactor * busy);
  if (s.scaleFactorLimit > 0) scaled = Math.min(scaled, s.scaleFactorLimit);
  return { hot: Math.max(s.idle, scaled), standby: s.standby };
}

// ---- intake mode -----------------------------------------------------------------------------

export type IntakeMode = 'preemptive' | 'coldStart';

/**
 * `preemptive`: ask GitLab for a job only with a reservable VM (the job waits in GitLab's queue
 * otherwise). `coldStart`: ask and create a VM for the job. The default (`auto`) asks with a
 * VM when one is hot or on its way sooner than a fresh boot, and cold-starts when the class holds
 * none: then a boot started now is the fastest start the job can get.
 */
export function intakeMode(configured: PoolConfig['intake'], counts: ClassCounts): IntakeMode {
  if (configured !== 'auto') return configured;
  return counts.ready + counts.pending + (counts.resuming ?? 0) + (counts.standby ?? 0) > 0 ? 'preemptive' : 'coldStart';
}
