// Field checks shared by the cloud providers' config parsers: each error names its field path
// and what was expected.
import { tryParseDuration } from '../../config/duration.js';
import { ProviderError } from '../provider.js';

export const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
export const show = (v: unknown) => (v === undefined ? 'nothing' : JSON.stringify(v));

/** A duration string ("30s", "10m") or milliseconds; `dflt` when absent. */
export function duration(v: unknown, field: string, dflt: number, errors: string[]): number {
  if (v === undefined) return dflt;
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return v;
  const ms = typeof v === 'string' ? tryParseDuration(v) : null;
  if (ms === null) {
    errors.push(`${field}: expected a duration like "30s" or "10m", got ${show(v)}`);
    return dflt;
  }
  return ms;
}

/** How a provider calls its cloud: rate, timeout, retries, describe interval. */
export interface CallSettings {
  requestsPerSecond: number;
  callTimeoutMs: number;
  retries: number;
  retryBaseMs: number;
  pollIntervalMs: number;
}

export function parseCallSettings(raw: Record<string, unknown>, p: string, errors: string[], defaults: { requestsPerSecond: number }): CallSettings {
  let requestsPerSecond = defaults.requestsPerSecond;
  if (raw['requestsPerSecond'] !== undefined) {
    const v = raw['requestsPerSecond'];
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) errors.push(`${p}.requestsPerSecond: expected a number > 0, got ${show(v)}`);
    else requestsPerSecond = v;
  }
  let retries = 4;
  if (raw['retries'] !== undefined) {
    const v = raw['retries'];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 10) errors.push(`${p}.retries: expected an integer 0..10, got ${show(v)}`);
    else retries = v;
  }
  const callTimeoutMs = duration(raw['callTimeout'], `${p}.callTimeout`, 30_000, errors);
  if (callTimeoutMs <= 0) errors.push(`${p}.callTimeout: expected a duration > 0`);
  const retryBaseMs = duration(raw['retryBase'], `${p}.retryBase`, 500, errors);
  const pollIntervalMs = duration(raw['pollInterval'], `${p}.pollInterval`, 2_000, errors);
  return { requestsPerSecond, callTimeoutMs, retries, retryBaseMs, pollIntervalMs };
}

/**
 * A provider's parsed machine profiles, by class and profile: parsed once, and a bad profile is a
 * `fatal` ProviderError for the VM (config load has already reported it).
 */
export function machineProfiles<M>(provider: string, parse: (className: string, machine: unknown) => M): (spec: { className: string; machine: Record<string, unknown> }) => M {
  const cache = new Map<string, M>();
  return (spec) => {
    const key = `${spec.className}\0${JSON.stringify(spec.machine)}`;
    let m = cache.get(key);
    if (!m) {
      try {
        m = parse(spec.className, spec.machine);
      } catch (err) {
        throw new ProviderError('fatal', (err as Error).message, { provider, operation: 'create' });
      }
      cache.set(key, m);
    }
    return m;
  };
}
