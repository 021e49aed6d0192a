// Database <-> cloud: crash recovery at start-up and a periodic sweep for orphans (cloud VMs
// of this shard the database does not know, or knows as deleted) and lost VMs.
import type { Logger } from 'pino';
import type { ShardConfig } from '../config/types.js';
import type { GitLabClient } from '../gitlab/client.js';
import { LABEL_SHARD, type CloudVm, type Provider } from '../providers/provider.js';
import { buildBillingEvent } from './billing.js';
import type { Clock } from './clock.js';
import { machineType, reportFinal } from './executor.js';
import type { Metrics } from './metrics.js';
import { vmRef } from './pool.js';
import type { Store } from './store.js';
import type { VmState } from './vm-states.js';

export interface ReconcilerDeps {
  config: ShardConfig;
  store: Store;
  providers: Map<string, Provider>;
  gitlab: GitLabClient;
  metrics: Metrics;
  log: Logger;
  clock: Clock;
}

export class Reconciler {
  constructor(private readonly d: ReconcilerDeps) {}

  /**
   * Run before intake starts. Jobs that were running when the previous process died are failed
   * (their VM may hold half-run state) and reported; VMs caught mid-creation are deleted (create
   * is idempotent by name, so is delete); warm VMs stay when the cloud still has them.
   */
  async recover(): Promise<{ jobsFailed: number; jobsReported: number; vmsDeleted: number }> {
    const { store, log } = this.d;
    let jobsFailed = 0;
    let jobsReported = 0;
    for (const job of await store.openJobs()) {
      const jobId = Number(job.id);
      const token = store.tryDecrypt(job.token_enc);
      if (job.state === 'running') {
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
        if (await store.closeJob(jobId, outcome, event)) {
          jobsFailed++;
          this.d.metrics.billingEvents.inc({ class: job.class });
          this.d.metrics.jobsTotal.inc({ class: job.class, result: 'system_failure' });
          log.warn({ job: jobId }, 'job was running when the manager stopped; failing it');
        }
        if (token) {
          await reportFinal(this.d.gitlab, store, this.d.clock, jobId, token, outcome, log);
          jobsReported++;
        }
      } else if (token) {
        const ok = await reportFinal(this.d.gitlab, store, this.d.clock, jobId, token, {
          result: (job.result ?? 'failed') as 'success' | 'failed' | 'canceled',
          exitCode: job.exit_code,
          failureReason: job.failure_reason,
          traceBytes: Number(job.trace_bytes),
          traceChecksum: job.trace_checksum,
        }, log);
        if (ok) jobsReported++;
      }
    }

    let vmsDeleted = 0;
    for (const vm of await store.liveVms()) {
      const state = vm.state as VmState;
      let why: string | null = null;
      if (state === 'requested' || state === 'creating') why = 'creation interrupted by a restart';
      else if (state === 'assigned' || state === 'running') why = 'job interrupted by a restart';
      else if ((state === 'ready' || state === 'booting') && !store.tryDecrypt(vm.private_key_enc)) why = 'private key unreadable with the current secrets.key';
      if (why && (await store.transition(vm.id, state, 'deleting', {}, why))) vmsDeleted++;
    }
    vmsDeleted += await this.sweep();
    return { jobsFailed, jobsReported, vmsDeleted };
  }

  /**
   * One list per provider: delete cloud VMs the database does not know as live, and mark
   * warm/booting VMs the cloud no longer has as failed (so they are replaced).
   * Returns how many orphans were deleted.
   */
  async sweep(): Promise<number> {
    const { store, log } = this.d;
    let orphans = 0;
    for (const [name, provider] of this.d.providers) {
      // Rows read before the list judge lost VMs (a VM that became live after it is not judged);
      // rows read after it judge orphans (a row is always written before its cloud create).
      const rows = await store.liveVms();
      let cloud: CloudVm[];
      try {
        cloud = await provider.list({ [LABEL_SHARD]: this.d.config.shard });
      } catch (err) {
        log.warn({ err, provider: name }, 'list failed; sweep skipped');
        continue;
      }
      const after = await store.liveVms();
      const liveIds = new Set(after.map((r) => r.id));
      const liveNames = new Set(after.map((r) => r.name));
      // A batch create (bulkInsert, RunInstances with MaxCount) makes instances before they carry
      // their VM label: while one of ours is in flight, an unlabelled instance may be it.
      const creating = after.some((r) => r.provider === name && (r.state === 'requested' || r.state === 'creating'));
      const stray = cloud.filter((c) => (c.vmId ? !liveIds.has(c.vmId) : !liveNames.has(c.name) && !creating));
      if (stray.length) {
        log.warn({ provider: name, vms: stray.map((c) => c.name) }, 'deleting orphan VMs');
        await provider.delete(stray.map((c) => ({ vmId: c.vmId ?? c.name, name: c.name, cloudId: c.cloudId, zone: c.zone ?? null })));
        this.d.metrics.orphansDeleted.inc({ provider: name }, stray.length);
        orphans += stray.length;
      }
      const present = new Set(cloud.filter((c) => c.state !== 'terminated').flatMap((c) => (c.vmId ? [c.vmId, c.name] : [c.name])));
      for (const r of rows) {
        if (r.provider !== name || present.has(r.id) || present.has(r.name)) continue;
        if (r.state === 'ready' || r.state === 'booting') {
          this.d.metrics.vmFailures.inc({ class: r.class, reason: 'lost' });
          await store.transition(r.id, r.state, 'failed', { failure: 'VM vanished from the cloud' });
        }
      }
    }
    return orphans;
  }
}

function num(v: string | null): number | null {
  return v === null ? null : Number(v);
}

export { vmRef };
