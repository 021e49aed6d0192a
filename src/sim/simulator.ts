// runner-fleet simulate: the manager's decision core on a virtual clock. Each class runs the real
// autoscaler (static settings with periods, or the predictive demand model), the real tier logic
// (decideScale) and the real intake mode rule against a simulated provider (log-normal boot and
// resume times, stop/start where the provider has it) and a simulated GitLab queue (jobs wait
// until the class's intake takes them: at its next poll when a hot VM is free, at once when a VM
// turns hot, or with a fresh VM in cold-start mode). Discrete events in a binary heap; VM-seconds
// integrate the count of VMs per state between events.
import type { ClassConfig, ShardConfig } from '../config/types.js';
import { classRoom, decideScale, intakeMode, staticSettings, staticTargets, type ClassCounts, type TierTargets } from '../manager/autoscaler.js';
import { DemandModel, priorBootTime as defaultBoot, priorResumeFraction } from '../manager/predictive.js';
import { logNormal, rng } from './random.js';
import type { TraceJob } from './trace.js';
import type { ZonedTime } from '../manager/boot-time.js';

export type { BootTime } from '../manager/predictive.js';
import type { BootTime } from '../manager/predictive.js';

export interface SimulateOptions {
  config: ShardConfig;
  jobs: TraceJob[];
  /** Overrides every class's `pool.policy`. */
  policy?: 'static' | 'predictive';
  boot?: Record<string, BootTime>;
  /** Resume time as a fraction of boot time (standby tier); default by the class's standbyMode (stop 0.25, suspend 0.1). */
  resumeFraction?: number;
  seed?: number;
  /**
   * Autoscaler tick: the live pool's loop (500 ms). A class decides at a tick when something of
   * it changed since its last decision (a job came or started, a VM turned hot or reached
   * standby), and at least every `fullTickS` (idle times and the forecast move with the clock).
   */
  tickS?: number;
  /** Every class decides at least this often (default 5 s). */
  fullTickS?: number;
  /** The provider's describe of the VMs on their way, at most one per this (the live pool's provider pollInterval, default 2 s). */
  describeS?: number;
  /** Where the virtual clock starts (ms since the epoch): periods and the weekly profile read it. */
  startMs?: number;
  /** Sample pool size every this many seconds for the report's `timeline` (0 = none). */
  timelineS?: number;
  /**
   * The week before (arrival seconds from its start, 7 days before `startMs`): what the predictive
   * model learns from. Absent: the trace itself stands for last week (a policy judged on the
   * traffic it learned).
   */
  history?: TraceJob[];
  /** false: no provider stop/start, so no standby tier (whatever the provider). */
  standby?: boolean;
  /** Boot (and resume) times of a class scaled by this at second t: a zone that slows down. */
  bootScale?: Record<string, (tS: number) => number>;
  /** An hour counts in `worstHourLateShare` with at least this many jobs of the class (default 20). */
  hourMinJobs?: number;
  /**
   * Figures count only from this second (jobs arriving from it; VM-seconds and calls from it):
   * the jobs before it warm the pool up, as a live pool is warm when a day begins. Hours are
   * counted from it too.
   */
  measureFromS?: number;
}

export interface Figures {
  jobs: number;
  startedWithin120s: number;
  startLatency: { p50: number; p90: number; p99: number; max: number };
  busyVmSeconds: number;
  bootVmSeconds: number;
  hotIdleVmSeconds: number;
  standbyVmSeconds: number;
  oracleOverheadVmSeconds: number;
  cloudCalls: { create: number; delete: number; stop: number; start: number; list: number };
  /** Jobs still waiting when the trace's last job could have finished (a class that never gets a VM). */
  jobsNotStarted: number;
  /** Share of jobs that started later than their class's `pool.target` (the predictive promise). */
  lateShare: number;
  /** The largest such share in any hour (by arrival) with at least `hourMinJobs` jobs of a class. */
  worstHourLateShare: number;
  /** Per hour (by arrival, from the measured start): [jobs, late jobs]. */
  lateByHour: [number, number][];
  /** Share of created VMs that never ran a job (made, idled, deleted or left at the end). */
  neverUsedShare: number;
  /** Cloud calls (create, delete, stop, start, list) per job. */
  callsPerJob: number;
  /** boot + hot idle + 0.1 x standby VM-seconds (a stopped VM pays its disk) over the oracle's. */
  overheadVsOracle: number;
}

export interface SimReport extends Figures {
  byClass: Record<string, Figures>;
  /** Predictive classes: the boot and resume times (median, p95 s) the policy planned with at the end, and how many it learnt from. */
  learnt?: Record<string, { bootS: { median: number; p95: number; observed: number }; resumeS: { median: number; p95: number; observed: number } }>;
  timeline?: { t: number; hot: Record<string, number>; standby: Record<string, number>; busy: Record<string, number> }[];
  /** Start latency of the jobs that arrived in each timeline window (all classes). */
  latencyTimeline?: { t: number; jobs: number; p50: number; p90: number; max: number }[];
}

/** Providers whose VMs can be stopped and started (a standby tier). */
const STOP_START = new Set(['gcp', 'aws']);
const STOP_S = 10;

type Ev =
  | { t: number; k: 'arrive'; c: number; job: number }
  | { t: number; k: 'hot'; c: number; vm: number; bootS: number; resumeS?: number } // a VM became hot (boot, or resume when bootS < 0)
  | { t: number; k: 'standby'; c: number; vm: number } // a VM reached standby (booted then stopped, or stopped)
  | { t: number; k: 'stopping'; c: number; vm: number; bootS: number } // a VM made for standby booted: now it stops
  | { t: number; k: 'coldReady'; c: number; job: number; bootS: number }
  | { t: number; k: 'done'; c: number }
  | { t: number; k: 'tick' }
  | { t: number; k: 'poll'; c: number };

class Heap {
  private readonly a: Ev[] = [];
  get size(): number {
    return this.a.length;
  }
  push(e: Ev): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]!.t <= e.t) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = e;
  }
  pop(): Ev {
    const a = this.a;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= a.length) break;
        const r = l + 1;
        const m = r < a.length && a[r]!.t < a[l]!.t ? r : l;
        if (a[m]!.t >= last.t) break;
        a[i] = a[m]!;
        i = m;
      }
      a[i] = last;
    }
    return top;
  }
}

interface Cls {
  name: string;
  cfg: ClassConfig;
  policy: 'static' | 'predictive';
  standbyCapable: boolean;
  bootMedianS: number;
  boot: () => number;
  resume: () => number;
  model: DemandModel | null;
  pollS: number;
  queue: number[];
  queueHead: number;
  /** Hot idle VMs: id -> ready time (s), insertion order = oldest first. */
  hot: Map<number, number>;
  standby: number[];
  /** When each standby VM got there (s), parallel to `standby`. */
  standbySince: number[];
  pendingHot: number;
  pendingStandby: number;
  /** Of pendingStandby: still booting (the rest are stopping). */
  bootingStandby: number;
  /** VMs booting for standby kept hot instead: the next of them up turns hot (VMs are alike). */
  redirected: number;
  resuming: number;
  busy: number;
  coldBooting: number;
  // integrals
  last: number;
  busyS: number;
  bootS: number;
  hotS: number;
  standbyS: number;
  latencies: number[];
  /** Arrival second of each job in `latencies` (same order). */
  arrivals: number[];
  targetS: number;
  calls: Figures['cloudCalls'];
  /** The calls made before `measureFromS` (subtracted from the figures). */
  callsBefore: Figures['cloudCalls'] | null;
  /** Jobs that started on a VM from `measureFromS` on (each ran on its own VM). */
  startedMeasured: number;
  polling: boolean;
  /** Something of the class changed since its last decision. */
  dirty: boolean;
  lastDecision: number;
}

export function simulate(o: SimulateOptions): SimReport {
  const random = rng(o.seed ?? 1);
  const tick = o.tickS ?? 0.5;
  const fullTick = Math.max(tick, o.fullTickS ?? 5);
  const describeS = o.describeS ?? 2;
  /** Per provider: when its last describe was (one call, shared by the classes waiting on it). */
  const describes = new Map<string, number>();
  const startMs = o.startMs ?? Date.parse('2026-11-23T00:00:00Z'); // a Monday
  const classes: Cls[] = Object.values(o.config.classes).map((cfg) => {
    const bt = o.boot?.[cfg.name] ?? defaultBoot(cfg);
    const policy = o.policy ?? cfg.pool.policy;
    const standbyCapable = STOP_START.has(cfg.provider) && o.standby !== false;
    const resumeFraction = o.resumeFraction ?? priorResumeFraction(cfg.pool);
    const model =
      policy === 'predictive'
        ? new DemandModel({ targetMs: cfg.pool.targetMs, bound: cfg.pool.bound, max: cfg.pool.max, idleBudget: cfg.pool.idleBudget, standbyCapable, boot: { medianS: bt.medianS, p95S: bt.p95S }, resumeFraction })
        : null;
    const scale = o.bootScale?.[cfg.name];
    const bootDraw = logNormal(random, bt.medianS, bt.p95S);
    const resumeDraw = logNormal(random, bt.medianS * resumeFraction, bt.p95S * resumeFraction);
    return {
      name: cfg.name, cfg, policy, standbyCapable, bootMedianS: bt.medianS,
      boot: scale ? () => bootDraw() * scale(now) : bootDraw,
      resume: scale ? () => resumeDraw() * scale(now) : resumeDraw,
      model, pollS: o.config.gitlab.pollIntervalMs / 1000,
      queue: [], queueHead: 0, hot: new Map(), standby: [], standbySince: [], pendingHot: 0, pendingStandby: 0, bootingStandby: 0, redirected: 0, resuming: 0, busy: 0, coldBooting: 0,
      last: 0, busyS: 0, bootS: 0, hotS: 0, standbyS: 0, latencies: [], arrivals: [], targetS: cfg.pool.targetMs / 1000, calls: { create: 0, delete: 0, stop: 0, start: 0, list: 0 }, callsBefore: null, startedMeasured: 0, polling: false,
      dirty: true, lastDecision: -Infinity,
    };
  });
  const byName = new Map(classes.map((c, i) => [c.name, i]));
  const jobs = o.jobs;
  // The predictive model's history: last week's arrivals (`history`), or the trace's own weekly
  // profile as if last week had the same traffic (the live manager learns it from its job history).
  const span = jobs.reduce((m, j) => Math.max(m, j.arrivalS), 0);
  const past = o.history ?? jobs;
  const pastSpan = o.history ? 7 * 86_400 : span;
  for (const c of classes) {
    if (!c.model) continue;
    const arrivals = past.filter((j) => j.className === c.name).map((j) => startMs - 7 * 86_400_000 + j.arrivalS * 1000);
    c.model.learnHistory(arrivals, startMs - 7 * 86_400_000, startMs - 7 * 86_400_000 + Math.max(pastSpan * 1000, 1));
  }

  const horizon = span + jobs.reduce((m, j) => Math.max(m, j.durationS), 0) + 6 * 3600;
  const heap = new Heap();
  for (let i = 0; i < jobs.length; i++) heap.push({ t: jobs[i]!.arrivalS, k: 'arrive', c: byName.get(jobs[i]!.className)!, job: i });
  heap.push({ t: 0, k: 'tick' });
  let vmIds = 0;
  let started = 0;
  // Read by the boot-time draws (bootScale), so declared before the first draw.
  let now = 0;
  /** The virtual clock as epoch ms (what the live pool's model reads). */
  const wallMs = () => startMs + now * 1000;
  const timeline: NonNullable<SimReport['timeline']> = [];
  let nextSample = 0;

  const from = o.measureFromS ?? 0;
  /** Set at the first event from `from` on, when the calls made so far are put aside. */
  let measuring = false;
  const integrate = (c: Cls) => {
    const dt = now - Math.max(c.last, from);
    if (dt <= 0) {
      c.last = Math.max(c.last, now);
      return;
    }
    c.busyS += dt * c.busy;
    c.bootS += dt * (c.pendingHot + c.bootingStandby + c.resuming + c.coldBooting);
    c.hotS += dt * c.hot.size;
    // A VM on its way into standby (stopping) is counted with standby.
    c.standbyS += dt * (c.standby.length + c.pendingStandby - c.bootingStandby);
    c.last = now;
  };
  const counts = (c: Cls): ClassCounts => ({
    pending: c.pendingHot,
    ready: c.hot.size,
    busy: c.busy + c.coldBooting,
    leaving: 0,
    standby: c.standby.length,
    pendingStandby: c.pendingStandby,
    bootingStandby: c.bootingStandby,
    resuming: c.resuming,
  });
  const waiting = (c: Cls) => c.queue.length - c.queueHead;
  const windows = new Map<number, number[]>();
  const record = (c: Cls, job: number) => {
    if (jobs[job]!.arrivalS < from) return;
    const l = now - jobs[job]!.arrivalS;
    c.latencies.push(l);
    c.arrivals.push(jobs[job]!.arrivalS - from);
    if (o.timelineS) {
      const w = Math.floor(jobs[job]!.arrivalS / o.timelineS);
      const list = windows.get(w) ?? [];
      list.push(l);
      windows.set(w, list);
    }
  };
  const startJob = (c: Cls, job: number) => {
    if (now >= from) c.startedMeasured++;
    c.busy++;
    record(c, job);
    started++;
    heap.push({ t: now + jobs[job]!.durationS, k: 'done', c: byName.get(c.name)! });
  };
  /** Preemptive intake: each free hot VM takes the oldest waiting job. */
  const match = (c: Cls) => {
    while (waiting(c) > 0 && c.hot.size > 0) {
      const [vm] = c.hot.keys();
      c.hot.delete(vm!);
      startJob(c, c.queue[c.queueHead++]!);
    }
    if (c.queueHead > 1024 && c.queueHead * 2 > c.queue.length) {
      c.queue.splice(0, c.queueHead);
      c.queueHead = 0;
    }
  };
  /** Cold-start intake: take waiting jobs and boot a VM for each, within max (the manager's room check). */
  const coldStart = (c: Cls, ci: number) => {
    while (waiting(c) > 0 && classRoom(counts(c), c.cfg.pool.max) > 0) {
      const job = c.queue[c.queueHead++]!;
      const b = c.boot();
      c.coldBooting++;
      c.calls.create++;
      heap.push({ t: now + b, k: 'coldReady', c: ci, job, bootS: b });
    }
  };
  const intake = (c: Cls, ci: number) => {
    if (waiting(c) === 0) return;
    const mode = intakeMode(c.cfg.pool.intake, counts(c));
    if (mode === 'preemptive' || c.hot.size > 0) match(c);
    if (mode === 'coldStart') coldStart(c, ci);
  };
  /** The intake loop asks again one poll interval after GitLab's last "no job" (phase random on arrival). */
  const schedulePoll = (c: Cls, ci: number, delayS: number) => {
    if (c.polling || now > horizon) return;
    c.polling = true;
    heap.push({ t: now + delayS, k: 'poll', c: ci });
  };

  const targetsOf = (c: Cls, cs: ClassCounts): { targets: TierTargets; idleTimeMs: number } => {
    const s = staticSettings(c.cfg.pool, wallMs());
    if (c.model) return { targets: c.model.targets(wallMs(), cs), idleTimeMs: c.model.idleTimeMs(s.idleTimeMs) };
    return { targets: staticTargets(s, c.busy + c.coldBooting), idleTimeMs: s.idleTimeMs };
  };

  const scale = (c: Cls, ci: number) => {
    const cs = counts(c);
    const { targets, idleTimeMs } = targetsOf(c, cs);
    // decideScale reads the hot VMs only for a surplus: most decisions have none.
    const surplus = cs.ready + cs.pending - Math.max(targets.hot, targets.keepHot ?? 0) > 0;
    const d = decideScale({
      targets, max: c.cfg.pool.max, counts: cs,
      readyVms: surplus ? [...c.hot].map(([id, readyAt]) => ({ id: String(id), readyAt: readyAt * 1000 })) : [],
      frozen: false, idleTimeMs, standbyCapable: c.standbyCapable, now: now * 1000,
      standbySince: c.standbySince.map((t) => t * 1000),
    });
    for (let i = 0; i < d.create; i++) {
      const b = c.boot();
      c.pendingHot++;
      c.calls.create++;
      heap.push({ t: now + b, k: 'hot', c: ci, vm: ++vmIds, bootS: b });
    }
    for (let i = 0; i < d.createStandby; i++) {
      c.pendingStandby++;
      c.bootingStandby++;
      c.calls.create++;
      const b = c.boot();
      heap.push({ t: now + b, k: 'stopping', c: ci, vm: ++vmIds, bootS: b });
    }
    for (let i = 0; i < d.resume; i++) {
      // Resume the oldest first; the order matches standbySince.
      c.standby.shift();
      c.standbySince.shift();
      c.resuming++;
      c.calls.start++;
      const r = c.resume();
      heap.push({ t: now + r, k: 'hot', c: ci, vm: ++vmIds, bootS: -1, resumeS: r });
    }
    c.bootingStandby -= d.redirect;
    c.pendingStandby -= d.redirect;
    c.pendingHot += d.redirect;
    c.redirected += d.redirect;
    for (const id of d.stop) {
      c.hot.delete(Number(id));
      c.pendingStandby++;
      c.calls.stop++;
      heap.push({ t: now + STOP_S, k: 'standby', c: ci, vm: Number(id) });
    }
    for (const id of d.retire) {
      c.hot.delete(Number(id));
      c.calls.delete++;
    }
    for (let i = 0; i < d.retireStandby; i++) {
      c.standby.shift();
      c.standbySince.shift();
      c.calls.delete++;
    }
  };
  /**
   * The live pool describes each provider's VMs on their way at most once per poll interval,
   * one call for all its classes: the call is shared among the classes with VMs on their way.
   */
  const describe = () => {
    const due = new Map<string, Cls[]>();
    for (const c of classes) {
      if (c.pendingHot + c.pendingStandby + c.resuming + c.coldBooting === 0) continue;
      const p = c.cfg.provider;
      if (now - (describes.get(p) ?? -Infinity) < describeS) continue;
      due.set(p, [...(due.get(p) ?? []), c]);
    }
    for (const [p, cs] of due) {
      describes.set(p, now);
      for (const c of cs) c.calls.list += 1 / cs.length;
    }
  };

  const lastArrival = span;
  while (heap.size > 0) {
    const e = heap.pop();
    // Ticks stop once every job has started, or at the horizon (a class that never gets a VM).
    if (e.k === 'tick' && e.t > lastArrival && (started === jobs.length || e.t > horizon)) continue;
    now = e.t;
    if (!measuring && now >= from) {
      measuring = true;
      for (const k of classes) k.callsBefore = { ...k.calls };
    }
    if (o.timelineS && now >= nextSample) {
      for (const c of classes) integrate(c);
      timeline.push({
        t: Math.round(now),
        hot: Object.fromEntries(classes.map((c) => [c.name, c.hot.size + c.pendingHot + c.resuming])),
        standby: Object.fromEntries(classes.map((c) => [c.name, c.standby.length + c.pendingStandby])),
        busy: Object.fromEntries(classes.map((c) => [c.name, c.busy + c.coldBooting])),
      });
      nextSample = now + o.timelineS;
    }
    if (e.k === 'tick') {
      for (let ci = 0; ci < classes.length; ci++) {
        const c = classes[ci]!;
        if (!c.dirty && now - c.lastDecision < fullTick - 1e-9) continue;
        c.dirty = false;
        c.lastDecision = now;
        integrate(c);
        c.model?.observeQueue(waiting(c)); // GitLab's queue hint
        scale(c, ci);
        if (waiting(c) > 0) intake(c, ci);
      }
      describe();
      heap.push({ t: now + tick, k: 'tick' });
      continue;
    }
    const c = classes[e.c]!;
    c.dirty = true;
    integrate(c);
    switch (e.k) {
      case 'arrive':
        c.queue.push(e.job);
        c.model?.observeArrival(wallMs());
        schedulePoll(c, e.c, c.pollS * random());
        break;
      case 'poll':
        c.polling = false;
        intake(c, e.c);
        if (waiting(c) > 0) schedulePoll(c, e.c, c.pollS);
        break;
      case 'hot':
        if (e.bootS >= 0) {
          c.pendingHot--;
          c.model?.observeBoot(e.bootS, null, wallMs());
        } else {
          // Learnt when it is up, as the live pool does (not when it was asked for).
          c.resuming--;
          c.model?.observeResume(e.resumeS!, null, wallMs());
        }
        c.hot.set(e.vm, now);
        // A VM turning hot wakes the intake loop: it asks GitLab at once.
        match(c);
        break;
      case 'stopping':
        // Up once before it stops: its boot is learnt, as the live pool learns every boot it sees.
        c.model?.observeBoot(e.bootS, null, wallMs());
        if (c.redirected > 0) {
          // Booted for standby, kept hot instead.
          c.redirected--;
          c.pendingHot--;
          c.hot.set(e.vm, now);
          match(c);
          break;
        }
        c.bootingStandby--;
        c.calls.stop++;
        heap.push({ t: now + STOP_S, k: 'standby', c: e.c, vm: e.vm });
        break;
      case 'standby':
        c.pendingStandby--;
        c.standby.push(e.vm);
        c.standbySince.push(now);
        break;
      case 'coldReady':
        if (now >= from) c.startedMeasured++;
        c.coldBooting--;
        c.model?.observeBoot(e.bootS, null, wallMs());
        c.busy++;
        record(c, e.job);
        started++;
        heap.push({ t: now + jobs[e.job]!.durationS, k: 'done', c: e.c });
        break;
      case 'done':
        c.busy--;
        c.calls.delete++;
        if (waiting(c) > 0) intake(c, e.c);
        break;
    }
  }
  for (const c of classes) integrate(c);

  /** Calls of a kind made from `measureFromS` on. */
  const measuredCalls = (c: Cls, k: keyof Figures['cloudCalls']) => c.calls[k] - (c.callsBefore?.[k] ?? 0);
  const figures = (cs: Cls[], jobCount: number, oracle: number): Figures => {
    const lat = cs.flatMap((c) => c.latencies).sort((a, b) => a - b);
    const q = (p: number) => (lat.length ? round(lat[Math.min(lat.length - 1, Math.ceil(p * lat.length) - 1)]!) : 0);
    const sum = (f: (c: Cls) => number) => round(cs.reduce((a, c) => a + f(c), 0));
    return {
      jobs: jobCount,
      startedWithin120s: jobCount ? round(lat.filter((l) => l <= 120).length / jobCount, 6) : 1,
      startLatency: { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: lat.length ? round(lat[lat.length - 1]!) : 0 },
      busyVmSeconds: sum((c) => c.busyS),
      bootVmSeconds: sum((c) => c.bootS),
      hotIdleVmSeconds: sum((c) => c.hotS),
      standbyVmSeconds: sum((c) => c.standbyS),
      oracleOverheadVmSeconds: round(oracle),
      cloudCalls: {
        create: sum((c) => measuredCalls(c, 'create')), delete: sum((c) => measuredCalls(c, 'delete')), stop: sum((c) => measuredCalls(c, 'stop')),
        start: sum((c) => measuredCalls(c, 'start')), list: sum((c) => measuredCalls(c, 'list')),
      },
      jobsNotStarted: jobCount - lat.length,
      ...promise(cs, jobCount, oracle),
    };
  };
  /** The promise (late share, whole run and worst hour), never-used VMs, calls per job, overhead. */
  const promise = (cs: Cls[], jobCount: number, oracle: number) => {
    let late = 0;
    let worst = 0;
    const byHour: [number, number][] = [];
    for (const c of cs) {
      const hours = new Map<number, [number, number]>();
      for (let i = 0; i < c.latencies.length; i++) {
        const h = Math.floor(c.arrivals[i]! / 3600);
        const cell = hours.get(h) ?? [0, 0];
        cell[0]++;
        if (c.latencies[i]! > c.targetS) {
          cell[1]++;
          late++;
        }
        hours.set(h, cell);
      }
      for (const [h, [n, l]] of hours) {
        if (n >= (o.hourMinJobs ?? 20)) worst = Math.max(worst, l / n);
        const cell = (byHour[h] ??= [0, 0]);
        cell[0] += n;
        cell[1] += l;
      }
    }
    late += jobCount - cs.reduce((a, c) => a + c.latencies.length, 0); // never started: late
    const creates = cs.reduce((a, c) => a + measuredCalls(c, 'create'), 0);
    const startedHere = cs.reduce((a, c) => a + c.startedMeasured, 0);
    const calls = cs.reduce((a, c) => a + measuredCalls(c, 'create') + measuredCalls(c, 'delete') + measuredCalls(c, 'stop') + measuredCalls(c, 'start') + measuredCalls(c, 'list'), 0);
    const overhead = cs.reduce((a, c) => a + c.bootS + c.hotS + 0.1 * c.standbyS, 0);
    return {
      lateShare: jobCount ? round(late / jobCount, 6) : 0,
      worstHourLateShare: round(worst, 6),
      lateByHour: Array.from(byHour, (c) => c ?? [0, 0]),
      // Each job runs on its own VM, made for it or taken warm: the other creates ran nothing.
      neverUsedShare: creates ? round(Math.max(0, creates - startedHere) / creates, 6) : 0,
      callsPerJob: jobCount ? round(calls / jobCount, 3) : 0,
      overheadVsOracle: oracle ? round(overhead / oracle, 3) : 0,
    };
  };
  // Jobs measured per class (from measureFromS on), counted in one pass.
  const measuredJobs = new Map<string, number>();
  for (const j of jobs) if (j.arrivalS >= from) measuredJobs.set(j.className, (measuredJobs.get(j.className) ?? 0) + 1);
  const jobsOf = (c: Cls) => measuredJobs.get(c.name) ?? 0;
  const byClass = Object.fromEntries(classes.map((c) => [c.name, figures([c], jobsOf(c), jobsOf(c) * c.bootMedianS)]));
  const report: SimReport = {
    // The jobs measured (from measureFromS on): warm-up jobs are neither counted nor late.
    ...figures(classes, classes.reduce((a, c) => a + jobsOf(c), 0), classes.reduce((a, c) => a + jobsOf(c) * c.bootMedianS, 0)),
    byClass,
  };
  const learnt = classes.filter((c) => c.model).map((c) => {
    const t = (z: ZonedTime) => ({ median: round(z.median, 3), p95: round(z.p95, 3), observed: z.overall.observations });
    return [c.name, { bootS: t(c.model!.bootTime), resumeS: t(c.model!.resumeTime) }] as const;
  });
  if (learnt.length) report.learnt = Object.fromEntries(learnt);
  if (o.timelineS) {
    report.timeline = timeline;
    report.latencyTimeline = [...windows.entries()].sort((a, b) => a[0] - b[0]).map(([w, l]) => {
      l.sort((a, b) => a - b);
      const q = (p: number) => round(l[Math.min(l.length - 1, Math.ceil(p * l.length) - 1)]!);
      return { t: w * o.timelineS!, jobs: l.length, p50: q(0.5), p90: q(0.9), max: round(l[l.length - 1]!) };
    });
  }
  return report;
}

function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
