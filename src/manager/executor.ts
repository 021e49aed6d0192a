// Runs one job on one VM: script over SSH, live masked trace to GitLab, cancel and timeout,
// then the closing transaction (outcome + billing event + VM delete intent) and the report.
import type { Logger } from 'pino';
import type { ClassConfig, ShardConfig } from '../config/types.js';
import type { VmRow } from '../db/schema.js';
import { connectSsh, type SshSession } from '../connect/ssh.js';
import type { GitLabClient } from '../gitlab/client.js';
import type { JobPayload } from '../gitlab/job-payload.js';
import { Masker } from '../gitlab/mask.js';
import { buildPowerShellScript, powerShellCommand, powerShellStdin } from '../gitlab/powershell.js';
import { buildBashScript } from '../gitlab/script.js';
import { TraceUploader } from '../gitlab/trace.js';
import type { ConnectInfo, GuestOs, Provider } from '../providers/provider.js';
import { buildBillingEvent } from './billing.js';
import type { Clock } from './clock.js';
import type { Metrics } from './metrics.js';
import { vmRef, type Pool } from './pool.js';
import type { JobOutcome, Store } from './store.js';

export interface ExecutorDeps {
  config: ShardConfig;
  store: Store;
  pool: Pool;
  providers: Map<string, Provider>;
  gitlab: GitLabClient;
  metrics: Metrics;
  log: Logger;
  clock: Clock;
}

export interface JobContext {
  job: JobPayload;
  vm: VmRow;
  cls: ClassConfig;
  pickedAt: number;
  timeoutSeconds: number;
  queuedSeconds: number | null;
  /** Cold start: the VM is being made for this job; resolves with it `assigned`, throws if it fails. */
  awaitVm?: (signal: AbortSignal) => Promise<VmRow>;
}

type EndCause = { kind: 'exit'; code: number | null; signal?: string } | { kind: 'canceled' } | { kind: 'timeout' } | { kind: 'system'; message: string };

/** Writes the script to the VM through stdin, then runs it detached from that stdin. */
const RUN_SCRIPT = 'f=$(mktemp "${TMPDIR:-/tmp}/runner-fleet-job.XXXXXX") && cat > "$f" && exec bash "$f" </dev/null';

/** The remote command and its stdin for a job on a VM of this OS: PowerShell on Windows, bash elsewhere. */
export function jobInvocation(os: GuestOs, job: JobPayload): { command: string; stdin: string } {
  // Windows: powershell.exe (found on PATH, so the emulator's tests can put a shim there) runs a
  // bootstrap that takes the script from stdin; see powerShellCommand.
  if (os === 'windows') return { command: powerShellCommand(), stdin: powerShellStdin(buildPowerShellScript(job)) };
  return { command: RUN_SCRIPT, stdin: buildBashScript(job) };
}

/**
 * The VM's OS: the provider's answer (connectInfo), unless it only gave its `linux` default while
 * the class declares another (`machine.os`, as gcp classes do), e.g. before it described the VM.
 */
export function guestOs(info: Pick<ConnectInfo, 'os'> | undefined, cls: ClassConfig): GuestOs {
  const declared = cls.machine['os'];
  if (info && info.os !== 'linux') return info.os;
  if (declared === 'windows' || declared === 'macos') return declared;
  return info?.os ?? 'linux';
}

export class Executor {
  private readonly running = new Map<number, { abort: AbortController; done: Promise<void> }>();

  constructor(private readonly d: ExecutorDeps) {}

  get active(): number {
    return this.running.size;
  }

  start(ctx: JobContext): void {
    const abort = new AbortController();
    const done = this.run(ctx, abort)
      .catch((err) => this.d.log.error({ err, job: ctx.job.id }, 'executor failed'))
      .finally(() => this.running.delete(ctx.job.id));
    this.running.set(ctx.job.id, { abort, done });
  }

  /** Wait for every running job to finish (drain). */
  async idle(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  private async run(ctx: JobContext, abort: AbortController): Promise<void> {
    const { job, cls } = ctx;
    let vm = ctx.vm;
    const log = this.d.log.child({ job: job.id, vm: vm.id, class: cls.name });
    // The job token is a secret even where GitLab does not mark it masked.
    const masked = [job.token, ...(job.variables ?? []).filter((v) => v.masked && v.value).map((v) => v.value)];
    let cause: EndCause | null = null;
    const end = (c: EndCause) => {
      if (!cause) cause = c;
      abort.abort();
    };
    const trace = new TraceUploader({
      client: this.d.gitlab,
      jobId: job.id,
      jobToken: job.token,
      masker: new Masker(masked),
      onCancel: () => end({ kind: 'canceled' }),
      log,
    });
    const timer = setTimeout(() => end({ kind: 'timeout' }), ctx.timeoutSeconds * 1000);
    trace.startHeartbeat();
    let startedAt: number | null = null;
    let session: SshSession | undefined;
    try {
      if (ctx.awaitVm) {
        trace.append(`No warm VM of class ${cls.name}: creating a fresh one for this job (cold start)\n`);
        vm = await ctx.awaitVm(abort.signal);
      }
      // `assigned` already guards the VM (recovery treats both alike): record `running`
      // alongside the start instead of before it, off the start-latency path.
      const marked = this.d.store.transition(vm.id, 'assigned', 'running', {}, `job ${job.id}`).catch((err) => log.warn({ err }, 'could not record running'));
      trace.append(`Running with runner-fleet (shard ${this.d.config.shard}, class ${cls.name}) on VM ${vm.name}\n`);
      // The boot probe's connection saves a handshake on the start path, if it is still up.
      const kept = this.d.pool.takeSession(vm.id);
      let os: GuestOs;
      if (kept?.closed === false) {
        session = kept;
        let info: ConnectInfo | undefined;
        try {
          info = this.connectInfo(vm);
        } catch (err) {
          log.warn({ err }, 'no connect info for the VM; taking its OS from the class');
        }
        os = guestOs(info, cls);
      } else {
        kept?.close();
        const info = this.connectInfo(vm);
        if (!info) throw new Error('VM is not reachable: provider, key or address missing');
        os = guestOs(info, cls);
        session = await connectSsh(info, { timeoutMs: 15_000, signal: abort.signal });
      }
      const { command, stdin } = jobInvocation(os, job);
      const result = await session.exec(command, {
        stdin,
        signal: abort.signal,
        onData: (chunk) => {
          if (startedAt === null) {
            startedAt = this.d.clock.now();
            this.observeStart(ctx, startedAt, log);
          }
          trace.write(chunk);
        },
      });
      if (!cause) cause = { kind: 'exit', code: result.exitCode, ...(result.signal ? { signal: result.signal } : {}) };
      await marked;
    } catch (err) {
      if (!cause) cause = { kind: 'system', message: (err as Error).message };
    } finally {
      clearTimeout(timer);
      session?.close();
    }
    const outcome = this.outcome(cause!, ctx, trace);
    const t = await trace.finish().catch((err) => {
      log.warn({ err }, 'trace upload incomplete');
      return null;
    });
    trace.close();
    const finishedAt = new Date(this.d.clock.now());
    const full: JobOutcome = { ...outcome, finishedAt, traceBytes: t?.bytesize ?? 0, traceChecksum: t?.checksum ?? null };
    await this.close(ctx, full, startedAt);
    log.info({ result: full.result, exitCode: full.exitCode, failureReason: full.failureReason, seconds: (finishedAt.getTime() - ctx.pickedAt) / 1000 }, 'job finished');
  }

  /** How to reach the VM, and its OS, from its provider; undefined when provider, key or address is missing. */
  private connectInfo(vm: VmRow): ConnectInfo | undefined {
    const provider = this.d.providers.get(vm.provider);
    const key = this.d.store.tryDecrypt(vm.private_key_enc);
    if (!provider || !key || !vm.internal_ip) return undefined;
    return provider.connectInfo({ ...vmRef(vm), internalIp: vm.internal_ip }, key);
  }

  private observeStart(ctx: JobContext, startedAt: number, log: Logger): void {
    const pickup = (startedAt - ctx.pickedAt) / 1000;
    const latency = (ctx.queuedSeconds ?? 0) + pickup;
    this.d.metrics.pickupToFirstLine.observe({ class: ctx.cls.name }, pickup);
    this.d.metrics.jobStartLatency.observe({ class: ctx.cls.name }, latency);
    log.info({ startLatencySeconds: Number(latency.toFixed(3)), pickupSeconds: Number(pickup.toFixed(3)) }, 'job started');
    void this.d.store.markJobStarted(ctx.job.id, new Date(startedAt)).catch((err) => log.warn({ err }, 'could not record job start'));
  }

  private outcome(cause: EndCause, ctx: JobContext, trace: TraceUploader): Omit<JobOutcome, 'finishedAt' | 'traceBytes' | 'traceChecksum'> {
    switch (cause.kind) {
      case 'exit':
        if (cause.code === 0) {
          trace.append('\nJob succeeded\n');
          return { result: 'success', exitCode: 0, failureReason: null };
        }
        if (cause.code === null) {
          trace.append(`\nERROR: Job failed (system failure): the job process ended without an exit code${cause.signal ? ` (signal ${cause.signal})` : ''}\n`);
          return { result: 'failed', exitCode: null, failureReason: 'runner_system_failure' };
        }
        trace.append(`\nERROR: Job failed: exit code ${cause.code}\n`);
        return { result: 'failed', exitCode: cause.code, failureReason: 'script_failure' };
      case 'canceled':
        trace.append('\nERROR: Job was canceled\n');
        return { result: 'canceled', exitCode: null, failureReason: null };
      case 'timeout':
        trace.append(`\nERROR: Job failed: execution took longer than ${ctx.timeoutSeconds} seconds\n`);
        return { result: 'failed', exitCode: null, failureReason: 'job_execution_timeout' };
      case 'system':
        trace.append(`\nERROR: Job failed (system failure): ${cause.message}\n`);
        return { result: 'failed', exitCode: null, failureReason: 'runner_system_failure' };
    }
  }

  /** Close the job in the database first, then delete the VM and tell GitLab, in parallel. */
  private async close(ctx: JobContext, outcome: JobOutcome, startedAtMs: number | null): Promise<void> {
    const { job, vm, cls } = ctx;
    const event = buildBillingEvent({
      shard: this.d.config.shard,
      jobId: job.id,
      ...jobIdentity(job),
      runnerClass: cls.name,
      costFactor: cls.costFactor,
      provider: cls.provider,
      machineType: machineType(cls),
      startedAt: new Date(startedAtMs ?? ctx.pickedAt),
      finishedAt: outcome.finishedAt,
      outcome: outcome.result,
      failureReason: outcome.failureReason,
    });
    await this.d.store.closeJob(job.id, outcome, event);
    this.d.metrics.billingEvents.inc({ class: cls.name });
    this.d.metrics.jobsTotal.inc({ class: cls.name, result: outcome.failureReason === 'runner_system_failure' ? 'system_failure' : outcome.result });
    this.d.metrics.jobDuration.observe({ class: cls.name }, event.durationSeconds);
    this.d.pool.deleteNow(vm.id);
    await reportFinal(this.d.gitlab, this.d.store, this.d.clock, job.id, job.token, outcome, this.d.log);
  }
}

export function jobIdentity(job: JobPayload): { projectId: number | null; pipelineId: number | null; namespaceId: number | null; rootNamespaceId: number | null } {
  const v = new Map((job.variables ?? []).map((x) => [x.key, x.value]));
  const num = (s: string | undefined) => (s && /^\d+$/.test(s) ? Number(s) : null);
  return {
    projectId: job.job_info?.project_id ?? num(v.get('CI_PROJECT_ID')),
    pipelineId: num(v.get('CI_PIPELINE_ID')),
    namespaceId: num(v.get('CI_PROJECT_NAMESPACE_ID')),
    rootNamespaceId: num(v.get('CI_PROJECT_ROOT_NAMESPACE_ID')) ?? num(v.get('CI_PROJECT_NAMESPACE_ID')),
  };
}

export function machineType(cls: ClassConfig): string | null {
  const m = cls.machine['machineType'] ?? cls.machine['instanceType'];
  return typeof m === 'string' ? m : null;
}

/**
 * Tell GitLab the job's end, retrying while it asks us to (202) with a bound; marks the job
 * reported once GitLab has an answer that ends the conversation.
 */
export async function reportFinal(gitlab: GitLabClient, store: Store, clock: Clock, jobId: number, token: string, o: Pick<JobOutcome, 'result' | 'exitCode' | 'failureReason' | 'traceBytes' | 'traceChecksum'>, log: Logger): Promise<boolean> {
  const state = o.result === 'success' ? 'success' : 'failed';
  for (let attempt = 0; attempt < 30; attempt++) {
    try {
      const res = await gitlab.updateJob(jobId, token, {
        state,
        ...(o.exitCode !== null ? { exitCode: o.exitCode } : {}),
        ...(o.failureReason ? { failureReason: o.failureReason } : {}),
        ...(o.traceChecksum ? { checksum: o.traceChecksum, bytesize: o.traceBytes } : {}),
      });
      if (res.result === 'accepted') {
        await clock.sleep(Math.min(1000 * (attempt + 1), 5000));
        continue;
      }
      if (res.result === 'traceMismatch') log.warn({ job: jobId }, 'GitLab reports a trace checksum mismatch');
      await store.markReported(jobId);
      return true;
    } catch (err) {
      log.warn({ err, job: jobId, attempt }, 'final job update failed; retrying');
      await clock.sleep(Math.min(1000 * 2 ** attempt, 30_000));
    }
  }
  log.error({ job: jobId }, 'GitLab did not take the final job state; the reconciler will retry');
  return false;
}
