// The predictive policy's model of one class (pure: fed observations and `now`, no I/O). It learns
// the arrival rate by time of week (5-minute slots, averaged over the weeks of history, smoothed
// over +-10 minutes, never below a quarter of the mean), follows the last minutes' rate, reads
// GitLab's queue hints, learns boot and resume times (log-normal, weighted by time, per
// zone: boot-time.ts) and the distribution of pipeline fan-outs, and sizes the hot and standby
// tiers so that the share of jobs starting later than the class's target stays within `bound`,
// at the least idle cost:
//   - a job that finds a hot VM starts at once; one that finds only standby waits a resume; one
//     that finds neither waits a boot; base-stock replenishment orders a VM per job taken, and a
//     job finding none starts in time if one of those on their way is up within the target. Leads
//     are independent, so a later order often overtakes an earlier one: the VMs not up by then
//     are an M/G/infinity count of the orders before it (outstanding()), not the demand of one
//     lead's excess with every lead alike (which held Windows' peak stock ~1.5x too high);
//   - job-weighted, as the promise is: a pipeline of b jobs arriving to s free VMs makes b - s of
//     them wait, so the tiers are base stocks for compound demand (batches of the learnt size
//     distribution, each leaving those of its b not yet up; their count as scattered as history
//     shows it: merge trains) (baseStock); the waiting jobs of a pipeline take the first of its b
//     replacements to come up, so with a lead near the target most of them still start in time;
//   - a merge train under way (more pipelines in the last minute than the forecast explains)
//     raises the rate the stock is sized at while it lasts, for leads short enough to help (surge);
//   - the promise holds per hour, so the share planned at a rate is below the bound by the
//     scatter an hour of that many jobs, as clustered as the class's history, has (plannedShare);
//   - hot + standby cover the demand over a boot and hot the demand over a resume; a class whose
//     boot is rarely late holds nothing, and a provider without stop/start holds everything hot;
//   - a surplus warm VM without a standby tier to go to is kept at least a boot (rent or buy), and
//     none below the most the policy wanted in the last few minutes (keepHot).

import type { ClassConfig } from '../config/types.js';
import type { ClassCounts, TierTargets } from './autoscaler.js';
import { normalCdf, ZonedTime } from './boot-time.js';

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
const SMOOTH_SLOTS = 2;
/** The forecast never goes below this share of the class's mean rate over its history. */
const RATE_FLOOR = 0.25;
/**
 * The promise holds in every hour, not only over the day: an hour's late share scatters around
 * the planned one, the more so the fewer jobs it holds and the more of them come together
 * (pipelines, merge trains). So the share planned at a rate is the largest p with
 * p + HOUR_Z x sd <= bound, sd = sqrt(p x c / N): N the jobs of an hour at that rate, c the
 * arrivals' dispersion (variance over mean of 5-minute counts, learnt from history). A busy hour
 * is planned near the bound, a quiet one with a merge train in it well below. Every hour of a day
 * must pass, not one: with 15-20 hours of enough jobs, a day passes about 6 times in 10 only if
 * each hour passes 97-98 times in 100. The late count of an hour is lumpier than normal (a few
 * pipelines beyond the stock are a quiet hour's allowance), so z = 3, not the normal 2: with the
 * replacements' order crossing counted (outstanding()), z = 2 kept 23 of 48 corpus cells, z = 3
 * 28-31, for 5-7% more overhead.
 */
const HOUR_Z = 3;
/**
 * An hour with fewer jobs is not judged alone (it counts in the day, as the corpus judges hours of
 * 20 jobs or more): its share is planned for a day's scatter (plannedShare).
 */
const HOUR_MIN_JOBS = 20;
/**
 * The tiers are sized one by one (hot for a resume, hot + standby for a boot), but a job that
 * misses the hot tier can also find the standby tier empty, and the two misses come together in
 * bursts: each tier's share is a part of the planned one. hot + standby is planned deeper still
 * with a standby tier, as standby costs a tenth of hot. Calibrated on the corpus's weekday trace
 * (the cheapest parts keeping the busiest class's promise in every hour, with and without
 * standby), judged on its other traces. Hot against a resume stays at 1: 2 keeps Linux small's
 * promise too (0.5% late, 2.0% in the worst hour) for 9% less, but takes Windows and GPU, whose
 * resume is past the target, further past theirs.
 */
const RESUME_PART = 1;
const STANDBY_PART = 0.4;
/** Without a standby tier: hot alone against a boot. */
const BOOT_PART = 1;
const WEEK_MS = 7 * 24 * 3600_000;
/** A used VM's replacement is ordered at the pool's next decision: up to a tick (500 ms) and the intake's wake-up. */
const DECIDE_S = 1;
/** keepHot's window: at least this, and at least KEEP_BOOTS slow (p95) boots. */
const KEEP_WINDOW_MS = 5 * 60_000;
const KEEP_BOOTS = 3;
const SLOTS = WEEK_MS / SLOT_MS;
const RECENT_MS = 10 * 60_000;
/**
 * A merge train is recognised by its pipelines in the last SURGE_S seconds: at least SURGE_MIN and
 * SURGE_Z standard deviations above the forecast's (surge()). It is acted on for a lead of at most
 * SURGE_LEAD_S (median): VMs ordered then are up while a train (a minute or two) still runs; a
 * Windows boot (3 minutes) comes after it, and reacting only left VMs that ran nothing (the corpus's
 * Windows classes: 15-38% never used, 1.5x the overhead).
 */
const SURGE_S = 60;
const SURGE_MIN = 3;
const SURGE_Z = 2;
const SURGE_LEAD_S = 120;
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
  /** Jobs per second over the learnt history (the floor of the forecast). */
  private meanRate = 0;
  /** Variance over mean of the history's 5-minute counts (1 for Poisson arrivals); null before history. */
  private dispersion: number | null = null;
  /**
   * Variance over mean of the number of batches (pipelines) in a window of DISPERSION_WINDOWS_S[i]
   * seconds, around the seasonal forecast, from history (1 for Poisson; merge trains and a day
   * busier than the season raise it, the more the longer the window); all 1 before history.
   */
  private batchDispersion: number[] = DISPERSION_WINDOWS_S.map(() => 1);
  /** How many jobs arrive together (pipeline fan-out), learned over history and since. */
  readonly batches = new BatchSizes();
  /** cover() answers by input bucket: the batch-size distribution changes slowly. */
  private readonly covers = new Map<string, number>();
  /** outstanding() and the overflow of a pipeline by the lead's buckets: they need no rate, and cost more than the base stock. */
  private readonly leftOver = new Map<string, { demand: ReturnType<typeof outstanding>; overflow: Float64Array }>();
  private coversVersion = -1;
  readonly bootTime: ZonedTime;
  readonly resumeTime: ZonedTime;

  constructor(private readonly o: DemandModelOptions) {
    this.bootTime = new ZonedTime(o.boot.medianS, o.boot.p95S);
    this.resumeTime = new ZonedTime(o.boot.medianS * o.resumeFraction, o.boot.p95S * o.resumeFraction);
  }

  static slotOf(t: number): number {
    return Math.floor((((t - EPOCH_MONDAY) % WEEK_MS) + WEEK_MS) % WEEK_MS / SLOT_MS);
  }

  /** Past arrivals (ms): their rate per slot of the week becomes the seasonal forecast, their fan-outs the batch sizes. */
  learnHistory(arrivals: Iterable<number>, fromMs: number, toMs: number): void {
    const counts = new Float64Array(SLOTS);
    const inRange: number[] = [];
    for (const t of arrivals) if (t >= fromMs && t < toMs) {
      counts[DemandModel.slotOf(t)]!++;
      inRange.push(t);
    }
    inRange.sort((a, b) => a - b);
    this.batches.learn(inRange);
    if (toMs > fromMs) this.meanRate = Math.max(this.meanRate, inRange.length / ((toMs - fromMs) / 1000));
    // How many times each slot occurred in [from, to): the average is per occurrence.
    for (let s = 0; s < SLOTS; s++) {
      const first = fromMs + ((((s - DemandModel.slotOf(fromMs)) % SLOTS) + SLOTS) % SLOTS) * SLOT_MS;
      const times = first >= toMs ? 0 : Math.floor((toMs - 1 - first) / WEEK_MS) + 1;
      if (times > 0) {
        this.weekly[s] = (this.weekly[s]! * this.weeklyCount[s]! + counts[s]!) / (this.weeklyCount[s]! + times);
        this.weeklyCount[s]! += times;
      }
    }
    // Dispersion of the 5-minute counts around the season (the smoothed profile).
    let sq = 0;
    let mean = 0;
    const slots = Math.floor((toMs - fromMs) / SLOT_MS);
    const perSlot = new Float64Array(slots);
    for (const t of inRange) {
      const k = Math.floor((t - fromMs) / SLOT_MS);
      if (k < slots) perSlot[k]!++;
    }
    for (let k = 0; k < slots; k++) {
      const mu = this.seasonalAt(fromMs + (k + 0.5) * SLOT_MS) * (SLOT_MS / 1000);
      sq += (perSlot[k]! - mu) ** 2;
      mean += mu;
    }
    if (mean > 0 && slots >= 12) this.dispersion = Math.max(1, sq / mean);
    this.learnBatchDispersion(inRange, fromMs, toMs);
  }

  /**
   * batchDispersion from history: batch starts counted in back-to-back windows of each length
   * against the seasonal forecast of batches there. Merge trains (a run of pipelines a few
   * seconds apart) are what a Poisson count of pipelines misses at the scale of a resume or boot.
   */
  private learnBatchDispersion(sorted: number[], fromMs: number, toMs: number): void {
    const starts = pipelinesOf(sorted).map((p) => p.t);
    const meanB = sorted.length / Math.max(1, starts.length);
    this.batchDispersion = DISPERSION_WINDOWS_S.map((w) => {
      const wMs = w * 1000;
      const windows = Math.floor((toMs - fromMs) / wMs);
      if (windows < 100 || starts.length < 100) return 1;
      let i = 0;
      let sq = 0;
      let mu = 0;
      for (let k = 0; k < windows; k++) {
        const end = fromMs + (k + 1) * wMs;
        let n = 0;
        while (i < starts.length && starts[i]! < end) {
          i++;
          n++;
        }
        const m = (this.seasonalAt(end - wMs / 2) * w) / meanB;
        sq += (n - m) ** 2;
        mu += m;
      }
      return mu > 0 ? Math.max(1, sq / mu) : 1;
    });
  }

  /** batchDispersion at a window of `seconds` (log-linear between the learnt lengths). */
  batchDispersionAt(seconds: number): number {
    const W = DISPERSION_WINDOWS_S;
    const d = this.batchDispersion;
    if (seconds <= W[0]!) return d[0]!;
    for (let i = 1; i < W.length; i++) {
      if (seconds <= W[i]!) {
        const f = Math.log(seconds / W[i - 1]!) / Math.log(W[i]! / W[i - 1]!);
        return d[i - 1]! + f * (d[i]! - d[i - 1]!);
      }
    }
    return d[d.length - 1]!;
  }

  /**
   * The season's rate at `t` (jobs/s): the weekly profile, smoothed over +-10 minutes (one week's
   * 5-minute slots are noisy: a few pipelines each).
   */
  private seasonalAt(t: number): number {
    let sum = 0;
    for (let i = -SMOOTH_SLOTS; i <= SMOOTH_SLOTS; i++) sum += this.weekly[DemandModel.slotOf(t + i * SLOT_MS)]!;
    return sum / (2 * SMOOTH_SLOTS + 1) / (SLOT_MS / 1000);
  }

  /**
   * The late share to plan for at `rate` jobs/s: the largest p with p + HOUR_Z sqrt(p c / N) <=
   * bound (N jobs an hour; c the dispersion; before history, the batch sizes' E[B^2]/E[B]). An
   * hour of fewer than HOUR_MIN_JOBS is not judged alone but in the day: its N is a day's jobs at
   * the class's mean rate (at least HOUR_MIN_JOBS). A class with a few jobs an hour planned every
   * hour as if judged held ~3 VMs all day for 0.2% late (46-300x its boots).
   */
  plannedShare(rate: number): number {
    const c = this.dispersion ?? this.batches.clumping();
    const hour = rate * 3600;
    const n = hour >= HOUR_MIN_JOBS ? hour : Math.max(HOUR_MIN_JOBS, this.meanRate * 86_400);
    const a = HOUR_Z * Math.sqrt(c / n);
    const x = (-a + Math.sqrt(a * a + 4 * this.o.bound)) / 2;
    return x * x;
  }

  observeArrival(t: number): void {
    this.recent.push(t);
    this.batches.observe(t);
  }

  /** A VM booted in `seconds` (in `zone`, where the provider has zones). */
  observeBoot(seconds: number, zone?: string | null, atMs?: number): void {
    this.bootTime.observe(seconds, zone, atMs);
  }

  observeResume(seconds: number, zone?: string | null, atMs?: number): void {
    this.resumeTime.observe(seconds, zone, atMs);
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
    // One week's 5-minute slots are noisy (a few pipelines each): the smoothed profile, so the
    // max over the lead window does not chase that noise. Looking as far ahead again as the
    // smoothing reaches: a sharp rise is not flattened late.
    for (let t = now; t <= now + leadMs + (1 + SMOOTH_SLOTS) * SLOT_MS; t += SLOT_MS) seasonal = Math.max(seasonal, this.seasonalAt(t));
    // The last 10 minutes, not the last one: a one-minute rate chases single pipelines (their
    // fan-out is in BatchSizes) and made the pool create and retire ~0.8 VMs per job in the sim.
    const n = this.recent.length - this.recentHead;
    // A quiet slot of one week's history is no promise of none: a class that had jobs keeps a
    // floor of its mean rate (a few jobs an hour still find a VM at 3 a.m.).
    return Math.max(seasonal, n / (RECENT_MS / 1000), RATE_FLOOR * this.meanRate);
  }

  /**
   * A merge train under way: when the last SURGE_S seconds brought more pipelines than the
   * forecast explains (at least SURGE_MIN, and SURGE_Z standard deviations above it, as scattered
   * as history's pipeline counts), their jobs' rate; else 0.
   */
  surge(now: number, forecast: number): number {
    this.trimRecent(now);
    let jobs = 0;
    let pipelines = 0;
    for (let i = this.recent.length - 1; i >= this.recentHead && this.recent[i]! > now - SURGE_S * 1000; i--) {
      jobs++;
      if (i === this.recentHead || this.recent[i]! - this.recent[i - 1]! > BATCH_GAP_MS) pipelines++;
    }
    const expected = (forecast * SURGE_S) / this.batches.mean();
    const sd = Math.sqrt(expected * this.batchDispersionAt(SURGE_S));
    return pipelines >= SURGE_MIN && pipelines > expected + SURGE_Z * sd ? jobs / SURGE_S : 0;
  }

  /**
   * VMs to hold, replaced one for one in `lead`, so that at most `part` of the planned late share
   * of jobs waits past the target. Job-weighted, as the promise is: a pipeline of b jobs arriving
   * to s free VMs makes b - s of its jobs wait, so the batch-size distribution (not only its mean)
   * and the count of VMs still on their way past the target (outstanding()) decide it.
   */
  private cover(now: number, lead: ZonedTime, part: number): number {
    const planned = this.rate(now, lead.p95 * 1000);
    if (!(planned > 0)) return 0; // no demand seen: nothing to hold
    // A merge train under way brings more pipelines: the stock follows its rate while it lasts
    // (the share is still planned at the forecast: a train makes the hour no busier).
    const rate = lead.median <= SURGE_LEAD_S ? Math.max(planned, this.surge(now, planned)) : planned;
    if (this.batches.version !== this.coversVersion) {
      this.covers.clear();
      this.leftOver.clear();
      this.coversVersion = this.batches.version;
    }
    // Answers are cached by their inputs rounded to the safe side (the rate and the lead's median
    // and spread up: 4%, 2%, 0.02): the answer barely moves within one, and the pool decides
    // every 500 ms while the rate moves with each job and the lead with each boot.
    const sigma = Math.log(Math.max(lead.p95, lead.median * 1.01) / lead.median) / 1.645;
    const rB = Math.ceil(Math.log(rate) * 25);
    const pB = Math.ceil(Math.log(planned) * 25);
    const medB = Math.ceil(Math.log(lead.median) * 50);
    const sigB = Math.ceil(sigma * 50);
    const key = `${part}:${rB}:${pB}:${medB}:${sigB}`;
    let k = this.covers.get(key);
    if (k === undefined) {
      // The share is planned at the rate rounded down (a lower rate plans a lower share).
      k = this.coverOf(Math.exp(rB / 25), Math.exp((pB - 1) / 25), Math.exp(medB / 50), sigB / 50, part);
      if (this.covers.size > 4096) this.covers.clear();
      this.covers.set(key, k);
    }
    return k;
  }

  /** cover() for a rate (jobs/s) and a log-normal lead (median s, sigma). */
  private coverOf(rate: number, shareRate: number, median: number, sigma: number, part: number): number {
    const meanB = this.batches.mean();
    const pmf = this.batches.pmf();
    const share = part * this.plannedShare(shareRate);
    // A replacement is ordered up to a decision after its job came, and a job starts in time on a
    // VM up within the target: what counts of a lead is its excess over target - DECIDE_S.
    const slack = this.o.targetMs / 1000 - DECIDE_S;
    // The chance that one replacement is up within the target. A pipeline larger than the stock
    // orders one per job at once, and its waiting jobs take the first of them to come up: with a
    // lead near the target (a Linux resume) most of its overflow still starts in time.
    const inTime = slack > 0 ? normalCdf(Math.log(slack / median) / Math.max(sigma, 1e-6)) : 0;
    const leadKey = `${median}:${sigma}`;
    let lead = this.leftOver.get(leadKey);
    if (lead === undefined) {
      lead = { demand: outstanding(pmf, median, sigma, slack), overflow: overflow(pmf, inTime) };
      if (this.leftOver.size > 1024) this.leftOver.clear();
      this.leftOver.set(leadKey, lead);
    }
    const demand = lead.demand;
    if (!demand) return baseStock([0], pmf, meanB, share, { inTime, overflow: lead.overflow });
    // A job that finds no free VM is late unless one of those on their way is up within the
    // target: the VMs not up by then are the replacements ordered before it whose lead outlasts
    // its arrival by more than the slack. Leads are independent, so replacements overtake one
    // another (a late-ordered quick boot is up before an early slow one): with pipelines as a
    // Poisson stream that count is compound Poisson (an M/G/infinity queue of pipelines, each
    // leaving the VMs of its b not yet up), not the demand of one lead's excess with every lead
    // alike. Pipelines come in merge trains, more scattered than Poisson as history showed.
    const batchesPerS = rate / meanB;
    const m = batchesPerS * demand.spanS * (1 - demand.none);
    // Scattered as the batch counts of a window as long as the mean excess (a recent train's
    // pipelines all still wait: not thinned one by one, as independent thinning would have it).
    const v = this.batchDispersionAt(Math.max(5, demand.meanExcessS));
    return baseStock([m], pmf, meanB, share, { dispersion: [v], inTime, demand: demand.pmf, overflow: lead.overflow });
  }

  /**
   * How long a surplus warm VM is kept before it goes: at least the configured idle time, and at
   * least a boot (the rent-or-buy rule: deleting a VM that is needed again within a boot costs more
   * than keeping it; the cost of waiting that long is at most twice the best choice in hindsight).
   * With a standby tier the surplus is stopped, not deleted, and the configured time applies.
   */
  idleTimeMs(configuredMs: number): number {
    if (this.o.standbyCapable) return configuredMs;
    return Math.max(configuredMs, this.bootTime.median * 1000);
  }

  /** The hot targets of the keep window (time, hot; hot descending), for keepHot. */
  private readonly lastTargets: { t: number; hot: number }[] = [];

  /**
   * The most hot VMs wanted in the last few minutes (5, or 3 slow boots): a surplus VM below it
   * is kept, as the target that wanted it then (the forecast moves with pipelines) is likely to
   * want it again before a new one could boot. Without it the pool deleted and re-made VMs
   * across short lulls: without standby, 21-30% of the VMs it made never ran a job (0-2% with it,
   * bench/policy-corpus.ts).
   */
  private keepHot(now: number, hot: number): number {
    const w = this.lastTargets;
    while (w.length && w[w.length - 1]!.hot <= hot) w.pop();
    w.push({ t: now, hot });
    const window = Math.max(KEEP_WINDOW_MS, KEEP_BOOTS * this.bootTime.p95 * 1000);
    while (w.length && w[0]!.t < now - window) w.shift();
    return w[0]!.hot;
  }

  targets(now: number, counts: ClassCounts): TierTargets {
    // Hot + standby cover the arrivals while a cold VM boots; with stop/start, hot covers those
    // while a standby VM resumes (standby then refills hot in time).
    // With a standby tier, hot + standby is planned deeper (standby costs a tenth of hot): a job
    // that misses hot then finds a VM to resume rather than waiting a boot.
    const coverBoot = this.cover(now, this.bootTime, this.o.standbyCapable ? STANDBY_PART : BOOT_PART);
    let hot = coverBoot;
    let standby = 0;
    if (this.o.standbyCapable) {
      hot = Math.min(coverBoot, this.cover(now, this.resumeTime, RESUME_PART));
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
    const keep = this.keepHot(now, hot);
    return { hot, standby, keepHot: Math.min(keep, this.o.idleBudget ?? keep) };
  }
}

/** Jobs arriving within this of a pipeline's first job are that pipeline's (created together). */
export const BATCH_GAP_MS = 250;

/** Sorted arrival times grouped into pipelines: each its first arrival and its job count. `gap` in the arrivals' unit. */
export function pipelinesOf(sorted: number[], gap = BATCH_GAP_MS): { t: number; b: number }[] {
  const out: { t: number; b: number }[] = [];
  for (const t of sorted) {
    const last = out[out.length - 1];
    if (last && t - last.t <= gap) last.b++;
    else out.push({ t, b: 1 });
  }
  return out;
}

/**
 * Batch sizes (jobs arriving within 250 ms of a batch's first: one pipeline's fan-out) as a
 * distribution, from history and observed arrivals; weights halve as they pile up, so it follows
 * a changing mix. Sizes above MAX_BATCH count as MAX_BATCH.
 */
export class BatchSizes {
  static readonly MAX_BATCH = 200;
  private readonly w = new Float64Array(BatchSizes.MAX_BATCH + 1);
  private total = 0;
  private open: { start: number; n: number } | null = null;
  /** Changes when the distribution moves enough to matter (see add). */
  version = 0;
  private sinceVersion = 0;

  learn(sortedArrivals: number[]): void {
    for (const p of pipelinesOf(sortedArrivals)) this.add(p.b);
    this.version++;
  }

  observe(t: number): void {
    if (this.open && t - this.open.start <= BATCH_GAP_MS) {
      this.open.n++;
      return;
    }
    if (this.open) this.add(this.open.n);
    this.open = { start: t, n: 1 };
  }

  private add(n: number): void {
    this.w[Math.min(n, BatchSizes.MAX_BATCH)]! += 1;
    this.total++;
    if (this.total > 20_000) {
      for (let i = 0; i < this.w.length; i++) this.w[i]! /= 2;
      this.total /= 2;
    }
    // A new version when the batches since the last are 2% of those weighed (at least 64): the
    // distribution has then moved enough to matter, and each version recomputes every base stock.
    if (++this.sinceVersion >= Math.max(64, this.total / 50)) {
      this.sinceVersion = 0;
      this.version++;
    }
  }

  /** P(batch = b) for b = 0..MAX_BATCH (b = 0 has none); single jobs until something is seen. */
  pmf(): Float64Array {
    const out = new Float64Array(BatchSizes.MAX_BATCH + 1);
    if (this.total <= 0) {
      out[1] = 1;
      return out;
    }
    for (let i = 1; i < out.length; i++) out[i] = this.w[i]! / this.total;
    return out;
  }

  /** E[B^2] / E[B]: how many jobs the average job arrives with (itself included). */
  clumping(): number {
    if (this.total <= 0) return 1;
    let m1 = 0;
    let m2 = 0;
    for (let i = 1; i < this.w.length; i++) {
      m1 += i * this.w[i]!;
      m2 += i * i * this.w[i]!;
    }
    return m1 > 0 ? m2 / m1 : 1;
  }

  mean(): number {
    if (this.total <= 0) return 1;
    let m = 0;
    for (let i = 1; i < this.w.length; i++) m += i * this.w[i]!;
    return Math.max(1, m / this.total);
  }
}

/**
 * Base stock for compound-Poisson demand: the fewest VMs k such that, with `ms` batches expected
 * (one entry per scenario, equally likely) of the VMs a batch takes from the stock distributed as
 * `o.demand` (default `pmf`), the share of jobs that find no free VM is at most `share`. A job
 * batch of size b (distributed as `pmf`, mean `meanB`) arriving when that demand D left
 * s = max(0, k - D) VMs makes (b - s)+ of its jobs wait, so
 * late(k) = P(D >= k) + E[ sum over d < k of g(d) h(k - d) ] / E[B], h(s) = E[(B - s)+];
 * D's distribution g by Panjer's recursion. Large demand uses a normal approximation.
 */
export function baseStock(all: number[], pmf: Float64Array, meanB: number, share: number, o: { dispersion?: number[]; inTime?: number; demand?: Float64Array; overflow?: Float64Array } = {}): number {
  const inTime = o.inTime ?? 0;
  const dispersion = o.dispersion;
  const dPmf = o.demand ?? pmf;
  // A negative entry is a scenario with no demand before: only a pipeline's own overflow (when
  // inTime > 0: some of its replacements come up too late).
  const overflowOnly = all.filter((m) => m < 0).length;
  const vs = dispersion ? all.map((_, i) => Math.max(1, dispersion[i] ?? 1)).filter((_, i) => all[i]! >= 0) : all.filter((m) => m >= 0).map(() => 1);
  const ms = all.filter((m) => m >= 0);
  if (inTime > 0) for (let i = 0; i < overflowOnly; i++) {
    ms.push(0);
    vs.push(1);
  }
  if (!ms.length) return 0;
  share = share * (all.length / ms.length);
  if (share >= 1) return 0;
  const maxB = pmf.length - 1;
  const maxD = dPmf.length - 1;
  // h(s): the jobs of a pipeline arriving to s free VMs that start late. It orders one VM per job
  // at once and its b - s waiting jobs take the first to come up; X of the b are up within the
  // target (binomial, inTime each), so h(s) = E[(B - s - X)+] (E[(B - s)+] when inTime is 0).
  const h = o.overflow ?? overflow(pmf, inTime);
  const live = ms.filter((m) => m > 0);
  if (!live.length) {
    // No demand in the lead time: only a pipeline's own jobs beyond the stock wait.
    let k = 0;
    while (k <= maxB && h[k]! / meanB > share) k++;
    return k;
  }
  let meanDB = 0;
  for (let b = 1; b <= maxD; b++) meanDB += b * dPmf[b]!;
  let eB2 = 0;
  for (let b = 1; b <= maxD; b++) eB2 += b * b * dPmf[b]!;
  // The widest entry (most batches, most scattered) bounds the demand's support.
  let meanD = 0;
  let sdD = 0;
  ms.forEach((m, i) => {
    if (m <= 0) return;
    meanD = Math.max(meanD, m * meanDB);
    // Var of a compound count: E[N] Var(B) + Var(N) E[B]^2, Var(N) = v E[N].
    sdD = Math.max(sdD, Math.sqrt(m * (eB2 + (vs[i]! - 1) * meanDB * meanDB)));
  });
  const zeroLog = Math.max(...ms.map((m, i) => (vs[i]! > 1 ? (m / (vs[i]! - 1)) * Math.log(vs[i]!) : m)));
  if (meanD > 3000 || zeroLog > 700) return Math.ceil(meanD + probit(1 - share) * sdD + meanB);
  const n = Math.ceil(meanD + 7 * sdD + Math.max(maxB, maxD));
  // g(d) = P(D = d), averaged over the scenarios (m batches each); per m by Panjer's
  // recursion: Poisson (v = 1): g(0) = e^-m, g(d) = (m / d) sum_j j f(j) g(d - j); negative
  // binomial of mean m and variance v m (beta = v - 1, r = m / beta): g(0) = (1 + beta)^-r,
  // g(d) = sum_j (a + b j / d) f(j) g(d - j), a = beta / (1 + beta), b = (r - 1) a.
  const g = new Float64Array(n + 1);
  const one = new Float64Array(n + 1);
  // Only the sizes that occur (a few dozen of MAX_BATCH): Panjer's inner sum runs over them.
  const sizes: number[] = [];
  for (let j = 1; j <= maxD; j++) if (dPmf[j]! > 1e-9) sizes.push(j);
  const weights = sizes.map((j) => j * dPmf[j]!);
  const probs = sizes.map((j) => dPmf[j]!);
  ms.forEach((m, q) => {
    const v = vs[q]!;
    one.fill(0);
    if (m <= 0) one[0] = 1;
    else if (v <= 1 + 1e-9) {
      one[0] = Math.exp(-m);
      for (let d = 1; d <= n; d++) {
        let acc = 0;
        for (let i = 0; i < sizes.length && sizes[i]! <= d; i++) acc += weights[i]! * one[d - sizes[i]!]!;
        one[d] = (m / d) * acc;
      }
    } else {
      const beta = v - 1;
      const r = m / beta;
      const a = beta / (1 + beta);
      const b = (r - 1) * a;
      one[0] = Math.exp(-r * Math.log(1 + beta));
      for (let d = 1; d <= n; d++) {
        let pa = 0;
        let pb = 0;
        for (let i = 0; i < sizes.length && sizes[i]! <= d; i++) {
          const gd = one[d - sizes[i]!]!;
          pa += probs[i]! * gd;
          pb += weights[i]! * gd;
        }
        one[d] = a * pa + (b / d) * pb;
      }
    }
    for (let d = 0; d <= n; d++) g[d]! += one[d]! / ms.length;
  });
  // below[k] = P(D < k).
  const below = new Float64Array(n + 2);
  for (let k = 0; k <= n; k++) below[k + 1] = below[k]! + g[k]!;
  // Jobs late with k VMs: all of a batch when D >= k, else the part of it above the k - D left.
  // It only falls as k grows: the fewest k within the share by bisection.
  const late = (k: number) => {
    let partial = 0;
    for (let d = Math.max(0, k - maxB); d < k; d++) partial += g[d]! * h[k - d]!;
    return 1 - below[k]! + partial / meanB;
  };
  if (late(n) > share) return n;
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (late(mid) <= share) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** E[(B - s - X)+] for s = 0..maxB + 1, X ~ Binomial(B, inTime), B distributed as `pmf` (baseStock's h). */
export function overflow(pmf: Float64Array, inTime: number): Float64Array {
  const maxB = pmf.length - 1;
  const h = new Float64Array(maxB + 2);
  if (inTime <= 0) {
    // From the tail sums of P(B = b) and b P(B = b).
    let t0 = 0;
    let t1 = 0;
    for (let s0 = maxB; s0 >= 0; s0--) {
      h[s0] = t1 - s0 * t0;
      t0 += pmf[s0]!;
      t1 += s0 * pmf[s0]!;
    }
    return h;
  }
  // Per batch size: Y = b - X ~ Binomial(b, 1 - inTime) late-if-waiting; E[(Y - s)+] by tail sums.
  const q = 1 - inTime;
  const y = new Float64Array(maxB + 1);
  for (let b = 1; b <= maxB; b++) {
    const pb = pmf[b]!;
    if (pb <= 1e-12) continue;
    // Binomial(b, q) pmf by the ratio recursion from y = 0, in logs (inTime^b underflows).
    let ly = b * Math.log(inTime);
    y[0] = Math.exp(ly);
    for (let k = 1; k <= b; k++) y[k] = Math.exp((ly += Math.log(((b - k + 1) * q) / (k * inTime))));
    let t0 = 0;
    let t1 = 0;
    for (let s0 = b; s0 >= 0; s0--) {
      h[s0]! += pb * (t1 - s0 * t0);
      t0 += y[s0]!;
      t1 += s0 * y[s0]!;
    }
  }
  return h;
}

/**
 * The VMs of a pipeline's replacements not yet up `slack` seconds after a later arrival: a pipeline
 * of b (pmf) that came a seconds before leaves Binomial(b, p(a)) of them, p(a) = P(lead > slack +
 * a) for a log-normal lead (median, sigma). Over ages a in [0, spanS) (spanS: where p is ~0),
 * `none` is the share of (pipeline, age) pairs that leave none and `pmf` the distribution of what
 * the others leave; null when no lead outlasts the slack.
 */
export function outstanding(pmf: Float64Array, median: number, sigma: number, slack: number): { spanS: number; none: number; pmf: Float64Array; meanExcessS: number } | null {
  const spanS = median * Math.exp(3.72 * sigma) - Math.max(0, slack); // to the 99.99th percentile
  if (!(spanS > 0)) return null;
  const BINS = 16;
  const maxB = pmf.length - 1;
  const out = new Float64Array(maxB + 1);
  const sizes: number[] = [];
  for (let b = 1; b <= maxB; b++) if (pmf[b]! > 1e-9) sizes.push(b);
  const lf = logFactorials(maxB);
  for (let i = 0; i < BINS; i++) {
    const a = ((i + 0.5) / BINS) * spanS;
    const x = Math.max(0, slack) + a;
    const p = sigma > 1e-6 ? 1 - normalCdf(Math.log(x / median) / sigma) : x < median ? 1 : 0;
    const lp = Math.log(p);
    const lq = Math.log(1 - p);
    for (const b of sizes) {
      const w = pmf[b]! / BINS;
      if (p <= 1e-12) {
        out[0]! += w;
        continue;
      }
      if (p >= 1 - 1e-12) {
        out[b]! += w;
        continue;
      }
      // Binomial(b, p), in logs ((1 - p)^b underflows), over its mean +- 7 sd (the rest < 1e-11).
      const sd = Math.sqrt(b * p * (1 - p));
      const lo = Math.max(0, Math.floor(b * p - 7 * sd - 1));
      const hi = Math.min(b, Math.ceil(b * p + 7 * sd + 1));
      for (let k = lo; k <= hi; k++) out[k]! += w * Math.exp(lf[b]! - lf[k]! - lf[b - k]! + k * lp + (b - k) * lq);
    }
  }
  const none = out[0]!;
  if (none >= 1 - 1e-12) return null;
  const rest = new Float64Array(maxB + 1);
  let left = 0;
  let meanB = 0;
  for (let k = 1; k <= maxB; k++) {
    rest[k] = out[k]! / (1 - none);
    left += k * out[k]!;
    meanB += k * pmf[k]!;
  }
  // E[(lead - slack)+]: the VMs left per job ordered, over the span.
  return { spanS, none, pmf: rest, meanExcessS: (spanS * left) / Math.max(meanB, 1e-9) };
}

const logFactorialTable: number[] = [0];
/** ln(k!) for k = 0..n. */
function logFactorials(n: number): number[] {
  for (let k = logFactorialTable.length; k <= n; k++) logFactorialTable.push(logFactorialTable[k - 1]! + Math.log(k));
  return logFactorialTable;
}

/** Window lengths (s) batchDispersion is learnt at: a resume's or boot's excess over the target falls within. */
const DISPERSION_WINDOWS_S = [5, 10, 20, 40, 80, 160, 320];

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

