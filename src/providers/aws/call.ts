// The one path every EC2 call takes (aws and mac providers): the account's token bucket, a
// timeout, the shared cloud retry policy, errors classified, each attempt reported to the
// shard's telemetry.
import pRetry from 'p-retry';
import type { Logger } from 'pino';
import { ProviderError, type CloudTelemetry } from '../provider.js';
import type { TokenBucket } from '../shared/rate-limit.js';
import { cloudRetryOptions } from '../shared/retry.js';
import type { AwsProviderConfig } from './config.js';
import { classifyAwsError } from './errors.js';

export interface Ec2CallStats {
  calls: Record<string, number>;
  retries: number;
  timeouts: number;
  rateLimited: number;
}

export interface Ec2CallDeps {
  provider: string;
  cfg: Pick<AwsProviderConfig, 'callTimeoutMs' | 'retries' | 'retryBaseMs'>;
  bucket: TokenBucket;
  telemetry: CloudTelemetry;
  log: Logger;
  stats?: Ec2CallStats;
}

/**
 * `justLaunched`: the call names an instance launched moments ago. EC2 is eventually consistent:
 * such a call may answer InvalidInstanceID.NotFound for an instance that exists, so NotFound is
 * retried with the other transient errors instead of being final.
 */
export async function ec2Call<T>(d: Ec2CallDeps, action: string, zone: string | undefined, fn: (signal: AbortSignal) => Promise<T>, opts: { justLaunched?: boolean } = {}): Promise<T> {
  const { cfg, stats } = d;
  const timeout = cfg.callTimeoutMs;
  const where = zone ? { zone } : {};
  return pRetry(
    async () => {
      await d.bucket.take();
      if (stats) stats.calls[action] = (stats.calls[action] ?? 0) + 1;
      const abort = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        abort.abort();
      }, timeout);
      const started = performance.now();
      let outcome = 'ok';
      try {
        return await fn(abort.signal);
      } catch (err) {
        if (timedOut) {
          if (stats) stats.timeouts++;
          outcome = 'timeout';
          throw new ProviderError('retryable', `aws ${action}${zone ? ` in ${zone}` : ''}: no answer within ${timeout} ms`, { provider: d.provider, operation: action, ...where });
        }
        let pe = classifyAwsError(err, { operation: action, ...where });
        if (pe.kind === 'notFound' && opts.justLaunched) pe = new ProviderError('retryable', `${pe.message} (launched moments ago: EC2 eventual consistency)`, { provider: d.provider, operation: action, ...where, cause: pe });
        outcome = pe.kind;
        throw pe;
      } finally {
        clearTimeout(timer);
        d.telemetry.request(action, outcome, (performance.now() - started) / 1000);
      }
    },
    cloudRetryOptions({ cfg, log: d.log, context: { action, zone }, message: 'aws call failed; retrying', ...(stats ? { stats } : {}) }),
  );
}
