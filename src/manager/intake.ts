// The job request loop of one class. Preemptive: ask GitLab for a job only while a warm VM is
// reserved for it, bind the job to that VM in one transaction, hand it to the executor. Cold
// start (the intake mode's judgement when the class holds nothing warm or coming): ask, then
// make a VM for the job.
import type { Logger } from 'pino';
import type { ClassConfig, ShardConfig } from '../config/types.js';
import type { GitLabClient } from '../gitlab/client.js';
import { jobTimeoutSeconds, parseJobPayload } from '../gitlab/job-payload.js';
import { buildBillingEvent } from './billing.js';
import type { Clock } from './clock.js';
import { jobIdentity, machineType, reportFinal, type Executor } from './executor.js';
import type { Metrics } from './metrics.js';
import { intakeMode } from './autoscaler.js';
import { newVm, type Pool } from './pool.js';
import type { DemandModel } from './predictive.js';
import { InvalidTransitionError, type Store } from './store.js';

export interface IntakeDeps {
  config: ShardConfig;
  store: Store;
  pool: Pool;
  executor: Executor;
  gitlab: GitLabClient;
  metrics: Metrics;
  log: Logger;
  clock: Clock;
  /** Predictive classes' demand models: fed each job's queue entry and GitLab's queue hint. */
  demand?: Map<string, DemandModel>;
}

/** After a 403 the runner token is wrong or revoked: ask again rarely. */
const FORBIDDEN_BACKOFF_MS = 60_000;

export class Intake {
  private readonly abort = new AbortController();
  private loops: Promise<void>[] = [];

  constructor(private readonly d: IntakeDeps) {}

  start(): void {
    this.loops = Object.values(this.d.config.classes).map((cls) => this.loop(cls));
  }

  /** Stop asking for jobs; returns when every loop has ended. */
  async stop(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled(this.loops);
  }

  private async loop(cls: ClassConfig): Promise<void> {
    const { signal } = this.abort;
    const log = this.d.log.child({ class: cls.name });
    let errors = 0;
    while (!signal.aborted) {
      const vm = this.d.pool.reserve(cls.name);
      if (!vm) {
        // Only once the pool has read its VMs: a restarted manager's warm VMs come first.
        const counts = this.d.pool.classCounts(cls.name);
        if (counts && intakeMode(cls.pool.intake, counts) === 'coldStart' && this.d.pool.hasRoom(cls)) {
          errors = await this.coldStart(cls, log, errors);
          continue;
        }
        await this.d.pool.waitForChange(this.d.config.gitlab.pollIntervalMs, signal);
        continue;
      }
      let handedOver = false;
      try {
        const res = await this.d.gitlab.requestJob(cls.runnerToken, signal);
        // GitLab's time_in_queue_seconds ends when it answers: our share starts here.
        const pickedAt = this.d.clock.now();
        this.d.metrics.jobRequests.inc({ class: cls.name, outcome: res.kind });
        errors = 0;
        if (res.kind === 'none') {
          this.d.pool.release(vm.id);
          await this.d.clock.sleep(this.d.config.gitlab.pollIntervalMs, signal);
          continue;
        }
        if (res.kind === 'forbidden') {
          log.error('GitLab refused the runner token (403); check classes.%s.runnerToken', cls.name);
          this.d.pool.release(vm.id);
          await this.d.clock.sleep(FORBIDDEN_BACKOFF_MS, signal);
          continue;
        }
        handedOver = await this.accept(cls, vm.id, res.raw, pickedAt, log);
      } catch (err) {
        if (signal.aborted) break;
        errors++;
        this.d.metrics.jobRequests.inc({ class: cls.name, outcome: 'error' });
        log.warn({ err: (err as Error).message }, 'job request failed');
        await this.d.clock.sleep(Math.min(this.d.config.gitlab.pollIntervalMs * 2 ** Math.min(errors, 5), 60_000), signal);
      } finally {
        if (!handedOver) this.d.pool.release(vm.id);
      }
    }
  }

  /**
   * Cold start (nothing warm or coming): ask GitLab for a job, then make a VM for it. The job and
   * its VM row commit together first; the executor streams "creating a VM" to the job's log and
   * runs it once the VM is ready, or fails it as our fault if the VM never gets there.
   */
  private async coldStart(cls: ClassConfig, log: Logger, errors: number): Promise<number> {
    const { signal } = this.abort;
    try {
      const res = await this.d.gitlab.requestJob(cls.runnerToken, signal);
      const pickedAt = this.d.clock.now();
      this.d.metrics.jobRequests.inc({ class: cls.name, outcome: res.kind });
      if (res.kind === 'none') {
        await this.d.pool.waitForChange(this.d.config.gitlab.pollIntervalMs, signal);
        return 0;
      }
      if (res.kind === 'forbidden') {
        log.error('GitLab refused the runner token (403); check classes.%s.runnerToken', cls.name);
        await this.d.clock.sleep(FORBIDDEN_BACKOFF_MS, signal);
        return 0;
      }
      const parsed = parseJobPayload(res.raw);
      if (!parsed.ok) {
        await this.reject(cls, { ...parsed, error: `malformed job payload: ${parsed.error}` }, pickedAt, log);
        return 0;
      }
      const job = parsed.job;
      const timeoutSeconds = jobTimeoutSeconds(job, cls.jobTimeoutMs / 1000);
      const queuedSeconds = job.job_info?.time_in_queue_seconds ?? null;
      this.observe(cls, job, pickedAt, queuedSeconds);
      const vm = newVm(this.d.config.shard, cls);
      const bound = await this.d.store.bindJobToNewVm({ jobId: job.id, className: cls.name, token: job.token, ...jobIdentity(job), queuedSeconds, timeoutSeconds, pickedAt: new Date(pickedAt), vm });
      if (!bound) {
        log.warn({ job: job.id }, 'GitLab handed out a job this shard already holds; ignoring');
        return 0;
      }
      this.d.pool.launchForJob(cls, vm);
      const row = (await this.d.store.vm(vm.id))!;
      log.info({ job: job.id, vm: vm.id, queuedSeconds }, 'job picked up (cold start)');
      this.d.executor.start({ job, vm: row, cls, pickedAt, timeoutSeconds, queuedSeconds, awaitVm: (s) => this.awaitVm(vm.id, s) });
      return 0;
    } catch (err) {
      if (signal.aborted) return errors;
      this.d.metrics.jobRequests.inc({ class: cls.name, outcome: 'error' });
      log.warn({ err: (err as Error).message }, 'job request failed');
      await this.d.clock.sleep(Math.min(this.d.config.gitlab.pollIntervalMs * 2 ** Math.min(errors + 1, 5), 60_000), signal);
      return errors + 1;
    }
  }

  /** Wait for a cold-start VM to be ready and take it for its job (the pool fails it on boot timeout). */
  private async awaitVm(vmId: string, signal: AbortSignal): Promise<import('../db/schema.js').VmRow> {
    for (;;) {
      if (signal.aborted) throw new Error('the job ended before its VM was ready');
      const row = await this.d.store.vm(vmId);
      if (!row || row.state === 'failed' || row.state === 'deleting' || row.state === 'deleted') throw new Error(`the VM made for the job failed: ${row?.failure ?? row?.state ?? 'gone'}`);
      if (row.state === 'ready' && (await this.d.store.transition(vmId, 'ready', 'assigned', {}, `job ${row.job_id} (cold start)`))) {
        return (await this.d.store.vm(vmId))!;
      }
      await this.d.pool.waitForChange(1000, signal);
    }
  }

  private observe(cls: ClassConfig, job: { job_info?: { queue_size?: number | undefined } | undefined }, pickedAt: number, queuedSeconds: number | null): void {
    const model = this.d.demand?.get(cls.name);
    if (!model) return;
    model.observeArrival(pickedAt - (queuedSeconds ?? 0) * 1000);
    if (job.job_info?.queue_size !== undefined) model.observeQueue(job.job_info.queue_size);
  }

  /** Returns true when the job was bound to the VM and handed to the executor. */
  private async accept(cls: ClassConfig, vmId: string, raw: unknown, pickedAt: number, log: Logger): Promise<boolean> {
    const parsed = parseJobPayload(raw);
    if (!parsed.ok) {
      await this.reject(cls, { ...parsed, error: `malformed job payload: ${parsed.error}` }, pickedAt, log);
      return false;
    }
    const job = parsed.job;
    const timeoutSeconds = jobTimeoutSeconds(job, cls.jobTimeoutMs / 1000);
    const queuedSeconds = job.job_info?.time_in_queue_seconds ?? null;
    this.observe(cls, job, pickedAt, queuedSeconds);
    const ids = jobIdentity(job);
    const bind = (id: string) =>
      this.d.store.bindJob({ vmId: id, jobId: job.id, className: cls.name, token: job.token, ...ids, queuedSeconds, timeoutSeconds, pickedAt: new Date(pickedAt) });
    let bound: boolean;
    try {
      bound = await bind(vmId);
    } catch (err) {
      if (!(err instanceof InvalidTransitionError)) throw err;
      // The reserved VM was lost between reservation and binding: take another warm one.
      const other = this.d.pool.reserve(cls.name);
      if (!other) {
        await this.reject(cls, { error: 'no warm VM left for the job (its VM was lost)', jobId: job.id, token: job.token }, pickedAt, log, 'runner_system_failure');
        return false;
      }
      this.d.pool.release(vmId);
      vmId = other.id;
      bound = await bind(vmId).catch(() => false);
      if (!bound) this.d.pool.release(vmId);
    }
    if (!bound) {
      log.warn({ job: job.id }, 'GitLab handed out a job this shard already holds; ignoring');
      return false;
    }
    const vm = await this.d.store.vm(vmId);
    log.info({ job: job.id, vm: vmId, queuedSeconds }, 'job picked up');
    this.d.executor.start({ job, vm: vm!, cls, pickedAt, timeoutSeconds, queuedSeconds });
    return true;
  }

  /** A malformed payload: fail the job back to GitLab with the reason, never crash. */
  private async reject(cls: ClassConfig, parsed: { error: string; jobId?: number; token?: string }, pickedAt: number, log: Logger, failureReason = 'runner_unsupported'): Promise<void> {
    log.error({ job: parsed.jobId, error: parsed.error }, 'job refused');
    if (parsed.jobId === undefined || parsed.token === undefined) return; // nothing to answer to
    const at = new Date(pickedAt);
    const event = buildBillingEvent({
      shard: this.d.config.shard,
      jobId: parsed.jobId,
      projectId: null,
      pipelineId: null,
      namespaceId: null,
      rootNamespaceId: null,
      runnerClass: cls.name,
      costFactor: cls.costFactor,
      provider: cls.provider,
      machineType: machineType(cls),
      startedAt: at,
      finishedAt: at,
      outcome: 'failed',
      failureReason,
    });
    await this.d.store.recordRejectedJob({ jobId: parsed.jobId, className: cls.name, token: parsed.token, pickedAt: at, failureReason, event });
    this.d.metrics.jobsTotal.inc({ class: cls.name, result: 'rejected' });
    const message = Buffer.from(`ERROR: runner-fleet could not run this job: ${parsed.error}\n`);
    const sent = await this.d.gitlab.patchTrace(parsed.jobId, parsed.token, message, 0).catch(() => null);
    await reportFinal(this.d.gitlab, this.d.store, this.d.clock, parsed.jobId, parsed.token, {
      result: 'failed',
      exitCode: null,
      failureReason,
      traceBytes: sent?.ok ? message.length : 0,
      traceChecksum: null,
    }, log);
  }
}
