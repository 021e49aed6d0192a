// Placement choice with cool-down after a stockout (pure; the clock value is passed in). A
// "zone" is whatever a provider places VMs in: a GCE zone, an EC2 subnet or availability zone.

/** Zone -> time (ms) until which it is avoided. */
export type ZoneCooldowns = ReadonlyMap<string, number>;

/** The usable zones, in preference order, skipping those still cooling down. */
export function usableZones(zones: readonly string[], cooldowns: ZoneCooldowns, now: number): string[] {
  return zones.filter((z) => (cooldowns.get(z) ?? 0) <= now);
}

/** The first usable zone in preference order, or undefined when every zone is cooling down. */
export function pickZone(zones: readonly string[], cooldowns: ZoneCooldowns, now: number): string | undefined {
  return usableZones(zones, cooldowns, now)[0];
}

/** A new cool-down map with `zone` avoided for `ms` from `now` (expired entries dropped). */
export function coolDown(cooldowns: ZoneCooldowns, zone: string, now: number, ms: number): Map<string, number> {
  const next = new Map<string, number>();
  for (const [z, until] of cooldowns) if (until > now) next.set(z, until);
  next.set(zone, Math.max(next.get(zone) ?? 0, now + ms));
  return next;
}

/** When the earliest cooling zone of the list becomes usable again. */
export function nextUsableAt(zones: readonly string[], cooldowns: ZoneCooldowns): number {
  return Math.min(...zones.map((z) => cooldowns.get(z) ?? 0));
}
