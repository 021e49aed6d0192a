// Database <-> cloud: crash recovery at start-up (re-attaching running jobs) and a periodic sweep for orphans (cloud VMs
// of this shard the database does not know, or knows as deleted) and lost VMs.
import type { Logger } from 'pino';
import type { ShardConfig } from '../config/types.js';
import type { GitLabClient } from '../gitlab/client.js';
import { LABEL_SHARD, type Provider } from '../providers/provider.js';
import { buildBillingEvent } from './billing.js';
import type { Clock } from './clock.js';
import type { JobRow, VmRow } from '../db/schema.js';
import { parseJobPayload, type JobPayload } from '../gitlab/job-payload.js';
import type { GuestOs } from '../providers/provider.js';
import { machineType, type Executor } from './executor.js';
import type { Metrics } from './metrics.js';
import { vmRef } from './pool.js';
import type { Store } from './store.js';
import { LOST_GRACE_MS, lostRows, strays, stuckRows } from './sweep-plan.js';
import type { VmState } from './vm-states.js';

export interface ReconcilerDeps {
  config: ShardConfig;
  store: Store;
  providers: Map<string, Provider>;
  gitlab: GitLabClient;
  metrics: Metrics;
  log: Logger;
  clock: Clock;
  /** Least time in its state before a VM missing from a complete list is lost (default LOST_GRACE_MS). */
  lostGraceMs?: number;
  /** Re-attaches running jobs at start-up; without it they are failed as before. */
  executor?: Executor;
}

/**
 * What start-up recovery does with a job still `running` in the database (pure): re-attach when
 * it runs detached on a VM that is still the job's, else fail it as our fault.
 */
export function recoveryPlan(job: Pick<JobRow, 'guest_os' | 'payload_enc'>, vm: Pick<VmRow, 'state'> | undefined, canReattach: boolean): { action: 'reattach' } | { action: 'fail'; why: string } {
  if (!vm) return { action: 'fail', why: 'the job has no VM' };
  if (vm.state !== 'assigned' && vm.state !== 'running') return { action: 'fail', why: `its VM was ${vm.state} when the manager stopped` };
  // No attach data: the previous manager stopped before the job started on the VM.
  if (!job.payload_enc || !job.guest_os) return { action: 'fail', why: 'the manager stopped before the job started on its VM' };
  if (job.guest_os === 'windows') return { action: 'fail', why: 'Windows jobs run inside their SSH session, which ended with the manager' };
  if (!canReattach) return { action: 'fail', why: 'this manager does not re-attach jobs' };
  return { action: 'reattach' };
}

export class Reconciler {
  constructor(private readonly d: ReconcilerDeps) {}

  /**
   * Run before intake starts. Jobs that were running when the previous process stopped are
   * re-attached when they run detached on a live VM of theirs (their executor reports the real
   * outcome, or fails them if the VM is gone or stays unreachable); the others are failed as our
   * fault and left to the report outbox. VMs caught mid-creation are deleted (create is
   * idempotent by name, so is delete); warm VMs stay when the cloud still has them.
   */
  async recover(): Promise<{ jobsFailed: number; jobsReattached: number; vmsDeleted: number }> {
    const { store, log } = this.d;
    let jobsFailed = 0;
    let jobsReattached = 0;
    const keep = new Set<string>();
    for (const job of await store.runningJobs()) {
      const jobId = Number(job.id);
      const cls = this.d.config.classes[job.class];
      const vm = job.vm_id ? await store.vm(job.vm_id) : undefined;
      let plan = recoveryPlan(job, vm, !!this.d.executor && !!cls);
      let payload: JobPayload | null = null;
      if (plan.action === 'reattach') {
        const text = store.jobPayload(job);
        const parsed = text ? parseJobPayload(JSON.parse(text)) : null;
        if (parsed?.ok) payload = parsed.job;
        else plan = { action: 'fail', why: 'its saved payload is unreadable with the current secrets.key' };
      }
      if (plan.action === 'reattach' && payload && vm && cls) {
        keep.add(vm.id);
        this.d.executor!.reattach({
          job: payload, vm, cls,
          pickedAt: job.picked_at.getTime(),
          timeoutSeconds: job.timeout_seconds,
          queuedSeconds: job.queued_seconds,
          tracePrefix: job.trace_prefix ?? '',
          os: job.guest_os as GuestOs,
          startedAt: job.started_at ? job.started_at.getTime() : null,
        });
        jobsReattached++;
        this.d.metrics.jobsReattached.inc({ class: job.class, outcome: 'attached' });
        log.info({ job: jobId, vm: vm.id }, 'job was running when the manager stopped; re-attaching');
        continue;
      }
      const why = plan.action === 'fail' ? plan.why : 'unknown';
      if (await this.failJob(job, why)) jobsFailed++;
    }

    let vmsDeleted = 0;
    for (const vm of await store.liveVms()) {
      if (keep.has(vm.id)) continue;
      const state = vm.state as VmState;
      let why: string | null = null;
      if (state === 'requested' || state === 'creating') why = 'creation interrupted by a restart';
      else if (state === 'assigned' || state === 'running') why = 'job interrupted by a restart';
      else if ((state === 'ready' || state === 'booting') && !store.vmPrivateKey(vm)) why = 'private key unreadable with the current secrets.key';
      // Made before host keys were pinned (sql/006): never connected to, so of no use.
      else if ((state === 'ready' || state === 'booting' || state === 'stopped') && !vm.host_key_fingerprint) why = 'no pinned SSH host key';
      if (why && (await store.transition(vm.id, state, 'deleting', {}, why))) vmsDeleted++;
    }
    vmsDeleted += await this.sweep();
    return { jobsFailed, jobsReattached, vmsDeleted };
  }

  /** Close a job as our fault (runner_system_failure, not billable); the outbox reports it. */
  private async failJob(job: JobRow, why: string): Promise<boolean> {
    const jobId = Number(job.id);
    const cls = this.d.config.classes[job.class];
    const finishedAt = new Date(this.d.clock.now());
    const outcome = { result: 'failed' as const, exitCode: null, failureReason: 'runner_system_failure', finishedAt, traceBytes: 0, traceChecksum: null };
    const ids = { projectId: num(job.project_id), pipelineId: num(job.pipeline_id), namespaceId: num(job.namespace_id), rootNamespaceId: num(job.root_namespace_id) };
    const event = buildBillingEvent({
      shard: this.d.config.shard,
      jobId,
      ...ids,
      runnerClass: job.class,
      costFactor: cls?.costFactor ?? 0,
      provider: cls?.provider ?? 'unknown',
      machineType: cls ? machineType(cls) : null,
      startedAt: job.started_at ?? job.picked_at,
      finishedAt,
      outcome: 'failed',
      failureReason: 'runner_system_failure',
    });
    if (!(await this.d.store.closeJob(jobId, outcome, event))) return false;
    this.d.metrics.billingEvents.inc({ class: job.class });
    this.d.metrics.jobsTotal.inc({ class: job.class, result: 'system_failure' });
    this.d.metrics.jobsReattached.inc({ class: job.class, outcome: 'failed' });
    this.d.log.warn({ job: jobId, why }, 'job was running when the manager stopped and cannot be re-attached; failing it');
    // Tell GitLab why in the trace (best effort: the trace may already hold the job's output).
    const token = this.d.store.jobToken(job);
    if (token) {
      const held = await this.d.gitlab.patchTrace(jobId, token, Buffer.alloc(0), 0).catch(() => null);
      const at = held?.nextOffset ?? 0;
      const line = Buffer.from(`\nERROR: Job failed (system failure): ${why}\n`);
      await this.d.gitlab.patchTrace(jobId, token, line, at).catch(() => null);
    }
    return true;
  }

  private sweeping: Promise<number> | null = null;

  /** Resolves once the sweep in flight (if any) ended: a shutdown waits for it before closing the database. */
  async idle(): Promise<void> {
    await this.sweeping?.catch(() => {});
  }

  /**
   * One list per provider: delete cloud VMs of this shard the database does not know as live,
   * fail rows whose VM is known gone (so they are replaced), and fail rows stuck mid-creation.
   * A call while a sweep runs gets that sweep's promise: never two at once. Returns how many
   * orphans were deleted.
   */
  sweep(): Promise<number> {
    this.sweeping ??= this.sweepOnce().finally(() => {
      this.sweeping = null;
    });
    return this.sweeping;
  }

  private async sweepOnce(): Promise<number> {
    try {
      await this.failStuck();
    } catch (err) {
      this.d.log.warn({ err }, 'failing stuck VMs failed; the provider sweeps go on');
    }
    let orphans = 0;
    // Each provider on its own: one that fails (list or delete) never stops the others.
    for (const [name, provider] of this.d.providers) {
      try {
        orphans += await this.sweepProvider(name, provider);
      } catch (err) {
        this.d.log.warn({ err, provider: name }, 'sweep of provider failed; the others go on');
      }
    }
    return orphans;
  }

  /** Rows left in requested/creating past their class's boot timeout: failed, so the pool deletes them. */
  private async failStuck(): Promise<void> {
    const { store, config } = this.d;
    const bootTimeout = (c: string) => config.classes[c]?.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS;
    for (const r of stuckRows(await store.liveVms(), bootTimeout, this.d.clock.now())) {
      if (await store.transition(r.id, r.state as VmState, 'failed', { failure: `stuck in ${r.state} past the boot timeout` }, 'sweep: stuck')) {
        this.d.metrics.vmFailures.inc({ class: r.class, reason: 'stuck' });
        this.d.log.warn({ vm: r.id, class: r.class, state: r.state }, 'VM stuck mid-creation; failing it');
      }
    }
  }

  private async sweepProvider(name: string, provider: Provider): Promise<number> {
    const { store, log } = this.d;
    // Rows read before the list judge lost VMs (a VM that became live after it is not judged);
    // rows read after it judge orphans (a row is always written before its cloud create).
    const rows = await store.liveVms();
    const listing = await provider.list({ [LABEL_SHARD]: this.d.config.shard });
    if (listing.unreachable.length) log.warn({ provider: name, unreachable: listing.unreachable }, 'partial cloud list: VMs in scopes that did not answer count as unknown, not gone');
    const stray = strays(listing.vms, await store.liveVms(), name);
    let orphans = 0;
    if (stray.length) {
      log.warn({ provider: name, vms: stray.map((c) => c.name) }, 'deleting orphan VMs');
      try {
        await provider.delete(stray.map((c) => ({ vmId: c.vmId ?? c.name, name: c.name, cloudId: c.cloudId, zone: c.zone ?? null })));
        this.d.metrics.orphansDeleted.inc({ provider: name }, stray.length);
        orphans = stray.length;
      } catch (err) {
        log.warn({ err, provider: name }, 'deleting orphan VMs failed; the next sweep retries');
      }
    }
    // Lost: mark the VM failed only. A running job is its executor's to finish or fail.
    for (const r of lostRows(rows, listing, name, this.d.clock.now(), this.d.lostGraceMs ?? LOST_GRACE_MS)) {
      if (await store.transition(r.id, r.state as VmState, 'failed', { failure: 'VM vanished from the cloud' }, 'sweep: lost')) {
        this.d.metrics.vmFailures.inc({ class: r.class, reason: 'lost' });
        log.warn({ vm: r.id, class: r.class, state: r.state, provider: name }, 'VM vanished from the cloud; failing it');
      }
    }
    return orphans;
  }
}

/** The config default of `bootTimeout`, for rows of a class no longer configured. */
const DEFAULT_BOOT_TIMEOUT_MS = 10 * 60_000;

function num(v: string | null): number | null {
  return v === null ? null : Number(v);
}

export { vmRef };
