// The validated, typed shard configuration. `load.ts` turns YAML into this (durations in
// milliseconds, ${VAR} expanded, defaults applied); nothing past the loader re-checks shapes.
import type { AUDIT_MODES } from './schema.js';

export interface PoolConfig {
  /** Warm (booted, never used) VMs to hold. */
  idle: number;
  /** Upper bound on live VMs of the class (warm + busy + booting + deleting + standby). */
  max: number;
  /** Warm VMs above the target idle this long are stopped (standby short) or deleted. */
  idleTimeMs: number;
  /** Hot capacity is at least scaleFactor x busy VMs (GitLab autoscaler semantics), ... */
  scaleFactor: number;
  /** ... that part capped at scaleFactorLimit (0 = no cap). */
  scaleFactorLimit: number;
  /** Stopped never-used VMs to hold (providers that can stop/start). */
  standby: number;
  /**
   * How standby VMs are kept: `stop` (disk only; a resume boots the OS again) or `suspend` (memory
   * kept on disk; a resume continues the booted OS, faster; providers that can suspend: gcp).
   */
  standbyMode: 'stop' | 'suspend';
  /** Schedules overriding the settings above; the last matching one wins. */
  periods: PoolPeriod[];
  /** `static` (the settings above) or `predictive` (learned demand, see autoscaler/predictive.ts). */
  policy: 'static' | 'predictive';
  /** Predictive: a job should start within `targetMs`, except with probability at most `bound`. */
  targetMs: number;
  bound: number;
  /** Predictive: at most this many never-used VMs (hot + standby); null = `max` only. */
  idleBudget: number | null;
  /** `auto` follows the policy's judgement; see autoscaler.intakeMode. */
  intake: 'auto' | 'preemptive' | 'coldStart';
}

export interface PoolPeriod {
  /** Five-field cron (minute hour day-of-month month day-of-week), e.g. "* 8-18 * * mon-fri". */
  cron: string;
  /** IANA time zone of the schedule. */
  timezone: string;
  idle?: number;
  idleTimeMs?: number;
  scaleFactor?: number;
  scaleFactorLimit?: number;
  standby?: number;
}

export interface ClassConfig {
  name: string;
  runnerToken: string;
  /** Key into `providers`. */
  provider: string;
  costFactor: number;
  pool: PoolConfig;
  /** Cap on a job's run time; the job's own timeout applies when lower. */
  jobTimeoutMs: number;
  /** Provider-specific machine profile, passed through to the provider untouched. */
  machine: Record<string, unknown>;
  /** A VM that is not reachable this long after creation is failed and replaced. */
  bootTimeoutMs: number;
  /** Job requests in flight at once, each with its own reserved warm VM (or claimed room); 1 when absent. */
  requestConcurrency?: number;
  /** `shell` (the VM's shell; default) or `docker` (a container of the job's image; Linux). */
  executor?: 'shell' | 'docker';
  /** docker: the image of jobs that name none. */
  defaultImage?: string | null;
  /** docker: the pull policies of images whose job gives none (default [always], as gitlab-runner). */
  pullPolicy?: ('always' | 'if-not-present' | 'never')[];
}

export interface ShardConfig {
  shard: string;
  /** poolSize: connections to a postgres:// server (default 10; PGlite always has one). */
  database: { url: string; poolSize?: number };
  http: { listen: { host: string; port: number }; adminToken: string | null };
  /** tlsCaFile: a PEM CA bundle GitLab's certificate chains to; jobs get it as CI_SERVER_TLS_CA_FILE. */
  gitlab: { url: string; pollIntervalMs: number; requestTimeoutMs: number; tlsCaFile?: string | null };
  /** A running job whose VM stays unreachable this long (while the cloud still has it) is failed. */
  jobs?: { unreachableTimeoutMs: number };
  /** Class name -> class. Insertion order is the file's order. */
  classes: Record<string, ClassConfig>;
  /** Provider name -> provider-specific settings. */
  providers: Record<string, Record<string, unknown>>;
  /** Where on-disk state lives (PGlite files, local sandboxes). */
  dataDir: string;
  /**
   * Encryption key for VM private keys and job tokens at rest, as material (key) or a file holding
   * it (keyFile, absolute; read at start). Both null: a key kept in the database, `demo` only.
   */
  secrets: { key: string | null; keyFile?: string | null };
  billing: BillingConfig;
  isolation: IsolationConfig;
  /** The distributed cache (one bucket per shard); null: jobs' `cache:` is not offered. */
  cache?: CacheConfig | null;
  log: { level: string };
}

export interface IsolationConfig {
  /** Where the manager's connections to job VMs come from: the only sources allowed in. */
  managerRanges: string[];
  /** Audit the runner networks' ingress rules: log findings (warn), refuse to start on any (enforce), or not at all. */
  audit: (typeof AUDIT_MODES)[number];
  auditIntervalMs: number;
}

export interface CacheConfig {
  type: 'gcs' | 's3';
  bucket: string;
  /** Object names start with it: `<prefix>/project/<id>/<key>`. */
  prefix: string;
  /** gcs: service account key file (absolute) whose key signs the URLs. */
  credentialsFile: string | null;
  /** s3: region, keys (null: the SDK's default chain), an S3-compatible endpoint. */
  region: string;
  accessKeyId: string | null;
  secretAccessKey: string | null;
  endpoint: string | null;
  forcePathStyle: boolean;
  /** Signed URLs live the job's timeout plus this. */
  urlSlackMs: number;
}

export interface WebhookSink {
  url: string;
  /** HMAC-SHA256 key of the X-Runner-Fleet-Signature header. */
  secret: string;
  batchSize: number;
  /** A batch failing this long is dead-lettered and delivery moves on. */
  deadLetterAfterMs: number;
}

export interface BillingConfig {
  /** Bearer token of GET /v1/billing/events; null disables the pull API. */
  token: string | null;
  webhooks: WebhookSink[];
}

export class ConfigError extends Error {
  constructor(readonly errors: string[]) {
    super(`invalid config:\n  ${errors.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}
