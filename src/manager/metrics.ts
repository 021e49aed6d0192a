// prom-client registry for one shard. Names follow Prometheus conventions: `runner_fleet_`
// prefix, base units, `_total` counters, bounded labels (never job or VM ids).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Binds a provider's per-call reports to the shard's registry. */
export function cloudTelemetry(metrics: Metrics, provider: string): import('../providers/provider.js').CloudTelemetry {
  return {
    request(operation, outcome, seconds) {
      metrics.cloudRequests.inc({ provider, operation, outcome });
      metrics.cloudRequestSeconds.observe({ provider, operation }, seconds);
    },
    stockout(zone) {
      metrics.cloudStockouts.inc({ provider, zone });
    },
    partialList(zone) {
      metrics.cloudPartialLists.inc({ provider, zone });
    },
    hosts(className, byState) {
      for (const [state, n] of Object.entries(byState)) metrics.macHosts.set({ class: className, state }, n);
    },
    hostSeconds(className, allocated, used) {
      if (allocated > 0) metrics.macHostAllocatedSeconds.inc({ class: className }, allocated);
      if (used > 0) metrics.macHostUsedSeconds.inc({ class: className }, used);
    },
    nestedVmReady(className, seconds) {
      metrics.macNestedVmReady.observe({ class: className }, seconds);
    },
  };
}

/** Start-latency buckets: dense under a minute, with the SLO threshold (120 s) as an edge. */
export const START_LATENCY_BUCKETS = [0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800];
export const BOOT_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200];

export interface Metrics {
  registry: Registry;
  jobStartLatency: Histogram<'class'>;
  pickupToFirstLine: Histogram<'class'>;
  jobsTotal: Counter<'class' | 'result'>;
  jobDuration: Histogram<'class'>;
  vms: Gauge<'class' | 'state'>;
  vmBoot: Histogram<'class'>;
  vmResume: Histogram<'class'>;
  vmFailures: Counter<'class' | 'reason'>;
  jobRequests: Counter<'class' | 'outcome'>;
  billingEvents: Counter<'class'>;
  orphansDeleted: Counter<'provider'>;
  cloudRequests: Counter<'provider' | 'operation' | 'outcome'>;
  cloudRequestSeconds: Histogram<'provider' | 'operation'>;
  cloudStockouts: Counter<'provider' | 'zone'>;
  providerOperationSeconds: Histogram<'provider' | 'operation' | 'outcome'>;
  classGrowthBlocked: Gauge<'class' | 'reason'>;
  billingDelivered: Counter<'sink'>;
  billingDeliveryFailures: Counter<'sink'>;
  billingDeadLettered: Counter<'sink'>;
  billingDeliveryLag: Gauge<'sink'>;
  macHosts: Gauge<'class' | 'state'>;
  macHostAllocatedSeconds: Counter<'class'>;
  macHostUsedSeconds: Counter<'class'>;
  macNestedVmReady: Histogram<'class'>;
  isolationFindings: Gauge<'provider' | 'kind'>;
  isolationAuditTimestamp: Gauge<'provider'>;
  shardActive: Gauge;
  shardEpoch: Gauge;
  shardTakeovers: Counter;
  shardStepDowns: Counter<'reason'>;
  jobsFailedBack: Counter<'class' | 'reason'>;
  cloudPartialLists: Counter<'provider' | 'zone'>;
  jobReportsPending: Gauge;
  traceBufferHighWater: Gauge<'class'>;
  jobsReattached: Counter<'class' | 'outcome'>;
  hostKeyMismatches: Counter<'provider' | 'class'>;
  eventLoopLag: Histogram;
  /** Stops the event-loop lag sampler (the shard's close calls it). */
  stop(): void;
  intakeRequestsInFlight: Gauge<'class'>;
}

/** Lag buckets: from "fine" to "a scrape or a job start waits seconds"; 0.1 s is the /metrics p99 goal. */
export const EVENT_LOOP_LAG_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const LAG_SAMPLE_MS = 100;

/**
 * Observes how late a 100 ms timer fires: every stretch of blocked event loop (a long sync task,
 * a GC pause) shows up as one late sample. A histogram (not prom-client's per-scrape p99 gauges,
 * reset by each scrape) so several scrapers and rate() over any window agree.
 */
function sampleEventLoopLag(h: Histogram): () => void {
  let due = performance.now() + LAG_SAMPLE_MS;
  let timer: NodeJS.Timeout;
  const tick = () => {
    const now = performance.now();
    h.observe(Math.max(0, now - due) / 1000);
    due = now + LAG_SAMPLE_MS;
    timer = setTimeout(tick, LAG_SAMPLE_MS).unref();
  };
  timer = setTimeout(tick, LAG_SAMPLE_MS).unref();
  return () => clearTimeout(timer);
}

export function createMetrics(opts: { shard: string; defaultMetrics?: boolean; eventLoopLag?: boolean }): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels({ shard: opts.shard });
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'runner_fleet_' });
  const registers = [registry];
  const eventLoopLag = new Histogram({
    name: 'runner_fleet_event_loop_lag_seconds', help: 'How late a 100 ms timer fired, sampled continuously: the event loop was blocked (sync work, GC) this long.',
    buckets: EVENT_LOOP_LAG_BUCKETS, registers,
  });
  const stopLag = (opts.eventLoopLag ?? opts.defaultMetrics !== false) ? sampleEventLoopLag(eventLoopLag) : () => {};
  return {
    registry,
    eventLoopLag,
    stop: stopLag,
    jobStartLatency: new Histogram({
      name: 'runner_fleet_job_start_latency_seconds',
      help: 'Time from a job entering GitLab\'s queue to its first script line on the VM (the SLO latency).',
      labelNames: ['class'], buckets: START_LATENCY_BUCKETS, registers,
    }),
    pickupToFirstLine: new Histogram({
      name: 'runner_fleet_job_pickup_to_first_line_seconds',
      help: 'Time from the manager receiving a job to its first script line on the VM.',
      labelNames: ['class'], buckets: START_LATENCY_BUCKETS, registers,
    }),
    jobsTotal: new Counter({
      name: 'runner_fleet_jobs_total', help: 'Finished jobs by result (success, failed, canceled, system_failure).',
      labelNames: ['class', 'result'], registers,
    }),
    jobDuration: new Histogram({
      name: 'runner_fleet_job_duration_seconds', help: 'Job run time on the VM.',
      labelNames: ['class'], buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 10800], registers,
    }),
    vms: new Gauge({
      name: 'runner_fleet_vms', help: 'VMs by class and state.', labelNames: ['class', 'state'], registers,
    }),
    vmBoot: new Histogram({
      name: 'runner_fleet_vm_boot_seconds', help: 'Time from VM creation request to reachable over SSH.',
      labelNames: ['class'], buckets: BOOT_BUCKETS, registers,
    }),
    vmResume: new Histogram({
      name: 'runner_fleet_vm_resume_seconds', help: 'Time from starting a standby (stopped) VM to SSH-reachable again.',
      labelNames: ['class'], buckets: BOOT_BUCKETS, registers,
    }),
    vmFailures: new Counter({
      name: 'runner_fleet_vm_failures_total', help: 'VMs that failed (boot timeout, create error, lost).',
      labelNames: ['class', 'reason'], registers,
    }),
    jobRequests: new Counter({
      name: 'runner_fleet_job_requests_total', help: 'POST /jobs/request calls by outcome (job, none, forbidden, error).',
      labelNames: ['class', 'outcome'], registers,
    }),
    billingEvents: new Counter({
      name: 'runner_fleet_billing_events_written_total', help: 'Compute-minute events written to the outbox.',
      labelNames: ['class'], registers,
    }),
    isolationFindings: new Gauge({
      name: 'runner_fleet_isolation_findings', help: 'Openings the last isolation audit found in the runner networks (ingress other than from the manager), by provider and kind.',
      labelNames: ['provider', 'kind'], registers,
    }),
    isolationAuditTimestamp: new Gauge({
      name: 'runner_fleet_isolation_audit_timestamp_seconds', help: 'When the last isolation audit of a provider succeeded (unix seconds).',
      labelNames: ['provider'], registers,
    }),
    shardActive: new Gauge({
      name: 'runner_fleet_shard_active', help: '1 while this manager holds the shard (active), 0 while it waits as standby.', registers,
    }),
    shardEpoch: new Gauge({
      name: 'runner_fleet_shard_epoch', help: 'The shard epoch this manager took over at (bumped by every takeover); 0 before its first.', registers,
    }),
    shardTakeovers: new Counter({
      name: 'runner_fleet_shard_takeovers_total', help: 'Times this manager became active for the shard.', registers,
    }),
    shardStepDowns: new Counter({
      name: 'runner_fleet_shard_step_downs_total', help: 'Times this manager stopped being active without a shutdown: lease lost (connection, renewal, takeover) or fenced.',
      labelNames: ['reason'], registers,
    }),
    jobsFailedBack: new Counter({
      name: 'runner_fleet_jobs_failed_back_total', help: 'Jobs GitLab handed out that could not be recorded or bound, failed back to GitLab as runner_system_failure.',
      labelNames: ['class', 'reason'], registers,
    }),
    orphansDeleted: new Counter({
      name: 'runner_fleet_orphan_vms_deleted_total', help: 'Cloud VMs of this shard that the database did not know, deleted by the reconciler.',
      labelNames: ['provider'], registers,
    }),
    cloudRequests: new Counter({
      name: 'runner_fleet_cloud_requests_total', help: 'Cloud API calls by provider, operation and outcome.',
      labelNames: ['provider', 'operation', 'outcome'], registers,
    }),
    cloudRequestSeconds: new Histogram({
      name: 'runner_fleet_cloud_request_seconds', help: 'Cloud API call duration.',
      labelNames: ['provider', 'operation'], buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30], registers,
    }),
    cloudStockouts: new Counter({
      name: 'runner_fleet_cloud_stockouts_total', help: 'VM creations refused for lack of capacity, by zone (GCE) or subnet/AZ (EC2).',
      labelNames: ['provider', 'zone'], registers,
    }),
    providerOperationSeconds: new Histogram({
      name: 'runner_fleet_provider_operation_seconds',
      help: 'Pool-level provider operations (create a batch, describe, delete) including their API calls, retries and operation waits.',
      labelNames: ['provider', 'operation', 'outcome'], buckets: [0.05, 0.25, 1, 2, 5, 10, 30, 60, 120, 300], registers,
    }),
    classGrowthBlocked: new Gauge({
      name: 'runner_fleet_class_growth_blocked', help: '1 while a class may not create VMs (reason: quota), else 0.',
      labelNames: ['class', 'reason'], registers,
    }),
    billingDelivered: new Counter({
      name: 'runner_fleet_billing_events_delivered_total', help: 'Billing events acknowledged (2xx) by a webhook sink.',
      labelNames: ['sink'], registers,
    }),
    billingDeliveryFailures: new Counter({
      name: 'runner_fleet_billing_delivery_failures_total', help: 'Billing batches a webhook sink did not acknowledge (each is retried).',
      labelNames: ['sink'], registers,
    }),
    billingDeadLettered: new Counter({
      name: 'runner_fleet_billing_events_dead_lettered_total', help: 'Billing events a webhook sink gave up on after failing for deadLetterAfter (listed in billing_dead_letters).',
      labelNames: ['sink'], registers,
    }),
    billingDeliveryLag: new Gauge({
      name: 'runner_fleet_billing_delivery_lag_seconds', help: 'Age of the oldest billing event a webhook sink has not acknowledged; 0 when caught up.',
      labelNames: ['sink'], registers,
    }),
    macHosts: new Gauge({
      name: 'runner_fleet_mac_hosts', help: 'EC2 Mac dedicated hosts by class and state (allocating, launching, ready, busy, scrubbing, releasable).',
      labelNames: ['class', 'state'], registers,
    }),
    macHostAllocatedSeconds: new Counter({
      name: 'runner_fleet_mac_host_allocated_seconds_total', help: 'Host-seconds of allocated (billed) Mac hosts; /3600 for host-hours.',
      labelNames: ['class'], registers,
    }),
    macHostUsedSeconds: new Counter({
      name: 'runner_fleet_mac_host_used_seconds_total', help: 'Host-seconds of Mac hosts holding at least one nested VM (warm or running a job).',
      labelNames: ['class'], registers,
    }),
    macNestedVmReady: new Histogram({
      name: 'runner_fleet_mac_nested_vm_ready_seconds', help: 'Nested macOS VM clone-to-ready time: from tart clone to the VM having its address.',
      labelNames: ['class'], buckets: [1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300], registers,
    }),
    cloudPartialLists: new Counter({
      name: 'runner_fleet_cloud_partial_lists_total',
      help: 'Cloud lists and describes answered without a zone (or host) that did not answer; VMs there count as unknown, never as gone.',
      labelNames: ['provider', 'zone'], registers,
    }),
    jobReportsPending: new Gauge({
      name: 'runner_fleet_job_reports_pending', help: 'Finished jobs whose final state GitLab has not acknowledged yet (the report outbox backlog).',
      registers,
    }),
    traceBufferHighWater: new Gauge({
      name: 'runner_fleet_trace_buffer_high_water_bytes', help: 'Most unacknowledged trace bytes one job held in memory (bounded per job; output beyond waits on the VM).',
      labelNames: ['class'], registers,
    }),
    jobsReattached: new Counter({
      name: 'runner_fleet_jobs_reattached_total', help: 'Running jobs a starting manager took over from the database (outcome: attached, failed, started).',
      labelNames: ['class', 'outcome'], registers,
    }),
    hostKeyMismatches: new Counter({
      name: 'runner_fleet_host_key_mismatch_total', help: 'Connections refused because the VM answered with another SSH host key than the pinned one (address reused?); the VM is failed.',
      labelNames: ['provider', 'class'], registers,
    }),
    intakeRequestsInFlight: new Gauge({
      name: 'runner_fleet_intake_requests_in_flight', help: 'Job requests to GitLab in flight, each holding a reserved warm VM or claimed room (at most classes.<name>.requestConcurrency).',
      labelNames: ['class'], registers,
    }),
  };
}
