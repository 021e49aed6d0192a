// Shard config: YAML text -> env expansion -> zod validation -> ShardConfig (durations in ms,
// defaults applied, paths absolute). Every problem is collected, each naming its field.
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { expandEnv, type Env } from './env.js';
import { describeValue, expectedPhrase, formatIssue, formatPath, startsWith } from './format.js';
import { CLASS_NAME, shardSchema, type RawShardConfig } from './schema.js';
import { ConfigError, type ClassConfig, type ShardConfig } from './types.js';
import { decodeConfig, parseYamlTree } from './yaml.js';
// Each provider checks its own config and machine profiles at load time.
import '../providers/builtin.js';
import { providerValidators, registeredProviders } from '../providers/provider.js';

export interface ParseOptions {
  /** Variables for ${VAR} expansion; default process.env. */
  env?: Env;
  /** Directory that relative paths (dataDir, pglite:./x) resolve against; default cwd. */
  baseDir?: string;
}

export type CheckResult = { ok: true; config: ShardConfig } | { ok: false; errors: string[] };

export function checkConfig(yamlText: string, opts: ParseOptions = {}): CheckResult {
  const parsedYaml = parseYamlTree(yamlText);
  if (!parsedYaml.ok) return parsedYaml;
  const tree = parsedYaml.tree;

  const expanded = expandEnv(tree, opts.env ?? process.env);
  const errors = expanded.errors.map((e) => `${formatPath(e.path)}: ${e.message}`);
  const input = expanded.value;

  const parsed = shardSchema.safeParse(input, { error: expectedPhrase });
  if (!parsed.success) {
    for (const iss of parsed.error.issues) {
      // An unset variable already explains this field.
      if (expanded.errors.some((e) => startsWith(iss.path, e.path))) continue;
      errors.push(...formatIssue(iss, input));
    }
  }
  errors.push(...crossFieldErrors(input));
  if (errors.length > 0 || !parsed.success) return { ok: false, errors };
  return { ok: true, config: toShardConfig(parsed.data, opts.baseDir ?? process.cwd()) };
}

export function parseConfig(yamlText: string, opts: ParseOptions = {}): ShardConfig {
  const res = checkConfig(yamlText, opts);
  if (!res.ok) throw new ConfigError(res.errors);
  return res.config;
}

export function checkConfigFile(path: string, opts: ParseOptions = {}): CheckResult {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    return { ok: false, errors: [`${path}: cannot read: ${(err as Error).message}`] };
  }
  const text = decodeConfig(bytes);
  if (!text.ok) return text;
  return checkConfig(text.text, { ...opts, baseDir: opts.baseDir ?? dirname(resolve(path)) });
}

export function loadConfigFile(path: string, opts: ParseOptions = {}): ShardConfig {
  const res = checkConfigFile(path, opts);
  if (!res.ok) throw new ConfigError(res.errors);
  return res.config;
}

const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Rules across fields, checked on the raw tree so they report even when other fields fail. */
function crossFieldErrors(input: unknown): string[] {
  if (!isRecord(input) || !isRecord(input['classes'])) return [];
  const errors: string[] = [];
  const classes = input['classes'];
  const names = Object.keys(classes);
  if (names.length === 0) errors.push(`classes: expected at least one runner class, got {}`);
  const badNames = names.filter((n) => !CLASS_NAME.test(n));
  for (const n of badNames) errors.push(`classes: expected class names matching [a-z0-9][a-z0-9-]*, got ${JSON.stringify(n)}`);

  const providers = input['providers'] === undefined || input['providers'] === null ? {} : input['providers'];
  for (const [name, cls] of Object.entries(classes)) {
    if (!isRecord(cls)) continue;
    const provider = cls['provider'];
    if (typeof provider === 'string' && isRecord(providers) && !Object.hasOwn(providers, provider)) {
      const known = Object.keys(providers);
      const what = known.length ? `a provider configured under providers (${known.join(', ')})` : 'a provider configured under providers (none is)';
      errors.push(`${formatPath(['classes', name, 'provider'])}: expected ${what}, got ${describeValue(provider, [])}`);
    }
    const checks = typeof provider === 'string' ? providerValidators(provider) : undefined;
    if (typeof provider === 'string' && !checks) {
      errors.push(`${formatPath(['classes', name, 'provider'])}: expected one of the providers runner-fleet knows (${registeredProviders().join(', ')}), got ${describeValue(provider, [])}`);
    }
    // A class of a provider that is not configured has one error already; its machine waits.
    const configured = isRecord(providers) && typeof provider === 'string' && Object.hasOwn(providers, provider);
    if (checks?.machine && configured) errors.push(...checks.machine(name, cls['machine'] ?? {}));
    if (cls['executor'] === 'docker') {
      const machine = isRecord(cls['machine']) ? cls['machine'] : {};
      const os = machine['os'];
      if (os === 'windows' || os === 'macos' || provider === 'mac') {
        errors.push(`${formatPath(['classes', name, 'executor'])}: expected "shell" (the docker executor runs on Linux classes; this class runs ${provider === 'mac' ? 'macOS' : String(os)}), got "docker"`);
      }
    }
    const pool = cls['pool'];
    if (isRecord(pool)) {
      const idle = Number(pool['idle']);
      const max = Number(pool['max']);
      if (Number.isInteger(idle) && Number.isInteger(max) && max >= 1 && idle > max) {
        errors.push(`${formatPath(['classes', name, 'pool', 'idle'])}: expected integer <= pool.max (${max}), got ${idle}`);
      }
      if (pool['standbyMode'] === 'suspend' && checks && !checks.suspend) {
        errors.push(`${formatPath(['classes', name, 'pool', 'standbyMode'])}: expected "stop" (provider ${String(provider)} cannot suspend VMs), got "suspend"`);
      }
    }
  }
  if (isRecord(providers)) {
    for (const [name, raw] of Object.entries(providers)) errors.push(...(providerValidators(name)?.config?.(raw) ?? []));
  }
  const cache = input['cache'];
  if (isRecord(cache) && cache['type'] === 'gcs' && (cache['credentialsFile'] === undefined || cache['credentialsFile'] === null)) {
    errors.push('cache.credentialsFile: expected the path of a service account key file (gcs signs the cache URLs with it), got nothing');
  }
  if (isRecord(cache) && (cache['accessKeyId'] == null) !== (cache['secretAccessKey'] == null)) {
    errors.push('cache.secretAccessKey: expected accessKeyId and secretAccessKey together, or neither (the SDK\'s default chain)');
  }
  const secrets = input['secrets'];
  if (isRecord(secrets) && secrets['key'] != null && secrets['keyFile'] != null) {
    errors.push('secrets.keyFile: expected either secrets.key or secrets.keyFile, not both');
  }
  const isolation = input['isolation'];
  if (isRecord(isolation) && isolation['audit'] === 'enforce' && !(Array.isArray(isolation['managerRanges']) && isolation['managerRanges'].length > 0)) {
    errors.push(`isolation.managerRanges: expected at least one CIDR (the manager's addresses) with isolation.audit: enforce, got ${describeValue(isolation['managerRanges'] ?? [], [])}`);
  }
  return errors;
}

function toShardConfig(raw: RawShardConfig, baseDir: string): ShardConfig {
  const dataDir = resolve(baseDir, raw.dataDir);
  const classes: Record<string, ClassConfig> = {};
  for (const [name, c] of Object.entries(raw.classes)) {
    classes[name] = {
      name,
      runnerToken: c.runnerToken,
      provider: c.provider,
      costFactor: c.costFactor,
      pool: {
        idle: c.pool.idle,
        max: c.pool.max,
        idleTimeMs: c.pool.idleTime,
        scaleFactor: c.pool.scaleFactor,
        scaleFactorLimit: c.pool.scaleFactorLimit,
        standby: c.pool.standby,
        standbyMode: c.pool.standbyMode,
        periods: c.pool.periods.map((p) => ({
          cron: p.cron,
          timezone: p.timezone,
          ...(p.idle !== undefined ? { idle: p.idle } : {}),
          ...(p.idleTime !== undefined ? { idleTimeMs: p.idleTime } : {}),
          ...(p.scaleFactor !== undefined ? { scaleFactor: p.scaleFactor } : {}),
          ...(p.scaleFactorLimit !== undefined ? { scaleFactorLimit: p.scaleFactorLimit } : {}),
          ...(p.standby !== undefined ? { standby: p.standby } : {}),
        })),
        policy: c.pool.policy,
        targetMs: c.pool.target,
        bound: c.pool.bound,
        idleBudget: c.pool.idleBudget,
        intake: c.pool.intake,
      },
      jobTimeoutMs: c.jobTimeout,
      bootTimeoutMs: c.bootTimeout,
      machine: c.machine,
      requestConcurrency: c.requestConcurrency,
      executor: c.executor,
      defaultImage: c.defaultImage,
      pullPolicy: c.pullPolicy,
    };
  }
  return {
    shard: raw.shard,
    database: { url: resolveDatabaseUrl(raw.database.url, baseDir, dataDir), ...(raw.database.poolSize !== undefined ? { poolSize: raw.database.poolSize } : {}) },
    http: { listen: raw.http.listen, adminToken: raw.http.adminToken },
    gitlab: { url: raw.gitlab.url.replace(/\/+$/, ''), pollIntervalMs: raw.gitlab.pollInterval, requestTimeoutMs: raw.gitlab.requestTimeout, tlsCaFile: raw.gitlab.tlsCaFile === null ? null : resolve(baseDir, raw.gitlab.tlsCaFile) },
    jobs: { unreachableTimeoutMs: raw.jobs.unreachableTimeout },
    classes,
    providers: raw.providers,
    dataDir,
    secrets: { key: raw.secrets.key, keyFile: raw.secrets.keyFile === null ? null : resolve(baseDir, raw.secrets.keyFile) },
    billing: { token: raw.billing.token, webhooks: raw.billing.webhooks.map((w) => ({ url: w.url, secret: w.secret, batchSize: w.batchSize, deadLetterAfterMs: w.deadLetterAfter })) },
    isolation: { managerRanges: raw.isolation.managerRanges, audit: raw.isolation.audit, auditIntervalMs: raw.isolation.auditInterval },
    cache: raw.cache
      ? {
          type: raw.cache.type,
          bucket: raw.cache.bucket,
          prefix: raw.cache.prefix.replace(/^\/+|\/+$/g, ''),
          credentialsFile: raw.cache.credentialsFile === null ? null : resolve(baseDir, raw.cache.credentialsFile),
          region: raw.cache.region,
          accessKeyId: raw.cache.accessKeyId,
          secretAccessKey: raw.cache.secretAccessKey,
          endpoint: raw.cache.endpoint,
          forcePathStyle: raw.cache.forcePathStyle,
          urlSlackMs: raw.cache.urlSlack,
        }
      : null,
    log: { level: raw.log.level },
  };
}

function resolveDatabaseUrl(url: string | undefined, baseDir: string, dataDir: string): string {
  if (url === undefined) return `pglite:${join(dataDir, 'db')}`;
  if (!url.startsWith('pglite:') || url === 'pglite:memory') return url;
  const path = url.slice('pglite:'.length);
  return `pglite:${isAbsolute(path) ? path : resolve(baseDir, path)}`;
}
