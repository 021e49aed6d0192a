// The job request loops of one class. Preemptive: ask GitLab for a job only while a warm VM is
// reserved for it, bind the job to that VM in one transaction, hand it to the executor. Cold
// start (the intake mode's judgement when the class holds nothing warm or coming): ask, then
// make a VM for the job. A class runs requestConcurrency such loops ("slots"), each with its own
// reservation; extra slots ask only while jobs are coming (see request-gate.ts).
import type { Logger } from 'pino';
import type { ClassConfig, ShardConfig } from '../config/types.js';
import type { GitLabClient } from '../gitlab/client.js';
import { jobTimeoutSeconds, parseJobPayload, type ParsedJob } from '../gitlab/job-payload.js';
import { maskPlan } from '../gitlab/masked-values.js';
import { DB_RETRY, failJobBack } from './fail-back.js';
import type { Clock } from './clock.js';
import { guestOs, jobIdentity, type Executor } from './executor.js';
import type { Metrics } from './metrics.js';
import { intakeMode } from './autoscaler.js';
import { newVm, type Pool } from './pool.js';
import { RequestGate } from './request-gate.js';
import type { DemandModel } from './predictive.js';
import { InvalidTransitionError, type BindJobInput, type Store } from './store.js';
import pRetry from 'p-retry';
import { setMaxListeners } from 'node:events';
import { FencedError, isTransientDbError } from '../db/fence.js';

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
  /**
   * Whether this manager may take a job now: false once its shard lease may have run out (a
   * standby may be taking over), so no job is handed to a manager that cannot record it.
   */
  canRequest?: () => boolean;
}


/** After a 403 the runner token is wrong or revoked: ask again rarely. */
const FORBIDDEN_BACKOFF_MS = 60_000;

export class Intake {
  private readonly abort = new AbortController();
  private loops: Promise<void>[] = [];

  constructor(private readonly d: IntakeDeps) {}

  start(): void {
    // Every slot listens on the one stop signal (its request, its waits): not a leak past 10.
    const slots = Object.values(this.d.config.classes).reduce((n, c) => n + (c.requestConcurrency ?? 1), 0);
    setMaxListeners(10 + 4 * slots, this.abort.signal);
    this.loops = Object.values(this.d.config.classes).flatMap((cls) => {
      const gate = new RequestGate();
      return Array.from({ length: cls.requestConcurrency ?? 1 }, (_, slot) => this.loop(cls, slot, gate));
    });
  }

  /** Stop asking for jobs; returns when every loop has ended. */
  async stop(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled(this.loops);
  }

  /**
   * One request slot. Slot 0 polls at gitlab.pollInterval; the others wait on the gate while
   * GitLab has nothing, so N slots do not multiply the request rate of an idle GitLab.
   */
  private async loop(cls: ClassConfig, slot: number, gate: RequestGate): Promise<void> {
    const { signal } = this.abort;
    const log = this.d.log.child(slot === 0 ? { class: cls.name } : { class: cls.name, slot });
    const extra = slot > 0;
    let errors = 0;
    while (!signal.aborted) {
      if (this.d.canRequest && !this.d.canRequest()) {
        await this.d.clock.sleep(Math.min(this.d.config.gitlab.pollIntervalMs, 1000), signal).catch(() => {});
        continue;
      }
      if (extra && !gate.isOpen) {
        await gate.wait(signal);
        continue;
      }
      const vm = this.d.pool.reserve(cls.name);
      if (!vm) {
        // Only once the pool has read its VMs: a restarted manager's warm VMs come first. Room is
        // claimed before GitLab is asked, so a burst of cold starts cannot pass max or capacity.
        const counts = this.d.pool.classCounts(cls.name);
        const claim = counts && intakeMode(cls.pool.intake, counts) === 'coldStart' ? this.d.pool.claimRoom(cls) : null;
        if (claim) {
          errors = await this.coldStart(cls, claim, log, errors, slot, gate);
          continue;
        }
        await this.d.pool.waitForChange(this.d.config.gitlab.pollIntervalMs, signal);
        continue;
      }
      let handedOver = false;
      let res: Awaited<ReturnType<GitLabClient['requestJob']>>;
      let pickedAt: number;
      try {
        res = await this.request(cls);
        // GitLab's time_in_queue_seconds ends when it answers: our share starts here.
        pickedAt = this.d.clock.now();
      } catch (err) {
        this.d.pool.release(vm.id);
        if (signal.aborted) break;
        gate.close();
        this.d.metrics.jobRequests.inc({ class: cls.name, outcome: 'error' });
        log.warn({ err: (err as Error).message }, 'job request failed');
        if (extra) continue; // slot 0 backs off; this one parks until jobs come again
        errors++;
        await this.d.clock.sleep(Math.min(this.d.config.gitlab.pollIntervalMs * 2 ** Math.min(errors, 5), 60_000), signal).catch(() => {});
        continue;
      }
      this.d.metrics.jobRequests.inc({ class: cls.name, outcome: res.kind });
      errors = 0;
      if (res.kind !== 'job') {
        this.d.pool.release(vm.id);
        gate.close();
        if (extra) continue;
        if (res.kind === 'forbidden') {
          log.error('GitLab refused the runner token (403); check classes.%s.runnerToken', cls.name);
          await this.d.clock.sleep(FORBIDDEN_BACKOFF_MS, signal).catch(() => {});
        } else {
          await this.d.clock.sleep(this.d.config.gitlab.pollIntervalMs, signal).catch(() => {});
        }
        continue;
      }
      // GitLab has handed the job to us: from here it is bound and run, or failed back, never dropped.
      gate.open();
      const parsed = parseJobPayload(res.raw);
      await this.recordHandout(cls, parsed, pickedAt, log);
      try {
        handedOver = await this.accept(cls, vm.id, parsed, pickedAt, log);
      } catch (err) {
        await this.failBack(cls, parsed, pickedAt, log, err);
      } finally {
        if (!handedOver) this.d.pool.release(vm.id);
      }
    }
  }

  /**
   * Cold start (nothing warm or coming), in room claimed beforehand: ask GitLab for a job, then
   * make a VM for it. The job and its VM row commit together first; the executor streams
   * "creating a VM" to the job's log and runs it once the VM is ready, or fails it as our fault
   * if the VM never gets there.
   */
  private async coldStart(cls: ClassConfig, claim: string, log: Logger, errors: number, slot: number, gate: RequestGate): Promise<number> {
    const { signal } = this.abort;
    let launched = false;
    try {
      let res: Awaited<ReturnType<GitLabClient['requestJob']>>;
      try {
        res = await this.request(cls);
      } catch (err) {
        if (signal.aborted) return errors;
        gate.close();
        this.d.metrics.jobRequests.inc({ class: cls.name, outcome: 'error' });
        log.warn({ err: (err as Error).message }, 'job request failed');
        if (slot > 0) return errors;
        await this.d.clock.sleep(Math.min(this.d.config.gitlab.pollIntervalMs * 2 ** Math.min(errors + 1, 5), 60_000), signal).catch(() => {});
        return errors + 1;
      }
      const pickedAt = this.d.clock.now();
      this.d.metrics.jobRequests.inc({ class: cls.name, outcome: res.kind });
      if (res.kind !== 'job') gate.close();
      if (res.kind === 'none') {
        this.d.pool.releaseRoom(cls.name, claim);
        if (slot === 0) await this.d.pool.waitForChange(this.d.config.gitlab.pollIntervalMs, signal);
        return 0;
      }
      if (res.kind === 'forbidden') {
        this.d.pool.releaseRoom(cls.name, claim);
        if (slot > 0) return 0;
        log.error('GitLab refused the runner token (403); check classes.%s.runnerToken', cls.name);
        await this.d.clock.sleep(FORBIDDEN_BACKOFF_MS, signal).catch(() => {});
        return 0;
      }
      gate.open();
      const parsed = parseJobPayload(res.raw);
      await this.recordHandout(cls, parsed, pickedAt, log);
      try {
        launched = await this.acceptCold(cls, claim, parsed, pickedAt, log);
      } catch (err) {
        await this.failBack(cls, parsed, pickedAt, log, err);
      }
      return 0;
    } finally {
      if (!launched) this.d.pool.releaseRoom(cls.name, claim);
    }
  }

  /** One job request, counted in the in-flight gauge while it runs. */
  private async request(cls: ClassConfig): Promise<Awaited<ReturnType<GitLabClient['requestJob']>>> {
    const gauge = this.d.metrics.intakeRequestsInFlight;
    gauge.inc({ class: cls.name });
    try {
      return await this.d.gitlab.requestJob(cls.runnerToken, this.abort.signal, { executor: cls.executor ?? 'shell', windows: guestOs(undefined, cls) === 'windows', cache: !!this.d.config.cache });
    } finally {
      gauge.dec({ class: cls.name });
    }
  }

  /** A well-formed job's bind fields (its arrival observed), or null once a malformed one is refused. */
  private async admit(cls: ClassConfig, parsed: ParsedJob, pickedAt: number, log: Logger) {
    if (!parsed.ok) {
      await this.reject(cls, { ...parsed, error: `malformed job payload: ${parsed.error}` }, pickedAt, log);
      return null;
    }
    const job = parsed.job;
    // Values that cannot all be masked (over the bounds): refused before it takes a VM, never run half-masked.
    const masking = maskPlan(job);
    if (!masking.ok) {
      await this.reject(cls, { error: masking.error, jobId: job.id, token: job.token }, pickedAt, log);
      return null;
    }
    const timeoutSeconds = jobTimeoutSeconds(job, cls.jobTimeoutMs / 1000);
    const queuedSeconds = job.job_info?.time_in_queue_seconds ?? null;
    this.observe(cls, job, pickedAt, queuedSeconds);
    const bind: Omit<BindJobInput, 'vmId'> = { jobId: job.id, className: cls.name, token: job.token, ...jobIdentity(job), queuedSeconds, timeoutSeconds, pickedAt: new Date(pickedAt) };
    return { job, timeoutSeconds, queuedSeconds, bind };
  }

  private async acceptCold(cls: ClassConfig, claim: string, parsed: ParsedJob, pickedAt: number, log: Logger): Promise<boolean> {
    const admitted = await this.admit(cls, parsed, pickedAt, log);
    if (!admitted) return false;
    const { job, timeoutSeconds, queuedSeconds, bind } = admitted;
    const vm = newVm(this.d.config.shard, cls);
    const outcome = await this.bindWithRetry(job.id, vm.id, log, () => this.d.store.bindJobToNewVm({ ...bind, vm }));
    if (outcome === 'duplicate') {
      log.warn({ job: job.id }, 'GitLab handed out a job this shard already holds; its executor runs it');
      return false;
    }
    this.d.pool.launchForJob(cls, vm, claim);
    const row = (await this.d.store.vm(vm.id))!;
    log.info({ job: job.id, vm: vm.id, queuedSeconds }, 'job picked up (cold start)');
    this.d.executor.start({ job, vm: row, cls, pickedAt, timeoutSeconds, queuedSeconds, awaitVm: (s) => this.awaitVm(vm.id, s) });
    return true;
  }

  /**
   * Commit a bind, retrying what a retry can cure (deadlock, lost connection). A retry that finds
   * the job already bound to this very VM means an earlier attempt committed and only its answer
   * was lost: that is success. Anything else holding the job is a duplicate hand-out.
   */
  private async bindWithRetry(jobId: number, vmId: string, log: Logger, bind: () => Promise<boolean>): Promise<'bound' | 'duplicate'> {
    let tried = false;
    return pRetry(
      async () => {
        const first = !tried;
        tried = true;
        if (await bind()) return 'bound' as const;
        if (!first) {
          const row = await this.d.store.job(jobId);
          if (row?.vm_id === vmId && row.state === 'running') return 'bound' as const;
        }
        return 'duplicate' as const;
      },
      {
        ...DB_RETRY,
        shouldRetry: ({ error }) => DB_RETRY.shouldRetry({ error }) && !this.abort.signal.aborted,
        onFailedAttempt: ({ error, attemptNumber }) => log.warn({ job: jobId, attempt: attemptNumber, err: error.message }, 'binding the job failed'),
      },
    );
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
  private async accept(cls: ClassConfig, vmId: string, parsed: ParsedJob, pickedAt: number, log: Logger): Promise<boolean> {
    const admitted = await this.admit(cls, parsed, pickedAt, log);
    if (!admitted) return false;
    const { job, timeoutSeconds, queuedSeconds } = admitted;
    const bind = (id: string) => this.bindWithRetry(job.id, id, log, () => this.d.store.bindJob({ ...admitted.bind, vmId: id }));
    let outcome: 'bound' | 'duplicate';
    try {
      outcome = await bind(vmId);
    } catch (err) {
      if (!(err instanceof InvalidTransitionError)) throw err;
      // The reserved VM was lost between reservation and binding: take another warm one.
      const other = this.d.pool.reserve(cls.name);
      if (!other) throw new Error('no warm VM left for the job (its VM was lost)');
      this.d.pool.release(vmId);
      vmId = other.id;
      try {
        outcome = await bind(vmId);
      } catch (err2) {
        this.d.pool.release(vmId);
        throw err2;
      }
      if (outcome !== 'bound') this.d.pool.release(vmId);
    }
    if (outcome === 'duplicate') {
      log.warn({ job: job.id }, 'GitLab handed out a job this shard already holds; its executor runs it');
      return false;
    }
    const vm = await this.d.store.vm(vmId);
    log.info({ job: job.id, vm: vmId, queuedSeconds }, 'job picked up');
    this.d.executor.start({ job, vm: vm!, cls, pickedAt, timeoutSeconds, queuedSeconds });
    return true;
  }

  /**
   * A job GitLab handed to us that we could not bind (the database refused, this manager lost the
   * shard): fail it back to GitLab at once with a trace line saying why, so it does not wait for
   * GitLab's stuck-job timeout; the user can retry it.
   */
  private async failBack(cls: ClassConfig, parsed: ParsedJob, pickedAt: number, log: Logger, err: unknown): Promise<void> {
    const jobId = parsed.ok ? parsed.job.id : parsed.jobId;
    const token = parsed.ok ? parsed.job.token : parsed.token;
    const reason = err instanceof FencedError ? 'this manager lost the shard to another one' : ((err as Error)?.message ?? String(err));
    this.d.metrics.jobsFailedBack.inc({ class: cls.name, reason: err instanceof FencedError ? 'fenced' : isTransientDbError(err) ? 'database' : 'error' });
    log.error({ job: jobId, err: reason }, 'could not take the job GitLab handed out: failing it back');
    await this.reject(cls, { error: `the job could not be recorded: ${reason}`, ...(jobId !== undefined ? { jobId } : {}), ...(token !== undefined ? { token } : {}) }, pickedAt, log, 'runner_system_failure');
  }

  /** A malformed payload (or a job we could not take): fail it back to GitLab with the reason, never crash. */
  private async reject(cls: ClassConfig, parsed: { error: string; jobId?: number; token?: string }, pickedAt: number, log: Logger, failureReason = 'runner_unsupported'): Promise<void> {
    log.error({ job: parsed.jobId, error: parsed.error }, 'job refused');
    if (parsed.jobId === undefined || parsed.token === undefined) return; // nothing to answer to
    await failJobBack(this.d, cls.name, { jobId: parsed.jobId, token: parsed.token, error: parsed.error }, pickedAt, log, failureReason);
  }

  /** GitLab handed us a job: record it before anything else (see job_handouts), retried, never blocking the job. */
  private async recordHandout(cls: ClassConfig, parsed: ParsedJob, pickedAt: number, log: Logger): Promise<void> {
    const jobId = parsed.ok ? parsed.job.id : parsed.jobId;
    const token = parsed.ok ? parsed.job.token : parsed.token;
    if (jobId === undefined || token === undefined) return;
    await pRetry(() => this.d.store.recordHandout(jobId, cls.name, token, new Date(pickedAt)), {
      retries: 2, minTimeout: 50, maxTimeout: 500, shouldRetry: ({ error }) => isTransientDbError(error),
    }).catch((err) => log.warn({ job: jobId, err: (err as Error).message }, 'could not record the handout'));
  }
}
