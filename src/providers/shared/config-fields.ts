// zod pieces shared by the providers' config schemas (providers.<name> and classes.X.machine),
// built like the shard schema (src/config/schema.ts): a number may arrive as a string from
// ${VAR} expansion, and every error names its field path and what was expected.
import { z } from 'zod';
import { tryParseDuration } from '../../config/duration.js';
import { describeValue, formatPath, valueAt } from '../../config/format.js';
import { numeric } from '../../config/schema.js';
import { ProviderError } from '../provider.js';

export const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** A mapping with exactly these fields; an unknown field is named with the known ones. */
export function fields<S extends z.ZodRawShape>(shape: S, what: string) {
  const unknown = `not a known field (known: ${Object.keys(shape).join(', ')})`;
  return z.strictObject(shape, { error: (iss) => (iss.code === 'unrecognized_keys' ? unknown : what) });
}

/** An integer in [min, max]; "${VAR}" strings of digits count as numbers. */
export function intIn(min: number, max: number, what = `an integer ${min}..${max}`) {
  return z.preprocess(numeric, z.number({ error: what }).int({ error: what }).min(min, { error: what }).max(max, { error: what }));
}

export function numberAbove(min: number, what: string) {
  return z.preprocess(numeric, z.number({ error: what }).gt(min, { error: what }).finite({ error: what }));
}

/** A string matching `re`. */
export function matching(re: RegExp, what: string) {
  return z.string({ error: what }).regex(re, { error: what });
}

/** A duration string ("30s", "10m") or milliseconds (a number, or digits from ${VAR}); in ms. */
export function durationMs(what = 'a duration like "30s" or "10m"', min = 0) {
  return z.preprocess(
    numeric,
    z.union([z.number(), z.string()], { error: what }).transform((v, ctx) => {
      const ms = typeof v === 'number' ? (Number.isFinite(v) ? v : null) : tryParseDuration(v);
      if (ms === null || ms < min) {
        ctx.addIssue({ code: 'custom', message: what, input: v });
        return z.NEVER;
      }
      return ms;
    }),
  );
}

/** `http(s)://host[:port]` without a path; kept without its trailing slashes. */
export function endpointUrl(what: string, pathless: boolean) {
  return z
    .string({ error: what })
    .trim()
    .refine((s) => {
      try {
        const u = new URL(s);
        return (u.protocol === 'http:' || u.protocol === 'https:') && (!pathless || u.pathname === '/' || u.pathname === '');
      } catch {
        return false;
      }
    }, { error: what })
    .transform((s) => s.replace(/\/+$/, ''));
}

/** How a provider calls its cloud: rate, timeout, retries, describe interval. */
export interface CallSettings {
  requestsPerSecond: number;
  callTimeoutMs: number;
  retries: number;
  retryBaseMs: number;
  pollIntervalMs: number;
}

/** The call settings' fields of a provider schema (raw names: callTimeout, retryBase, pollInterval). */
export function callFields(defaults: { requestsPerSecond: number }) {
  return {
    requestsPerSecond: numberAbove(0, 'a number > 0').default(defaults.requestsPerSecond),
    callTimeout: durationMs('a duration > 0 like "30s"', 1).default(30_000),
    retries: intIn(0, 10).default(4),
    retryBase: durationMs().default(500),
    pollInterval: durationMs().default(2_000),
  };
}

export function callSettings(v: { requestsPerSecond: number; callTimeout: number; retries: number; retryBase: number; pollInterval: number }): CallSettings {
  return { requestsPerSecond: v.requestsPerSecond, callTimeoutMs: v.callTimeout, retries: v.retries, retryBaseMs: v.retryBase, pollIntervalMs: v.pollInterval };
}

/** A problem found across fields, after the schema: its path under the prefix and its whole message. */
export interface FieldError {
  path: (string | number)[];
  message: string;
}

/**
 * Parses `raw` with `schema` (whose leaves carry the "what" phrase), then `cross` on the raw input
 * for rules across fields (zod skips an object's refinements once a field failed; these report
 * together with field errors, as the shard loader's do). Schema errors read
 * `<prefix.path>: expected <what>, got <value>`; cross errors are printed as written.
 */
export function check<T>(schema: z.ZodType<T>, raw: unknown, prefix: (string | number)[], cross?: (raw: Record<string, unknown>) => FieldError[]): { errors: string[]; value?: T } {
  const parsed = schema.safeParse(raw);
  const lines: { path: PropertyKey[]; text: string; unknownKey: boolean }[] = [];
  const at = (path: readonly PropertyKey[]) => formatPath([...prefix, ...path]);
  if (!parsed.success) {
    for (const iss of parsed.error.issues) {
      if (iss.code === 'unrecognized_keys') {
        for (const k of iss.keys) lines.push({ path: iss.path, text: `${at([...iss.path, k])}: ${iss.message}`, unknownKey: true });
        continue;
      }
      lines.push({ path: iss.path, text: `${at(iss.path)}: expected ${iss.message}, got ${describeValue(valueAt(raw, iss.path), iss.path)}`, unknownKey: false });
    }
  }
  // zod reports an object's unknown keys after its fields' errors; operators read them first.
  const ordered: typeof lines = [];
  for (const line of lines) {
    if (!line.unknownKey) {
      ordered.push(line);
      continue;
    }
    const first = ordered.findIndex((l) => !l.unknownKey && l.path.length >= line.path.length && line.path.every((k, i) => l.path[i] === k));
    if (first < 0) ordered.push(line);
    else ordered.splice(first, 0, line);
  }
  if (cross && isRecord(raw)) for (const e of cross(raw)) ordered.push({ path: e.path, text: `${at(e.path)}: ${e.message}`, unknownKey: false });
  // Errors in the order of the fields (unknown fields first), as an operator reads the file.
  const keys = schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
  const rank = (l: (typeof ordered)[number]) => (l.unknownKey && l.path.length === 0 ? -1 : keys.indexOf(String(l.path[0])));
  const errors = ordered
    .map((l, i) => ({ l, i }))
    .sort((a, b) => rank(a.l) - rank(b.l) || a.i - b.i)
    .map(({ l }) => l.text);
  return errors.length || !parsed.success ? { errors } : { errors, value: parsed.data };
}

/** `check`, throwing one Error that lists every problem. */
export function parseOrThrow<T>(...args: Parameters<typeof check<T>>): T {
  const { errors, value } = check(...args);
  if (errors.length || value === undefined) throw new Error(errors.join('\n'));
  return value;
}


/** JSON of a value for an error message (shortened; URLs cut to scheme and host). */
export const show = (v: unknown) => describeValue(v, []);

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
