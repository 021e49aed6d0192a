// A local class's boot delay, read when each sandbox is made. Apart from config.ts (zod) so that
// processes which only run sandboxes (the Tart double: one process per Tart command) load no
// schema library.

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `"500ms"`, `"2s"`, `"1.5m"`, `"1h"`, or a plain number of milliseconds. */
export function parseDurationMs(value: unknown, field: string): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new Error(`${field} must be a non-negative number of milliseconds, got ${value}`);
    return value;
  }
  if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(value);
    if (m) return Math.round(Number(m[1]) * UNITS[m[2] ?? 'ms']!);
  }
  throw new Error(`${field} must be a duration like "500ms", "2s" or "1m", got ${JSON.stringify(value)}`);
}

/** A class's `machine.bootDelayMs` (or `machine.bootDelay`) overrides the provider default. */
export function machineBootDelayMs(machine: Record<string, unknown>, fallback: number): number {
  if (machine['bootDelayMs'] !== undefined) return parseDurationMs(machine['bootDelayMs'], 'machine.bootDelayMs');
  if (machine['bootDelay'] !== undefined) return parseDurationMs(machine['bootDelay'], 'machine.bootDelay');
  return fallback;
}
