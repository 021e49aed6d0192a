// Pure counting of a class's VMs by tier, from its rows and the pool's marks on them (background
// task in flight, reserved for a job request, made for standby). No I/O, no clock of its own:
// the pool's tick, intake (through classCounts) and the unit tests read the same numbers.
import type { VmRow } from '../../db/schema.js';
import type { ClassCounts } from '../autoscaler.js';
import { PENDING_STATES, VM_STATES, type VmState } from '../vm-states.js';

/** Warm VMs are recycled after this long, well before the cloud-side max run duration. */
export const WARM_MAX_AGE_MS = 6 * 3600_000;

/** The pool's marks on VMs, by id. */
export interface TierMarks {
  /** A background task (create, boot probe, stop, delete) is in flight. */
  busy: ReadonlySet<string>;
  /** Held for a job request in flight. */
  reserved: ReadonlySet<string>;
  /** Made for the standby tier: stopped once up. */
  toStandby: ReadonlySet<string>;
}

export interface ClassTiers {
  /** Ready for a job, reserved or not. */
  warm: VmRow[];
  /** Warm and not reserved: what the autoscaler may retire or stop. */
  free: VmRow[];
  /** Stopped (idle, not being stopped), longest-stopped first. */
  standby: VmRow[];
  counts: ClassCounts;
}

const pending = (r: VmRow) => PENDING_STATES.includes(r.state as VmState);

/** Rows grouped by class, in their order. */
export function byClass(rows: VmRow[]): Map<string, VmRow[]> {
  return groupBy(rows, (r) => r.class);
}

/** Rows grouped by a key, in order (one push per row: no array copies on the tick). */
export function groupBy(rows: Iterable<VmRow>, key: (r: VmRow) => string): Map<string, VmRow[]> {
  const out = new Map<string, VmRow[]>();
  for (const r of rows) {
    const list = out.get(key(r));
    if (list) list.push(r);
    else out.set(key(r), [r]);
  }
  return out;
}

/**
 * A class's rows without the VMs made for a cold-start job (bound to it and not yet running),
 * and how many those are: they are that job's whatever their state, so they count as busy.
 */
export function splitJobVms(rows: VmRow[]): { own: VmRow[]; forJob: number } {
  const isForJob = (r: VmRow) => r.job_id !== null && (pending(r) || r.state === 'ready');
  return { own: rows.filter((r) => !isForJob(r)), forJob: rows.filter(isForJob).length };
}

/** VMs made for standby and still booting, the first made first (the nearest to up). */
export function bootingForStandby(rows: VmRow[], marks: TierMarks): VmRow[] {
  return rows.filter((r) => marks.toStandby.has(r.id) && pending(r)).sort((a, b) => a.created_at.getTime() - b.created_at.getTime());
}

/** VMs made for standby that are up and idle: the pool stops them now. */
export function readyForStandby(rows: VmRow[], marks: TierMarks): VmRow[] {
  return rows.filter((x) => x.state === 'ready' && marks.toStandby.has(x.id) && !marks.busy.has(x.id) && !marks.reserved.has(x.id));
}

/** A class's tiers and counts; `rows` without the cold-start VMs, which `forJob` counts (splitJobVms). */
export function classTiers(rows: VmRow[], forJob: number, marks: TierMarks): ClassTiers {
  const { busy, reserved, toStandby } = marks;
  const count = (states: VmState[]) => rows.filter((r) => states.includes(r.state as VmState)).length;
  // A reserved VM still counts as warm: the reservation only covers a job request in flight,
  // which mostly answers "no job". Counting it as taken made the pool create a VM on every
  // poll that a tick happened to overlap, and retire the surplus a minute later.
  const warm = rows.filter((r) => r.state === 'ready' && !busy.has(r.id) && !toStandby.has(r.id));
  const free = warm.filter((r) => !reserved.has(r.id));
  const standby = rows.filter((r) => r.state === 'stopped' && !busy.has(r.id)).sort((a, b) => a.updated_at.getTime() - b.updated_at.getTime());
  const pendingRows = rows.filter(pending);
  // A booting VM that was ready before is a resume from standby.
  const isResume = (r: VmRow) => r.state === 'booting' && r.ready_at !== null;
  const resuming = pendingRows.filter(isResume).length;
  // Made for standby and still booting, or being stopped right now (its stop call in flight).
  const pendingStandby =
    rows.filter((r) => toStandby.has(r.id) && (pending(r) || r.state === 'ready')).length + rows.filter((r) => r.state === 'stopped' && busy.has(r.id)).length;
  const counts: ClassCounts = {
    // On their way to hot: neither resumes nor made for standby. (Subtracting pendingStandby,
    // which also holds VMs up or stopping, took those from the VMs still booting.)
    pending: pendingRows.filter((r) => !isResume(r) && !toStandby.has(r.id)).length,
    ready: warm.length,
    busy: count(['assigned', 'running']) + rows.filter((r) => r.state === 'ready' && busy.has(r.id) && !toStandby.has(r.id)).length + forJob,
    leaving: count(['deleting', 'failed']),
    standby: standby.length,
    pendingStandby,
    bootingStandby: bootingForStandby(rows, marks).length,
    resuming,
  };
  return { warm, free, standby, counts };
}

/** The warm VM a job request may take: ready, unbound, not made for standby, not reserved, no task in flight. */
export function pickWarm(rows: VmRow[], className: string, marks: TierMarks, stillReady: (id: string) => boolean = () => true): VmRow | undefined {
  return rows.find((r) => r.class === className && r.state === 'ready' && r.job_id === null && !marks.toStandby.has(r.id) && !marks.reserved.has(r.id) && !marks.busy.has(r.id) && stillReady(r.id));
}

/** Ids of the VMs that are warm (ready) in the database. */
export function readyIds(rows: VmRow[]): Set<string> {
  return new Set(rows.filter((r) => r.state === 'ready').map((r) => r.id));
}

/** Ids of the warm VMs ready longer than WARM_MAX_AGE_MS: recycled. */
export function overAge(free: VmRow[], now: number): string[] {
  return free.filter((r) => now - (r.ready_at ?? r.created_at).getTime() > WARM_MAX_AGE_MS).map((r) => r.id);
}

/** VMs per class and state (every state but `deleted`, zeros included for the configured classes): the gauge's values. */
export function stateTally(rows: VmRow[], classNames: string[]): { class: string; state: VmState; n: number }[] {
  const tally = new Map<string, { class: string; state: VmState; n: number }>();
  const at = (c: string, s: VmState) => {
    const key = `${c}\u0000${s}`;
    let e = tally.get(key);
    if (!e) tally.set(key, (e = { class: c, state: s, n: 0 }));
    return e;
  };
  for (const c of classNames) for (const s of VM_STATES) if (s !== 'deleted') at(c, s);
  for (const r of rows) at(r.class, r.state as VmState).n++;
  return [...tally.values()];
}
