// Whether a class may grow: frozen classes (draining) create nothing and retire their warm VMs;
// a class whose create the cloud refused for quota creates nothing for QUOTA_BACKOFF_MS, then
// tries again. Warm and running VMs stay either way.
import type { PoolDeps } from './deps.js';

/** After a quota refusal the class creates nothing for this long, then tries again. */
export const QUOTA_BACKOFF_MS = 5 * 60_000;

export class GrowthGate {
  private readonly frozen = new Set<string>();
  /** Classes whose growth the cloud refused (quota), until when (ms). */
  private readonly blockedUntil = new Map<string, number>();

  constructor(private readonly d: Pick<PoolDeps, 'clock' | 'log' | 'metrics'>) {}

  freeze(classNames: string[]): void {
    for (const c of classNames) this.frozen.add(c);
  }

  isFrozen(className: string): boolean {
    return this.frozen.has(className);
  }

  /** Quota exhausted: stop creating VMs of the class for a while. */
  block(className: string, why: string): void {
    const until = this.d.clock.now() + QUOTA_BACKOFF_MS;
    if ((this.blockedUntil.get(className) ?? 0) < this.d.clock.now()) {
      this.d.log.warn({ class: className, until: new Date(until).toISOString(), why }, 'cloud quota exhausted: not growing this class until the quota frees up');
    }
    this.blockedUntil.set(className, until);
    this.d.metrics.classGrowthBlocked.set({ class: className, reason: 'quota' }, 1);
  }

  /** Whether the class is blocked at `now`; a block that ran out is lifted (metric and log). */
  blocked(className: string, now: number): boolean {
    const until = this.blockedUntil.get(className);
    if (until === undefined) return false;
    if (now < until) return true;
    this.blockedUntil.delete(className);
    this.d.metrics.classGrowthBlocked.set({ class: className, reason: 'quota' }, 0);
    this.d.log.info({ class: className }, 'retrying growth of a class after a quota stop');
    return false;
  }
}
