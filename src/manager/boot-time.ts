// Learned boot and resume times of one class (pure). Each zone's times are their own log-normal
// (zones differ: a zone short of capacity or with a slow image cache boots late), and the time a
// class should plan for is the mixture of the zones its VMs are landing in now, weighted by the
// zones of its last boots. So when a stockout moves placements to a slower zone, sizing switches
// to that zone's learnt times within a few boots instead of dragging one class-wide average along.

/**
 * Observations weigh by the time since the last one (TIME_CONSTANT_MS), between MIN_ALPHA and the
 * estimate's alpha: a busy class sees a boot every second or two, and at a fixed weight per boot
 * its estimate (and the tiers sized by it) swung with every few slow boots; a drift in a cloud's
 * boots shows over minutes. A sparse class still weighs each boot at alpha.
 */
const TIME_CONSTANT_MS = 5 * 60_000;
const MIN_ALPHA = 0.01;

/** Log-normal estimate through EWMA of ln(x) and its square. */
export class LogNormal {
  private mean: number;
  private sq: number;
  private n = 0;
  private lastAt: number | undefined;
  constructor(medianS: number, p95S: number, private readonly alpha = 0.1) {
    const sigma = Math.max(0.01, Math.log(Math.max(p95S, medianS * 1.01) / medianS) / 1.645);
    this.mean = Math.log(medianS);
    this.sq = sigma * sigma + this.mean * this.mean;
  }
  /** One observation, made at `atMs` (epoch ms; without it, it weighs alpha). */
  observe(x: number, atMs?: number): void {
    const l = Math.log(Math.max(0.05, x));
    const since = atMs !== undefined && this.lastAt !== undefined ? Math.max(0, atMs - this.lastAt) : undefined;
    if (atMs !== undefined) this.lastAt = Math.max(atMs, this.lastAt ?? atMs);
    // Settle quickly, then follow drift.
    const a = this.n < 10 ? 1 / (this.n + 2) : since === undefined ? this.alpha : Math.min(this.alpha, Math.max(MIN_ALPHA, since / TIME_CONSTANT_MS));
    this.mean += a * (l - this.mean);
    this.sq += a * (l * l - this.sq);
    this.n++;
  }
  get observations(): number {
    return this.n;
  }
  get median(): number {
    return Math.exp(this.mean);
  }
  get sigma(): number {
    return Math.sqrt(Math.max(0, this.sq - this.mean * this.mean));
  }
  get p95(): number {
    return Math.exp(this.mean + 1.645 * this.sigma);
  }
  /** P(X > x). */
  exceeds(x: number): number {
    if (this.sigma < 1e-9) return this.median > x ? 1 : 0;
    return 1 - normalCdf((Math.log(x) - this.mean) / this.sigma);
  }
}

/** The boots that decide which zones a class is landing in now. */
const RECENT_PLACEMENTS = 20;
/** A zone's own estimate is trusted from this many boots on; before, the class-wide one stands in. */
const ZONE_MIN_OBSERVATIONS = 3;

/** Boot (or resume) time of a class: per zone, mixed by where its VMs land now. */
export class ZonedTime {
  /** All boots of the class, whatever their zone: the prior and the stand-in for new zones. */
  readonly overall: LogNormal;
  private readonly zones = new Map<string, LogNormal>();
  private readonly recent: string[] = [];

  constructor(medianS: number, p95S: number) {
    this.overall = new LogNormal(medianS, p95S);
  }

  observe(seconds: number, zone?: string | null, atMs?: number): void {
    this.overall.observe(seconds, atMs);
    if (!zone) return;
    let z = this.zones.get(zone);
    if (!z) this.zones.set(zone, (z = new LogNormal(this.overall.median, this.overall.p95)));
    z.observe(seconds, atMs);
    this.recent.push(zone);
    if (this.recent.length > RECENT_PLACEMENTS) this.recent.shift();
  }

  /** A zone's own estimate (undefined until it has booted a VM). */
  zone(name: string): LogNormal | undefined {
    return this.zones.get(name);
  }

  /** The mixture's components: (weight, estimate) by the zones of the recent boots. */
  private components(): { w: number; d: LogNormal }[] {
    if (this.recent.length === 0) return [{ w: 1, d: this.overall }];
    const counts = new Map<string, number>();
    for (const z of this.recent) counts.set(z, (counts.get(z) ?? 0) + 1);
    return [...counts].map(([z, n]) => {
      const own = this.zones.get(z)!;
      return { w: n / this.recent.length, d: own.observations >= ZONE_MIN_OBSERVATIONS ? own : this.overall };
    });
  }

  /** P(a boot takes longer than x seconds). */
  exceeds(x: number): number {
    return this.components().reduce((p, c) => p + c.w * c.d.exceeds(x), 0);
  }

  get p95(): number {
    return this.quantile(0.95, (d) => d.p95);
  }

  get median(): number {
    return this.quantile(0.5, (d) => d.median);
  }

  /** A quantile of the mixture, by bisection on its tail (a zone's own when there is one). */
  private quantile(q: number, of: (d: LogNormal) => number): number {
    const parts = this.components();
    if (parts.length === 1) return of(parts[0]!.d);
    // The mixture's quantile lies between its components' quantiles.
    let lo = Math.min(...parts.map((c) => of(c.d)));
    let hi = Math.max(...parts.map((c) => of(c.d)));
    for (let i = 0; i < 60 && hi - lo > 1e-4 * lo; i++) {
      const mid = (lo + hi) / 2;
      if (this.exceeds(mid) > 1 - q) lo = mid;
      else hi = mid;
    }
    return hi;
  }
}

/** Standard normal CDF (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7). */
export function normalCdf(z: number): number {
  const x = Math.abs(z) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * x);
  const erf = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x);
  return z >= 0 ? (1 + erf) / 2 : (1 - erf) / 2;
}
