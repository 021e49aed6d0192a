// providers.local config: validated here, with errors naming the offending field.
import { z } from 'zod';
import { numeric } from '../../config/schema.js';
import { durationMs, fields, parseOrThrow, type FieldError } from '../shared/config-fields.js';

export { machineBootDelayMs, parseDurationMs } from './boot-delay.js';

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

const DELAY = 'a duration like "500ms", "2s" or "1m"';
const MS = 'a non-negative number of milliseconds';

const providerSchema = fields(
  {
    bootDelayMs: z.preprocess(numeric, z.number({ error: MS }).min(0, { error: MS }).finite({ error: MS })).optional(),
    bootDelay: durationMs(DELAY).optional(),
    dir: z.string({ error: 'a non-empty path' }).min(1, { error: 'a non-empty path' }).optional(),
  },
  'a mapping with bootDelay and dir',
);

/** bootDelayMs (a number of milliseconds) and bootDelay (a duration) say the same thing. */
function crossProvider(raw: Record<string, unknown>): FieldError[] {
  const errors: FieldError[] = [];
  if (raw['bootDelayMs'] !== undefined && raw['bootDelay'] !== undefined) errors.push({ path: ['bootDelay'], message: 'bootDelay and bootDelayMs are exclusive: give one' });
  return errors;
}

/** Validates `providers.local` (empty means all defaults); throws one Error listing every problem. */
export function parseLocalConfig(raw: unknown): LocalProviderConfig {
  if (raw === undefined || raw === null) return { bootDelayMs: 0 };
  const v = parseOrThrow(providerSchema, raw, ['providers', 'local'], crossProvider);
  return { bootDelayMs: v.bootDelayMs ?? v.bootDelay ?? 0, ...(v.dir ? { dir: v.dir } : {}) };
}
