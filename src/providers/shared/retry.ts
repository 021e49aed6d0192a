// Retry policy of every cloud API call (gcp, aws, mac): bounded, jittered exponential backoff for
// transient errors and throttling only; a throttled caller waits longer, as clouds refill their
// request buckets at a fixed rate.
import type { Options } from 'p-retry';
import type { Logger } from 'pino';
import { ProviderError } from '../provider.js';

export interface RetryStats {
  retries: number;
  rateLimited: number;
}

export function cloudRetryOptions(o: {
  cfg: { retries: number; retryBaseMs: number };
  log: Logger;
  /** What the debug line says failed, e.g. `{ method, zone }`. */
  context: Record<string, unknown>;
  message: string;
  stats?: RetryStats;
}): Options {
  const { cfg, stats } = o;
  return {
    retries: cfg.retries,
    minTimeout: cfg.retryBaseMs,
    maxTimeout: Math.max(cfg.retryBaseMs, 30_000),
    factor: 2,
    randomize: true,
    shouldRetry: ({ error }) => error instanceof ProviderError && (error.kind === 'retryable' || error.kind === 'rateLimited'),
    onFailedAttempt: async ({ error, retriesLeft }) => {
      const kind = error instanceof ProviderError ? error.kind : 'fatal';
      if (kind !== 'retryable' && kind !== 'rateLimited') return;
      if (kind === 'rateLimited' && stats) stats.rateLimited++;
      if (retriesLeft <= 0) return;
      if (stats) stats.retries++;
      o.log.debug({ ...o.context, kind, retriesLeft, err: error.message }, o.message);
      if (kind === 'rateLimited') await new Promise((r) => setTimeout(r, cfg.retryBaseMs * (1 + Math.random()) * 2));
    },
  };
}
