// The predictive policy's model of one class (pure: fed observations and `now`, no I/O). It learns
// the arrival rate by time of week (5-minute slots, averaged over the weeks of history), follows
// the last minutes' rate, reads GitLab's queue hints, learns boot and resume times (log-normal,
// exponentially weighted, per zone: boot-time.ts), and sizes the hot and standby tiers so that a job waits longer than
// the class's target with probability at most `bound`, at the least idle cost:
//   - a job that finds a hot VM starts at once; one that finds only standby waits a resume; one
//     that finds neither waits a boot; a resume or boot is late (over the target) with the
//     probability its learnt log-normal gives;
//   - arrivals in a lead time L are modelled as pipelines: batches of the observed mean size B
//     arriving as a Poisson process, so N(L) = B x Poisson(lambda L / B);
//   - hot + standby cover N(boot p95) and hot covers N(resume p95), each at the quantile that
//     keeps P(none free) x P(late) within `bound`; a class whose boot is rarely late holds
//     nothing, and a provider without stop/start holds everything hot.

import type { ClassConfig } from '../config/types.js';
import type { ClassCounts, TierTargets } from './autoscaler.js';
import { ZonedTime } from './boot-time.js';

export interface BootTime {
  medianS: number;
  p95S: number;
}

/** Boot times to assume (median:p95 seconds) until the class's own boots are observed. */
export function priorBootTime(cls: Pick<ClassConfig, 'name' | 'provider' | 'machine'>): BootTime {
  const image = JSON.stringify(cls.machine).toLowerCase();
  if (cls.provider === 'gcp') return /windows/.test(image) || /windows/.test(cls.name) ? { medianS: 180, p95S: 300 } : { medianS: 35, p95S: 60 };
  if (cls.provider === 'mac') return { medianS: 40, p95S: 90 };
  if (cls.provider === 'local') return { medianS: 2, p95S: 4 };
  return { medianS: 35, p95S: 60 };
}

/**
 * Prior resume time from standby as a fraction of a cold boot, until resumes are observed: a
 * stopped VM skips provisioning but boots its OS again; a suspended one only reloads its memory.
 */
export function priorResumeFraction(pool: Pick<ClassConfig['pool'], 'standbyMode'>): number {
  return pool.standbyMode === 'suspend' ? 0.1 : 0.25;
}

const SLOT_MS = 5 * 60_000;
const WEEK_MS = 7 * 24 * 3600_000;
const SLOTS = WEEK_MS / SLOT_MS;
const RECENT_MS = 10 * 60_000;
const EPOCH_MONDAY = 4 * 24 * 3600_000; // 1970-01-01 was a Thursday: slot 0 is Monday 00:00 UTC

export interface DemandModelOptions {
  targetMs: number;
  bound: number;
  max: number;
  idleBudget: number | null;
  standbyCapable: boolean;
  /** Prior boot time (log-normal through median and p95), seconds, until boots are observed. */
  boot: { medianS: number; p95S: number };
  /** Resume time as a fraction of boot time, until resumes are observed. */
  resumeFraction: number;
}

export class DemandModel {
  /** Arrivals per slot of the week, averaged over the weeks of history. */
  private readonly weekly = new Float64Array(SLOTS);
  private readonly weeklyCount = new Float64Array(SLOTS);
  private readonly recent: number[] = [];
  private recentHead = 0;
  private queued = 0;
  readonly bootTime: ZonedTime;
  readonly resumeTime: ZonedTime;

  constructor(private readonly o: DemandModelOptions) {
    this.bootTime = new ZonedTime(o.boot.medianS, o.boot.p95S);
    this.resumeTime = new ZonedTime(o.boot.medianS * o.resumeFraction, o.boot.p95S * o.resumeFraction);
  }

  static slotOf(t: number): number {
    return Math.floor((((t - EPOCH_MONDAY) % WEEK_MS) + WEEK_MS) % WEEK_MS / SLOT_MS);
  }

  /** Past arrivals (ms): their rate per slot of the week becomes the seasonal forecast. */
  learnHistory(arrivals: Iterable<number>, fromMs: number, toMs: number): void {
    const counts = new Float64Array(SLOTS);
    for (const t of arrivals) if (t >= fromMs && t < toMs) counts[DemandModel.slotOf(t)]!++;
    // How many times each slot occurred in [from, to): the average is per occurrence.
    for (let s = 0; s < SLOTS; s++) {
      const first = fromMs + ((((s - DemandModel.slotOf(fromMs)) % SLOTS) + SLOTS) % SLOTS) * SLOT_MS;
      const times = first >= toMs ? 0 : Math.floor((toMs - 1 - first) / WEEK_MS) + 1;
      if (times > 0) {
        this.weekly[s] = (this.weekly[s]! * this.weeklyCount[s]! + counts[s]!) / (this.weeklyCount[s]! + times);
        this.weeklyCount[s]! += times;
      }
    }
  }

  observeArrival(t: number): void {
    this.recent.push(t);
  }

  /** A VM booted in `seconds` (in `zone`, where the provider has zones). */
  observeBoot(seconds: number, zone?: string | null): void {
    this.bootTime.observe(seconds, zone);
  }

  observeResume(seconds: number, zone?: string | null): void {
    this.resumeTime.observe(seconds, zone);
  }

  /** GitLab's queue hint (job_info.queue_size / queue_depth): jobs waiting for this class now. */
  observeQueue(jobs: number): void {
    this.queued = Math.max(0, jobs);
  }

  private trimRecent(now: number): void {
    while (this.recentHead < this.recent.length && this.recent[this.recentHead]! < now - RECENT_MS) this.recentHead++;
    if (this.recentHead > 4096) {
      this.recent.splice(0, this.recentHead);
      this.recentHead = 0;
    }
  }

  /** Expected arrivals per second over [now, now + leadMs]: the larger of season and the last 10 minutes. */
  rate(now: number, leadMs: number): number {
    this.trimRecent(now);
    let seasonal = 0;
    for (let t = now; t <= now + leadMs + SLOT_MS; t += SLOT_MS) seasonal = Math.max(seasonal, this.weekly[DemandModel.slotOf(t)]! / (SLOT_MS / 1000));
    // The last 10 minutes, not the last one: a one-minute rate chases single pipelines (their
    // fan-out is in batchSize) and made the pool create and retire ~0.8 VMs per job in the sim.
    const n = this.recent.length - this.recentHead;
    return Math.max(seasonal, n / (RECENT_MS / 1000));
  }

  /** Mean jobs per arrival instant in the last minutes (pipeline fan-out), at least 1. */
  batchSize(now: number): number {
    this.trimRecent(now);
    // Jobs created within 250 ms of an instant's first are one fan-out.
    let instants = 0;
    let start = -Infinity;
    for (let i = this.recentHead; i < this.recent.length; i++) {
      if (this.recent[i]! - start > 250) {
        instants++;
        start = this.recent[i]!;
      }
    }
    const n = this.recent.length - this.recentHead;
    return instants > 0 ? Math.max(1, n / instants) : 1;
  }

  /**
   * VMs to hold so that the arrivals within `leadMs` find one, except with probability
   * `bound / pLate`: a job that finds none waits a resume or boot, late with probability pLate,
   * so the chance of a late start stays within `bound`.
   */
  private cover(now: number, leadMs: number, pLate: number): number {
    const q = 1 - this.o.bound / Math.max(pLate, 1e-9);
    if (q <= 0) return 0;
    const lambda = this.rate(now, leadMs);
    const b = this.batchSize(now);
    return Math.ceil(b * poissonQuantile((lambda * leadMs) / 1000 / b, q));
  }

  targets(now: number, counts: ClassCounts): TierTargets {
    const target = this.o.targetMs / 1000;
    // Hot + standby cover the arrivals while a cold VM boots; with stop/start, hot covers those
    // while a standby VM resumes (standby then refills hot in time).
    const coverBoot = this.cover(now, this.bootTime.p95 * 1000, this.bootTime.exceeds(target));
    let hot = coverBoot;
    let standby = 0;
    if (this.o.standbyCapable) {
      hot = Math.min(coverBoot, this.cover(now, this.resumeTime.p95 * 1000, this.resumeTime.exceeds(target)));
      standby = coverBoot - hot;
    }
    hot += this.queued;
    // Bounds: live VMs within max, never-used VMs within the idle budget (hot first).
    const room = Math.max(0, this.o.max - counts.busy);
    hot = Math.min(hot, room);
    standby = Math.min(standby, Math.max(0, room - hot));
    if (this.o.idleBudget !== null) {
      hot = Math.min(hot, this.o.idleBudget);
      standby = Math.min(standby, Math.max(0, this.o.idleBudget - hot));
    }
    return { hot, standby };
  }
}

/** Smallest k with P(Poisson(m) <= k) >= p. */
export function poissonQuantile(m: number, p: number): number {
  if (!(m > 0)) return 0;
  if (m > 400) return Math.ceil(m + probit(p) * Math.sqrt(m));
  let k = 0;
  let pmf = Math.exp(-m);
  let cdf = pmf;
  while (cdf < p && k < 10_000) {
    k++;
    pmf *= m / k;
    cdf += pmf;
  }
  return k;
}

/** Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9). */
export function probit(p: number): number {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628277459239];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const q = Math.min(Math.max(p, 1e-12), 1 - 1e-12);
  if (q < 0.02425) {
    const r = Math.sqrt(-2 * Math.log(q));
    return (((((c[0]! * r + c[1]!) * r + c[2]!) * r + c[3]!) * r + c[4]!) * r + c[5]!) / ((((d[0]! * r + d[1]!) * r + d[2]!) * r + d[3]!) * r + 1);
  }
  if (q > 1 - 0.02425) return -probit(1 - q);
  const r = q - 0.5;
  const s = r * r;
  return ((((((a[0]! * s + a[1]!) * s + a[2]!) * s + a[3]!) * s + a[4]!) * s + a[5]!) * r) / (((((b[0]! * s + b[1]!) * s + b[2]!) * s + b[3]!) * s + b[4]!) * s + 1);
}
