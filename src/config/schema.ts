// zod schema of the shard YAML. Each leaf carries the "expected ..." phrase its errors print,
// so every message reads `<path>: expected <what>, got <value>` (see format.ts).
import { Cron } from 'croner';
import { z } from 'zod';
import { parseCidr } from '../isolation/cidr.js';
import { formatDuration, tryParseDuration } from './duration.js';

export const SHARD_NAME = /^[a-z0-9-]{1,40}$/;
export const CLASS_NAME = /^[a-z0-9][a-z0-9-]*$/;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const HOUR = 3_600_000;

/** Numbers may arrive as strings from ${VAR} expansion ("2"); anything else stays as written. */
export const numeric = (v: unknown) => (typeof v === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(v) ? Number(v) : v);

function intAtLeast(min: number) {
  const what = `integer >= ${min}`;
  return z.preprocess(numeric, z.number({ error: what }).int({ error: what }).min(min, { error: what }));
}

function intBetween(min: number, max: number) {
  const what = `integer from ${min} to ${max}`;
  return z.preprocess(numeric, z.number({ error: what }).int({ error: what }).min(min, { error: what }).max(max, { error: what }));
}

function positiveNumber() {
  const what = 'number > 0';
  return z.preprocess(numeric, z.number({ error: what }).positive({ error: what }));
}

/** A duration string, checked against bounds, producing milliseconds. */
function duration(minMs: number, maxMs: number) {
  const what = `duration from ${formatDuration(minMs)} to ${formatDuration(maxMs)} like 500ms, 3s, 2m, 1h30m`;
  return z.string({ error: what }).transform((s, ctx) => {
    const ms = tryParseDuration(s);
    if (ms === null || ms < minMs || ms > maxMs) {
      ctx.addIssue({ code: 'custom', message: what, input: s });
      return z.NEVER;
    }
    return ms;
  });
}

function stringMatching(re: RegExp, what: string) {
  return z.string({ error: what }).regex(re, { error: what });
}

function nonEmpty(what = 'non-empty string') {
  return z.string({ error: what }).min(1, { error: what });
}

/** A free-form mapping; an empty YAML value (`local:`) means {}. */
const mapping = z
  .record(z.string(), z.unknown(), { error: 'mapping' })
  .nullable()
  .transform((v) => v ?? {});

/** "host:port" or "[v6]:port". */
export const listenAddress = z.string({ error: '"host:port" with port 0-65535' }).transform((s, ctx) => {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    ctx.addIssue({ code: 'custom', message: '"host:port" with port 0-65535', input: s });
    return z.NEVER;
  }
  return { host: (m[1] ?? m[2])!, port };
});

const databaseUrl = z.string({ error: 'postgres://..., pglite:memory or pglite:<path>' }).refine(
  (s) => /^postgres(ql)?:\/\/\S+$/.test(s) || /^pglite:\S+$/.test(s),
  { error: 'postgres://..., pglite:memory or pglite:<path>' },
);

const parsedUrl = (s: string): URL | null => {
  try {
    return new URL(s);
  } catch {
    return null;
  }
};

// No user:password@: fetch refuses such URLs at run time, and a URL travels into error text.
const httpUrl = z
  .string({ error: 'http(s) URL' })
  .refine((s) => ['http:', 'https:'].includes(parsedUrl(s)?.protocol ?? ''), { error: 'http(s) URL', abort: true })
  .refine((s) => !parsedUrl(s)?.username && !parsedUrl(s)?.password, { error: 'http(s) URL without user:password@ (credentials do not belong in a URL)', abort: true });

/** GitLab's base URL: paths are appended to it, so no query or fragment either. */
const gitlabUrl = httpUrl.refine((s) => !parsedUrl(s)?.search && !parsedUrl(s)?.hash && !s.includes('?') && !s.includes('#'), { error: 'http(s) URL without a query string or fragment' });

const token = (min: number) => {
  const what = `string of at least ${min} characters, or null`;
  return z.string({ error: what }).min(min, { error: what }).nullable();
};

function numberAtLeast(min: number) {
  const what = `number >= ${min}`;
  return z.preprocess(numeric, z.number({ error: what }).min(min, { error: what }));
}

/** An IPv4 CIDR with no host bits set, kept as written. */
const cidr = z.string({ error: 'IPv4 CIDR like 10.0.0.5/32' }).refine(
  (v) => {
    try {
      parseCidr(v);
      return true;
    } catch {
      return false;
    }
  },
  { error: 'IPv4 CIDR like 10.0.0.5/32 (no host bits set)' },
);

export const AUDIT_MODES = ['off', 'warn', 'enforce'] as const;

const cronSchedule = z.string({ error: 'five-field cron schedule like "* 8-18 * * mon-fri"' }).refine(
  (s) => {
    if (s.trim().split(/\s+/).length !== 5) return false;
    try {
      new Cron(s, { paused: true });
      return true;
    } catch {
      return false;
    }
  },
  { error: 'five-field cron schedule like "* 8-18 * * mon-fri"' },
);

const timeZone = z.string({ error: 'IANA time zone like Europe/Berlin' }).refine(
  (tz) => {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: tz });
      return true;
    } catch {
      return false;
    }
  },
  { error: 'IANA time zone like Europe/Berlin' },
);

const periodSchema = z.strictObject(
  {
    cron: cronSchedule,
    timezone: timeZone.default('UTC'),
    idle: intAtLeast(0).optional(),
    idleTime: duration(0, 24 * HOUR).optional(),
    scaleFactor: numberAtLeast(0).optional(),
    scaleFactorLimit: intAtLeast(0).optional(),
    standby: intAtLeast(0).optional(),
  },
  { error: 'mapping with cron, timezone and the settings it overrides' },
);

const poolSchema = z.strictObject(
  {
    idle: intAtLeast(0),
    max: intAtLeast(1),
    idleTime: duration(0, 24 * HOUR).default(60_000),
    scaleFactor: numberAtLeast(0).default(0),
    scaleFactorLimit: intAtLeast(0).default(0),
    standby: intAtLeast(0).default(0),
    standbyMode: z.enum(['stop', 'suspend'], { error: 'stop or suspend' }).default('stop'),
    periods: z.array(periodSchema, { error: 'list of periods' }).default([]),
    policy: z.enum(['static', 'predictive'], { error: 'static or predictive' }).default('static'),
    target: duration(1000, HOUR).default(10_000),
    bound: z.preprocess(numeric, z.number({ error: 'number between 0.0001 and 0.5' }).min(0.0001, { error: 'number between 0.0001 and 0.5' }).max(0.5, { error: 'number between 0.0001 and 0.5' })).default(0.05),
    idleBudget: intAtLeast(0).nullable().default(null),
    intake: z.enum(['auto', 'preemptive', 'coldStart'], { error: 'auto, preemptive or coldStart' }).default('auto'),
  },
  { error: 'mapping with idle and max' },
);

const pullPolicy = z.enum(['always', 'if-not-present', 'never'], { error: 'always, if-not-present or never' });

export const classSchema = z.strictObject({
  runnerToken: nonEmpty(),
  provider: stringMatching(CLASS_NAME, 'provider name'),
  costFactor: positiveNumber().default(1),
  pool: poolSchema,
  jobTimeout: duration(1000, 24 * HOUR).default(3 * HOUR),
  bootTimeout: duration(1000, 24 * HOUR).default(10 * 60_000),
  machine: mapping.default({}),
  // Concurrent job requests to GitLab (gitlab-runner's request_concurrency), each holding its own warm VM.
  requestConcurrency: intBetween(1, 100).default(1),
  // How jobs run on the VM: in its shell, or in Docker containers of the job's image (Linux).
  executor: z.enum(['shell', 'docker'], { error: 'shell or docker' }).default('shell'),
  defaultImage: nonEmpty('image reference like alpine:3.20').refine((s) => !s.startsWith('-') && !/\s/.test(s), { error: 'image reference like alpine:3.20' }).nullable().default(null),
  pullPolicy: z
    .union([pullPolicy, z.array(pullPolicy, { error: 'list of always, if-not-present, never' }).min(1, { error: 'list of always, if-not-present, never' })], { error: 'always, if-not-present or never, or a list of them' })
    .transform((v) => (Array.isArray(v) ? v : [v]))
    .default(['always']),
});

const webhookSchema = z.strictObject(
  {
    url: httpUrl,
    secret: nonEmpty('shared secret of at least 16 characters').refine((v) => v.length >= 16, { error: 'shared secret of at least 16 characters' }),
    batchSize: intAtLeast(1).refine((n) => n <= 1000, { error: 'integer from 1 to 1000' }).default(100),
    deadLetterAfter: duration(60_000, 30 * 24 * HOUR).default(24 * HOUR),
  },
  { error: 'mapping with url, secret, batchSize, deadLetterAfter' },
);

export const shardSchema = z.strictObject(
  {
    shard: stringMatching(SHARD_NAME, 'shard name of 1-40 characters [a-z0-9-]'),
    database: z.strictObject({ url: databaseUrl.optional(), poolSize: z.preprocess(numeric, z.number({ error: 'integer from 1 to 100' }).int({ error: 'integer from 1 to 100' }).min(1, { error: 'integer from 1 to 100' }).max(100, { error: 'integer from 1 to 100' })).optional() }, { error: 'mapping' }).default({}),
    http: z
      .strictObject(
        { listen: listenAddress.default({ host: '127.0.0.1', port: 8080 }), adminToken: token(8).default(null) },
        { error: 'mapping' },
      )
      .default({ listen: { host: '127.0.0.1', port: 8080 }, adminToken: null }),
    gitlab: z.strictObject(
      {
        url: gitlabUrl,
        pollInterval: duration(100, HOUR).default(3000),
        requestTimeout: duration(100, 10 * 60_000).default(30_000),
        tlsCaFile: nonEmpty('non-empty path of a PEM file').nullable().default(null),
      },
      { error: 'mapping' },
    ),
    jobs: z
      .strictObject({ unreachableTimeout: duration(1000, 24 * HOUR).default(120_000) }, { error: 'mapping' })
      .default({ unreachableTimeout: 120_000 }),
    // Names are checked in load.ts so a bad name is reported as a name, not as its whole body.
    classes: z.record(z.string(), classSchema, { error: 'mapping of runner classes' }),
    providers: z.record(z.string(), mapping, { error: 'mapping of providers' }).nullable().transform((v) => v ?? {}).default({}),
    dataDir: nonEmpty('non-empty path').default('./data'),
    secrets: z
      .strictObject({ key: token(16).default(null), keyFile: nonEmpty('non-empty path of a file holding the key').nullable().default(null) }, { error: 'mapping' })
      .default({ key: null, keyFile: null }),
    billing: z
      .strictObject(
        { token: token(16).default(null), webhooks: z.array(webhookSchema, { error: 'list of webhook sinks' }).default([]) },
        { error: 'mapping' },
      )
      .default({ token: null, webhooks: [] }),
    isolation: z
      .strictObject(
        {
          managerRanges: z.array(cidr, { error: 'list of IPv4 CIDRs' }).default([]),
          audit: z.enum(AUDIT_MODES, { error: 'off, warn or enforce' }).default('warn'),
          auditInterval: duration(60_000, 24 * HOUR).default(600_000),
        },
        { error: 'mapping' },
      )
      .default({ managerRanges: [], audit: 'warn', auditInterval: 600_000 }),
    cache: z
      .strictObject(
        {
          type: z.enum(['gcs', 's3'], { error: 'gcs or s3' }),
          bucket: stringMatching(/^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$/, 'bucket name of 3-222 characters [a-z0-9._-]'),
          prefix: z.string({ error: 'object name prefix' }).regex(/^[A-Za-z0-9._/-]{0,200}$/, { error: 'object name prefix of [A-Za-z0-9._/-]' }).default(''),
          // gcs: a service account key file (JSON with client_email and private_key) signs the URLs.
          credentialsFile: nonEmpty('non-empty path of a service account key file').nullable().default(null),
          // s3: region and keys (else the SDK's default chain); endpoint for S3-compatible stores.
          region: nonEmpty('region like us-east-1').default('us-east-1'),
          accessKeyId: nonEmpty('access key id').nullable().default(null),
          secretAccessKey: nonEmpty('secret access key').nullable().default(null),
          endpoint: httpUrl.nullable().default(null),
          forcePathStyle: z.boolean({ error: 'true or false' }).default(false),
          // How long a job's signed URLs stay valid beyond its timeout.
          urlSlack: duration(60_000, 24 * HOUR).default(HOUR),
        },
        { error: 'mapping with type, bucket and prefix' },
      )
      .nullable()
      .default(null),
    log: z
      .strictObject({ level: z.enum(LOG_LEVELS, { error: `one of ${LOG_LEVELS.join(', ')}` }).default('info') }, { error: 'mapping' })
      .default({ level: 'info' }),
  },
  { error: 'mapping' },
);

export type RawShardConfig = z.output<typeof shardSchema>;
