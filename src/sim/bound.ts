// A floor under the overhead any pool policy pays to keep a class's promise on a trace, to judge
// the predictive policy against what is possible rather than against the oracle (one median boot
// per job, which no policy that cannot see jobs coming reaches). Pure: fed the class's arrivals.
//
// A job starts within the target only on a VM that is available: hot and idle, or already on its
// way and up within the target. A pipeline of b jobs arriving to A available VMs makes (b - A)+ of
// them wait; without a standby tier they wait a boot (late), with one a resume (late with
// q = P(resume > target)). A policy that cannot foresee the next pipeline (pipelines arrive as a
// Poisson stream, as the traces' base process does) faces each one with the same A in expectation
// (arrivals see time averages), and by convexity a constant A within a time slot is the cheapest
// way to a given expected late count there. Two requirements, the larger availability of the two
// taken in each hour:
//   - expected: in each hour with enough jobs, and over the day, the expected late share within
//     the bound; A raised slot by slot where it removes the most late jobs (greedy is optimal for a
//     separable convex cost under these nested constraints);
//   - every hour: the promise is judged on the day's realised hours, all of them, and a few
//     pipelines beyond the stock are a quiet hour's whole allowance. For the day to pass at even
//     odds (hours independent) each judged hour must pass with 0.5^(1/hours), so its A (held
//     through the hour) is the least with P(late jobs > bound x jobs) within that, late jobs the
//     sum of the hour's pipelines' overflows (exact, by convolution). This is the part that makes
//     a quiet hour expensive: with fan-outs of ~10 it asks ~50 VMs at 3 a.m. for 300 jobs an hour.
//
// Where it is generous to the policy (so the floor stays below what such a policy pays):
//   - it knows the arrival rate (the realised pipelines averaged over the hour around each 5-minute
//     slot), each hour's pipeline count, and the day's fan-out distribution;
//   - a VM taken is back at once (no depletion between pipelines, no flow through a boot: at
//     peak, where the demand over a boot scatters, real stocks are well above it);
//   - every job's own boot or resume lends `target` seconds of availability for free;
//   - a standby tier is free and never empty, and a resume costs nothing; a VM made that runs no
//     job costs nothing.
// Where it is not: merge trains are clustered, not Poisson, and a policy reacting to a train's
// first pipeline could place availability where the train's next ones land; the floor counts a
// train's pipelines as unforeseen (about a fifth of the corpus's pipelines are in trains).
// The overhead is E[boot] per job (each job's VM boots once) plus the availability beyond the
// free part, in hot-idle VM-seconds.
import { normalCdf } from '../manager/boot-time.js';
import { BATCH_GAP_MS, pipelinesOf } from '../manager/predictive.js';

export interface Spread {
  medianS: number;
  p95S: number;
}

export interface FloorInput {
  /** Arrival times (s) of the class's measured jobs, any order. */
  arrivalsS: number[];
  /** Hours and slots count from here (the measured start). */
  fromS: number;
  targetS: number;
  bound: number;
  /** An hour is judged alone with at least this many jobs (as the simulator's hourMinJobs). */
  hourMinJobs?: number;
  /** The class's boot times (log-normal through median and p95). */
  boot: Spread;
  /** Resume from standby; null without a standby tier. */
  resume: Spread | null;
  /** Boots take this factor longer at second t (a slower zone). */
  bootScale?: (tS: number) => number;
  /** Slot length (s), default 300. */
  slotS?: number;
  /** Only the expected late share (not every realised hour): default false. */
  expectedOnly?: boolean;
}

export interface Floor {
  /** Least availability (idle hot VMs and VMs up within the target), VM-seconds. */
  availabilityVmSeconds: number;
  /** The same per hour from the start (where the floor holds its VMs). */
  availabilityByHour: number[];
  /** E[boot] per job plus the availability beyond what the jobs' own boots lend. */
  overheadVmSeconds: number;
  /** One median boot per job (the simulator's oracle). */
  oracleVmSeconds: number;
  overheadVsOracle: number;
  /** Share of the jobs beyond the available VMs that start late (1 without standby). */
  lateIfMissed: number;
}

const sigmaOf = (d: Spread) => Math.log(Math.max(d.p95S, d.medianS * 1.0001) / d.medianS) / 1.645;

export function overheadFloor(o: FloorInput): Floor {
  const slotS = o.slotS ?? 300;
  const arrivals = [...o.arrivalsS].sort((a, b) => a - b);
  const sb = sigmaOf(o.boot);
  const scale = o.bootScale ?? (() => 1);
  const oracle = arrivals.length * o.boot.medianS;
  const boots = arrivals.reduce((s, t) => s + o.boot.medianS * scale(t) * Math.exp((sb * sb) / 2), 0);
  const q = o.resume ? 1 - normalCdf(Math.log(o.targetS / o.resume.medianS) / sigmaOf(o.resume)) : 1;
  if (!arrivals.length) return { availabilityVmSeconds: 0, availabilityByHour: [], overheadVmSeconds: 0, oracleVmSeconds: 0, overheadVsOracle: 0, lateIfMissed: q };

  // Pipelines as the policy counts them (BatchSizes), and their sizes' distribution.
  const pipelines = pipelinesOf(arrivals, BATCH_GAP_MS / 1000);
  const maxB = pipelines.reduce((m, p) => Math.max(m, p.b), 0);
  const pmf = new Float64Array(maxB + 1);
  for (const p of pipelines) pmf[p.b]! += 1 / pipelines.length;
  // tail[s] = P(B > s); over[s] = E[(B - s)+] = sum over j >= s of tail[j].
  const tail = new Float64Array(maxB + 2);
  const over = new Float64Array(maxB + 2);
  for (let s = maxB; s >= 0; s--) {
    tail[s] = tail[s + 1]! + (pmf[s + 1] ?? 0);
    over[s] = over[s + 1]! + tail[s]!;
  }

  const slots = Math.max(1, Math.ceil((arrivals[arrivals.length - 1]! - o.fromS + 1e-9) / slotS));
  const seen = new Float64Array(slots);
  for (const p of pipelines) seen[Math.min(slots - 1, Math.max(0, Math.floor((p.t - o.fromS) / slotS)))]!++;
  // The policy is credited with the arrival rate, not the arrivals: each slot's pipelines are the
  // realised ones averaged over the hour around it (a slot's own count would tell a sparse class
  // when its few pipelines come, and hold a VM only then).
  const count = new Float64Array(slots);
  const reach = Math.round(1800 / slotS);
  for (let k = 0; k < slots; k++) {
    let sum = 0;
    let n = 0;
    for (let j = Math.max(0, k - reach); j <= Math.min(slots - 1, k + reach); j++) {
      sum += seen[j]!;
      n++;
    }
    count[k] = sum / n;
  }
  const hourOf = (t: number) => Math.floor((t - o.fromS) / 3600);
  const jobsByHour = new Map<number, number>();
  for (const t of arrivals) jobsByHour.set(hourOf(t), (jobsByHour.get(hourOf(t)) ?? 0) + 1);
  const pipelinesByHour = new Map<number, number>();
  for (const p of pipelines) pipelinesByHour.set(hourOf(p.t), (pipelinesByHour.get(hourOf(p.t)) ?? 0) + 1);

  // Availability per slot (fractional: the late count is linear between whole VMs).
  const avail = new Float64Array(slots);
  const at = (x: number) => Math.min(Math.floor(x), maxB + 1);
  const lateIn = (k: number) => {
    const s = at(avail[k]!);
    return q * count[k]! * (over[s]! - (avail[k]! - s) * tail[s]!);
  };
  const gain = (k: number) => q * count[k]! * tail[at(avail[k]!)]!;
  /** Raise availability in `ks`, best gain first, until their expected late jobs are at most `allowed`. */
  const fill = (ks: number[], allowed: number) => {
    let late = ks.reduce((s, k) => s + lateIn(k), 0);
    while (late > allowed + 1e-9) {
      let best = -1;
      let g = 0;
      for (const k of ks) {
        const x = gain(k);
        if (x > g) {
          g = x;
          best = k;
        }
      }
      if (best < 0) break;
      const step = Math.min(1 - (avail[best]! - Math.floor(avail[best]!)), (late - allowed) / g);
      avail[best]! += step;
      late -= g * step;
    }
  };
  const perHour = Math.round(3600 / slotS);
  for (const [h, n] of jobsByHour) {
    if (n < (o.hourMinJobs ?? 20)) continue;
    const ks: number[] = [];
    for (let i = 0; i < perHour; i++) if (h * perHour + i < slots) ks.push(h * perHour + i);
    fill(ks, o.bound * n);
  }
  fill(Array.from({ length: slots }, (_, k) => k), o.bound * arrivals.length);

  const byHour = Array.from({ length: Math.ceil(slots / perHour) }, (_, h) => avail.slice(h * perHour, (h + 1) * perHour).reduce((s, x) => s + x, 0) * slotS);
  if (!o.expectedOnly) {
    const judged = [...jobsByHour].filter(([, n]) => n >= (o.hourMinJobs ?? 20));
    const pass = 0.5 ** (1 / Math.max(1, judged.length));
    for (const [h, n] of judged) {
      const k = pipelinesByHour.get(h) ?? 0;
      const allowed = Math.floor(o.bound * n);
      // The least s (whole VMs) with P(sum of k overflows <= allowed) >= pass: it only rises with fewer VMs.
      let lo = 0;
      let hi = maxB;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (passChance(pmf, mid, q, k, allowed) >= pass) hi = mid;
        else lo = mid + 1;
      }
      if (h < byHour.length) byHour[h] = Math.max(byHour[h]!, lo * Math.min(3600, slots * slotS - h * 3600));
    }
  }
  const availability = byHour.reduce((s, x) => s + x, 0);
  const overhead = boots + Math.max(0, availability - o.targetS * arrivals.length);
  return { availabilityVmSeconds: availability, availabilityByHour: byHour, overheadVmSeconds: overhead, oracleVmSeconds: oracle, overheadVsOracle: overhead / oracle, lateIfMissed: q };
}

/**
 * P(the late jobs of `k` pipelines arriving to `s` available VMs are at most `allowed`): each
 * pipeline's overflow (B - s)+ thinned by `q` (the share of it late), summed by convolution
 * (by squaring, truncated at `allowed`: only the sums within it matter).
 */
function passChance(pmf: Float64Array, s: number, q: number, k: number, allowed: number): number {
  const one = new Float64Array(allowed + 1);
  for (let b = 0; b < pmf.length; b++) {
    const p = pmf[b]!;
    if (!p) continue;
    const over = Math.max(0, b - s);
    if (!over || q >= 1) {
      if (over <= allowed) one[over]! += p;
      continue;
    }
    // Binomial(over, q), by the ratio recursion.
    let term = (1 - q) ** over;
    for (let y = 0; y <= Math.min(over, allowed); y++) {
      one[y]! += p * term;
      term *= ((over - y) / (y + 1)) * (q / (1 - q));
    }
  }
  const times = (a: Float64Array, b: Float64Array) => {
    const out = new Float64Array(allowed + 1);
    for (let i = 0; i <= allowed; i++) {
      if (!a[i]) continue;
      for (let j = 0; i + j <= allowed; j++) out[i + j]! += a[i]! * b[j]!;
    }
    return out;
  };
  let result = new Float64Array(allowed + 1);
  result[0] = 1;
  let base = one;
  for (let e = k; e > 0; e >>= 1) {
    if (e & 1) result = times(result, base);
    if (e > 1) base = times(base, base);
  }
  return result.reduce((a, x) => a + x, 0);
}
