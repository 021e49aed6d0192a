// Ending a job that never reached a VM: a malformed payload, a bind the database would not take,
// or a handout whose manager died before binding it. The job gets its row and one non-billable
// billing event (retried, but GitLab hears of the failure whether or not they land), a trace
// line saying why, and its final state in GitLab.
import pRetry from 'p-retry';
import type { Logger } from 'pino';
import type { ShardConfig } from '../config/types.js';
import { isTransientDbError } from '../db/fence.js';
import type { GitLabClient } from '../gitlab/client.js';
import { buildBillingEvent } from './billing.js';
import type { Clock } from './clock.js';
import { machineType, reportFinal } from './executor.js';
import type { Metrics } from './metrics.js';
import type { Store } from './store.js';

/** Writes a retry can cure (deadlocks, lost connections): how intake and fail-back retry them. */
export const DB_RETRY = { retries: 4, minTimeout: 100, maxTimeout: 2000, shouldRetry: ({ error }: { error: unknown }) => isTransientDbError(error) };

export interface FailBackDeps {
  config: ShardConfig;
  store: Store;
  gitlab: GitLabClient;
  metrics: Metrics;
  clock: Clock;
}

export async function failJobBack(
  d: FailBackDeps,
  className: string,
  job: { jobId: number; token: string; error: string },
  pickedAt: number,
  log: Logger,
  failureReason: string,
): Promise<void> {
  const cls = d.config.classes[className];
  const at = new Date(pickedAt);
  const event = buildBillingEvent({
    shard: d.config.shard,
    jobId: job.jobId,
    projectId: null,
    pipelineId: null,
    namespaceId: null,
    rootNamespaceId: null,
    runnerClass: className,
    costFactor: cls?.costFactor ?? 0,
    provider: cls?.provider ?? 'unknown',
    machineType: cls ? machineType(cls) : null,
    startedAt: at,
    finishedAt: at,
    outcome: 'failed',
    failureReason,
  });
  await pRetry(() => d.store.recordRejectedJob({ jobId: job.jobId, className, token: job.token, pickedAt: at, failureReason, event }), DB_RETRY).catch((err) => log.error({ job: job.jobId, err: (err as Error).message }, 'could not record the refused job: its billing event is missing'));
  d.metrics.jobsTotal.inc({ class: className, result: 'rejected' });
  const message = Buffer.from(`ERROR: runner-fleet could not run this job: ${job.error}\n`);
  const sent = await d.gitlab.patchTrace(job.jobId, job.token, message, 0).catch(() => null);
  await reportFinal(d.gitlab, d.store, d.clock, job.jobId, job.token, { result: 'failed', exitCode: null, failureReason, traceBytes: sent?.ok ? message.length : 0, traceChecksum: null }, log);
}

/** Handouts no job row took up within this long are stranded: their manager died before binding them. */
export const HANDOUT_GRACE_MS = 20_000;

/**
 * The active manager's sweep of stranded handouts (Store.recordHandout): each is failed back to
 * GitLab, unless a job row holds it after all (then the handout is just forgotten).
 */
export async function failStrandedHandouts(d: FailBackDeps, log: Logger): Promise<number> {
  let n = 0;
  for (const h of await d.store.strandedHandouts(new Date(d.clock.now() - HANDOUT_GRACE_MS))) {
    if (await d.store.job(h.jobId)) {
      await d.store.forgetHandout(h.jobId);
      continue;
    }
    log.warn({ job: h.jobId, class: h.className, receivedAt: h.receivedAt.toISOString() }, 'a job handed out to a manager that died before binding it: failing it back to GitLab');
    d.metrics.jobsFailedBack.inc({ class: h.className, reason: 'stranded' });
    if (!h.token) {
      await d.store.forgetHandout(h.jobId);
      continue;
    }
    await failJobBack(d, h.className, { jobId: h.jobId, token: h.token, error: 'the manager that took it stopped before it could start it; retry the job' }, d.clock.now(), log, 'runner_system_failure');
    n++;
  }
  return n;
}
