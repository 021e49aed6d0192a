// The report outbox: a finished job's final state goes to GitLab until GitLab acknowledges it,
// while the manager runs (not only at the next start-up). The closing transaction leaves the
// job `finished` with `reported_at` null; the executor hands it here at once, and a loop retries
// every unacknowledged one with jittered backoff. GitLab's answers that end the conversation
// (200, 403 "not running", 404, 412 checksum mismatch) mark it reported; 202 ("still taking the
// trace") and failures are retried.
import type { Logger } from 'pino';
import type { JobRow } from '../db/schema.js';
import type { GitLabClient } from '../gitlab/client.js';
import type { Metrics } from './metrics.js';
import type { JobOutcome, Store } from './store.js';

export type FinalReport = Pick<JobOutcome, 'result' | 'exitCode' | 'failureReason' | 'traceBytes' | 'traceChecksum'>;

export interface JobReportsDeps {
  store: Store;
  gitlab: GitLabClient;
  metrics: Metrics;
  log: Logger;
  /** How often the loop looks for unacknowledged jobs. Default 1 s. */
  pollMs?: number;
  /** Backoff base after a failed report (doubles per failure, jittered). Default 1 s. */
  retryBaseMs?: number;
  /** Backoff cap. Default 60 s. */
  retryMaxMs?: number;
  now?: () => number;
}

/** When to try a job's report again after `failures` failed attempts (pure). */
export function reportBackoffMs(failures: number, baseMs: number, maxMs: number, random = Math.random()): number {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(0, failures - 1), 20));
  return Math.round(exp * (0.5 + random / 2));
}

export class JobReports {
  private readonly inFlight = new Set<number>();
  /** Per job: failed attempts so far and when to try next (ms). Lost on restart: all go at once then. */
  private readonly due = new Map<number, { failures: number; at: number }>();
  private readonly now: () => number;
  private stopped = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly d: JobReportsDeps) {
    this.now = d.now ?? Date.now;
  }

  start(): void {
    this.stopped = false;
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loop;
    this.loop = null;
  }

  /** Report a job just closed; true once GitLab acknowledged. Else the loop keeps trying. */
  async report(jobId: number, token: string, o: FinalReport): Promise<boolean> {
    return this.attempt(jobId, token, o);
  }

  private async attempt(jobId: number, token: string, o: FinalReport): Promise<boolean> {
    if (this.inFlight.has(jobId)) return false;
    this.inFlight.add(jobId);
    const log = this.d.log.child({ job: jobId });
    try {
      const res = await this.d.gitlab.updateJob(jobId, token, {
        state: o.result === 'success' ? 'success' : 'failed',
        ...(o.exitCode !== null ? { exitCode: o.exitCode } : {}),
        ...(o.failureReason ? { failureReason: o.failureReason } : {}),
        ...(o.traceChecksum ? { checksum: o.traceChecksum, bytesize: o.traceBytes } : {}),
      });
      if (res.result === 'accepted') {
        // GitLab is still taking the trace: ask again at its interval, not as a failure.
        this.due.set(jobId, { failures: this.due.get(jobId)?.failures ?? 0, at: this.now() + (res.updateIntervalMs ?? 1000) });
        this.poke();
        return false;
      }
      if (res.result === 'traceMismatch') log.warn('GitLab reports a trace checksum mismatch');
      await this.d.store.markReported(jobId);
      this.due.delete(jobId);
      return true;
    } catch (err) {
      const failures = (this.due.get(jobId)?.failures ?? 0) + 1;
      const wait = reportBackoffMs(failures, this.d.retryBaseMs ?? 1000, this.d.retryMaxMs ?? 60_000);
      this.due.set(jobId, { failures, at: this.now() + wait });
      log.warn({ err: (err as Error).message, attempt: failures, retryInMs: wait }, 'final job state not delivered to GitLab; will retry');
      this.poke();
      return false;
    } finally {
      this.inFlight.delete(jobId);
    }
  }

  private poke(): void {
    this.wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(this.timer);
        this.wake = null;
        resolve();
      };
      this.wake = done;
      this.timer = setTimeout(done, ms);
      if (this.stopped) done();
    });
  }

  private async run(): Promise<void> {
    const pollMs = this.d.pollMs ?? 1000;
    while (!this.stopped) {
      try {
        const rows = await this.d.store.unreportedJobs(200);
        this.d.metrics.jobReportsPending.set(rows.length < 200 ? rows.length : await this.d.store.countUnreported());
        const now = this.now();
        const ready = rows.filter((r) => !this.inFlight.has(Number(r.id)) && (this.due.get(Number(r.id))?.at ?? 0) <= now);
        // A few at a time: a long backlog after an outage must not flood GitLab.
        for (let i = 0; i < ready.length && !this.stopped; i += 8) await Promise.all(ready.slice(i, i + 8).map((r) => this.fromRow(r)));
        const next = Math.min(...[...this.due.values()].map((x) => x.at), now + pollMs);
        await this.sleep(Math.max(50, Math.min(pollMs, next - this.now())));
      } catch (err) {
        this.d.log.warn({ err }, 'report outbox pass failed; retrying');
        await this.sleep(pollMs);
      }
    }
  }

  private async fromRow(r: JobRow): Promise<void> {
    const jobId = Number(r.id);
    const token = this.d.store.jobToken(r);
    if (!token) {
      // Written under another secrets.key: nothing can report it; it stays counted as pending.
      if (!this.due.has(jobId)) this.d.log.error({ job: jobId }, 'cannot report a finished job: its token is unreadable with the current secrets.key');
      this.due.set(jobId, { failures: 99, at: this.now() + 3600_000 });
      return;
    }
    await this.attempt(jobId, token, {
      result: (r.result ?? 'failed') as FinalReport['result'],
      exitCode: r.exit_code,
      failureReason: r.failure_reason,
      traceBytes: Number(r.trace_bytes),
      traceChecksum: r.trace_checksum,
    });
  }
}
