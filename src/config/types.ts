// The validated, typed shard configuration. `load.ts` turns YAML into this (durations in
// milliseconds, ${VAR} expanded, defaults applied); nothing past the loader re-checks shapes.

export interface PoolConfig {
  /** Warm (booted, never used) VMs to hold. */
  idle: number;
  /** Upper bound on live VMs of the class (warm + busy + booting + deleting). */
  max: number;
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
}

export interface ShardConfig {
  shard: string;
  database: { url: string };
  http: { listen: { host: string; port: number }; adminToken: string | null };
  gitlab: { url: string; pollIntervalMs: number; requestTimeoutMs: number };
  /** Class name -> class. Insertion order is the file's order. */
  classes: Record<string, ClassConfig>;
  /** Provider name -> provider-specific settings. */
  providers: Record<string, Record<string, unknown>>;
  /** Where on-disk state lives (PGlite files, local sandboxes). */
  dataDir: string;
  /** Encryption key for VM private keys and job tokens at rest; null = a key kept in the database. */
  secrets: { key: string | null };
  log: { level: string };
}

export class ConfigError extends Error {
  constructor(readonly errors: string[]) {
    super(`invalid config:\n  ${errors.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}
