// providers.local config: validated here, with errors naming the offending field.

export interface LocalProviderConfig {
  /** How long a sandbox waits before it listens: makes booting and warm pools visible. */
  bootDelayMs: number;
  /** Root of the sandboxes; default `<dataDir>/local-vms`. */
  dir?: string;
  /**
   * Bench hook (not a config file field): the sandboxes' nice value, set right after each is
   * spawned. Its commands inherit it. Benches that share one machine between the manager and
   * its "VMs" use it so the VMs do not starve the process under test.
   */
  nice?: number;
  /**
   * Bench hook (not a config file field): a cgroup's `cgroup.procs` file each sandbox is moved
   * into right after its spawn (its commands inherit it): a low-weight group for all the "VMs"
   * shields the process under test where nice cannot (500 runnable nice-19 processes outweigh one
   * nice-0 process).
   */
  cgroupProcs?: string;
  /**
   * Test hook (not a config file field): a directory put first on each sandbox's PATH, so tests
   * can stand in programs a real VM image has (the GCE emulator's `powershell.exe` shim).
   */
  extraPathDir?: string;
  /**
   * Test hook (not a config file field): every sandbox listens on this port of its own loopback
   * address instead of a random one, as VMs all listen on 22 (the Tart double's nested VMs).
   */
  sshPort?: number;
}

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

export function parseLocalConfig(raw: unknown): LocalProviderConfig {
  const path = 'providers.local';
  if (raw === undefined || raw === null) return { bootDelayMs: 0 };
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${path} must be an object`);
  const cfg = raw as Record<string, unknown>;
  const known = new Set(['bootDelayMs', 'bootDelay', 'dir']);
  for (const k of Object.keys(cfg)) if (!known.has(k)) throw new Error(`${path}.${k} is not a known field (known: ${[...known].join(', ')})`);
  if (cfg['bootDelayMs'] !== undefined && cfg['bootDelay'] !== undefined) throw new Error(`${path}.bootDelay and ${path}.bootDelayMs are exclusive: give one`);
  let bootDelayMs = 0;
  if (cfg['bootDelayMs'] !== undefined) {
    if (typeof cfg['bootDelayMs'] !== 'number') throw new Error(`${path}.bootDelayMs must be a number of milliseconds`);
    bootDelayMs = parseDurationMs(cfg['bootDelayMs'], `${path}.bootDelayMs`);
  } else if (cfg['bootDelay'] !== undefined) {
    bootDelayMs = parseDurationMs(cfg['bootDelay'], `${path}.bootDelay`);
  }
  const dir = cfg['dir'];
  if (dir !== undefined && (typeof dir !== 'string' || dir === '')) throw new Error(`${path}.dir must be a non-empty path`);
  return { bootDelayMs, ...(dir ? { dir } : {}) };
}

/** A class's `machine.bootDelayMs` (or `machine.bootDelay`) overrides the provider default. */
export function machineBootDelayMs(machine: Record<string, unknown>, fallback: number): number {
  if (machine['bootDelayMs'] !== undefined) return parseDurationMs(machine['bootDelayMs'], 'machine.bootDelayMs');
  if (machine['bootDelay'] !== undefined) return parseDurationMs(machine['bootDelay'], 'machine.bootDelay');
  return fallback;
}
