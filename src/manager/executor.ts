// Runs one job on one VM: the script over SSH, live masked trace to GitLab, cancel and timeout,
// then the closing transaction (outcome + billing event + VM delete intent) and the report.
// On Linux and macOS the job runs detached under a supervisor on the VM (src/gitlab/detach.ts):
// this manager only watches it, so a watcher that dies (restart, failover, a dropped connection)
// is replaced by another that re-attaches, and the job fails only when its VM is gone or stays
// unreachable past a deadline. Windows jobs still run inside the SSH session.
import type { Logger } from 'pino';
import type { ClassConfig, ShardConfig } from '../config/types.js';
import type { VmRow } from '../db/schema.js';
import { connectSsh, type HostKeyMismatchError, type SshSession } from '../connect/ssh.js';
import { isHostKeyRefusal, pinnedConnectInfo, refusalReason, reportHostKeyRefusal, type HostKeyUnpinnedError } from './host-key.js';
import { RUNNER_VERSION, type GitLabClient } from '../gitlab/client.js';
import { AFTER_SCRIPT_RUNNING, killCommand, parseAttachEnd, startOrAttachCommand, type AttachEnd, type ScriptFailureReason } from '../gitlab/detach.js';
import { namespaceIds, pipelineId, type JobPayload } from '../gitlab/job-payload.js';
import { MaskAutomaton, Masker } from '../gitlab/mask.js';
import { ignoredWarning, maskPlan } from '../gitlab/masked-values.js';
import { buildPowerShellScript, powerShellCommand, powerShellStdin } from '../gitlab/powershell.js';
import { afterScriptTimeout, buildBashScript, extraSteps, stepScript, unbuiltJobScript, type ScriptOptions } from '../gitlab/script.js';
import type { SignedCacheEntry } from '../gitlab/cache-script.js';
import { cachePlan } from '../cache/plan.js';
import type { CacheSigner } from '../cache/signer.js';
import { TraceUploader } from '../gitlab/trace.js';
import { absentFrom, type ConnectInfo, type GuestOs, type Provider } from '../providers/provider.js';
import { buildBillingEvent } from './billing.js';
import type { Clock } from './clock.js';
import type { JobReports } from './job-reports.js';
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
  /** The report outbox; without it the final state is sent once here and left to the next start-up. */
  reports?: JobReports;
  /** A running job's VM unreachable this long (while the cloud still has it) fails the job. Default 2 min. */
  unreachableMs?: number;
  /** Unacknowledged trace bytes held per job before reading from the VM pauses. */
  traceBufferBytes?: number;
  /** PEM of `gitlab.tlsCaFile`: jobs get it as CI_SERVER_TLS_CA_FILE. */
  tlsCa?: string | null;
  /** Signs the distributed cache's URLs (`cache:` in the shard config); null without one. */
  cache?: CacheSigner | null;
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

/** A job another manager started: what its row says about the trace and the VM. */
export interface ReattachContext extends Omit<JobContext, 'awaitVm'> {
  /** The manager's own lines before the VM's output (exactly as written then). */
  tracePrefix: string;
  os: GuestOs;
  startedAt: number | null;
}

/** An attach offset past any job's output: the attach then only waits for the job's end. */
const SKIP_OUTPUT = 2 ** 50;

type EndCause = { kind: 'exit'; code: number | null; signal?: string; reason?: ScriptFailureReason } | { kind: 'canceled' } | { kind: 'timeout' } | { kind: 'system'; message: string } | { kind: 'unsupported'; message: string };

/** Windows: writes the script to the VM through stdin, then runs it in the session. */
export function jobInvocation(os: GuestOs, job: JobPayload, opts: ScriptOptions = {}): { command: string; stdin: string } {
  // Windows: powershell.exe (found on PATH, so the emulator's tests can put a shim there) runs a
  // bootstrap that takes the script from stdin; see powerShellCommand.
  if (os === 'windows') return { command: powerShellCommand(), stdin: powerShellStdin(buildPowerShellScript(job)) };
  const stdin = buildBashScript(job, opts);
  return { command: startOrAttachCommand(job.id, Buffer.byteLength(stdin), 0), stdin };
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

/** What an attach's end means for the job (pure). */
export function endCauseOf(end: AttachEnd): EndCause {
  switch (end.kind) {
    case 'status':
      return { kind: 'exit', code: end.code, ...(end.reason ? { reason: end.reason } : {}) };
    case 'killed':
      return end.reason === 'timeout' ? { kind: 'timeout' } : { kind: 'canceled' };
    case 'lost':
      return { kind: 'system', message: 'the job ended on its VM without an exit status (its supervisor died: VM rebooted or out of memory?)' };
    case 'missing':
      return { kind: 'system', message: 'the job directory disappeared from the VM' };
    case 'unlaunched':
      return { kind: 'system', message: 'the job was claimed on its VM but never launched (its start was cut off); it did not run' };
    case 'error':
      return { kind: 'system', message: `the job could not start on its VM: ${end.message}` };
  }
}

interface Running {
  abort: AbortController;
  done: Promise<void>;
  /** detachAll: stop watching, keep the job running and open. */
  detached: boolean;
}

export class Executor {
  private readonly running = new Map<number, Running>();

  constructor(private readonly d: ExecutorDeps) {}

  get active(): number {
    return this.running.size;
  }

  start(ctx: JobContext): void {
    this.launch(ctx.job.id, (r) => this.run(ctx, r, null));
  }

  /** Watch a job another manager started (start-up recovery): resumes its trace, reports its real end. */
  reattach(ctx: ReattachContext): void {
    this.launch(ctx.job.id, (r) => this.run(ctx, r, ctx));
  }

  private launch(jobId: number, body: (r: Running) => Promise<void>): void {
    const r: Running = { abort: new AbortController(), done: Promise.resolve(), detached: false };
    r.done = body(r)
      .catch((err) => this.d.log.error({ err, job: jobId }, 'executor failed'))
      .finally(() => this.running.delete(jobId));
    this.running.set(jobId, r);
  }

  /** Wait for every running job to finish (drain). */
  async idle(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  /**
   * Stop watching every job without ending it: SSH sessions close and uploads stop, but the jobs
   * keep running on their VMs and stay open in the database, for the manager that takes over
   * (this one lost the shard lock). Windows jobs, which live in their SSH session, end with it.
   */
  async detachAll(): Promise<void> {
    const all = [...this.running.values()];
    for (const r of all) {
      r.detached = true;
      r.abort.abort();
    }
    await Promise.allSettled(all.map((r) => r.done));
  }

  private async run(ctx: JobContext | ReattachContext, r: Running, resume: ReattachContext | null): Promise<void> {
    const { job, cls } = ctx;
    const abort = r.abort;
    let vm = ctx.vm;
    const log = this.d.log.child({ job: job.id, vm: vm.id, class: cls.name, ...(resume ? { reattached: true } : {}) });
    // Intake refuses a job whose values cannot all be masked; a re-attached one is ended unseen.
    const plan = maskPlan(job);
    const automaton = new MaskAutomaton(plan.ok ? plan.patterns : [Buffer.from(job.token)]);
    const masker = () => new Masker(automaton);
    let cause: EndCause | null = plan.ok ? null : { kind: 'unsupported', message: plan.error };
    const end = (c: EndCause) => {
      if (!cause) cause = c;
      abort.abort();
    };
    let rewind: (() => void) | null = null;
    const trace = new TraceUploader({
      client: this.d.gitlab,
      jobId: job.id,
      jobToken: job.token,
      masker: masker(),
      onCancel: () => end({ kind: 'canceled' }),
      onRewind: () => rewind?.(),
      log,
      ...(this.d.traceBufferBytes ? { bufferBytes: this.d.traceBufferBytes } : {}),
    });
    // The deadline counts from pick-up, as recorded: a restart does not give a job more time.
    const timer = setTimeout(() => end({ kind: 'timeout' }), Math.max(0, ctx.pickedAt + ctx.timeoutSeconds * 1000 - this.d.clock.now()));
    trace.startHeartbeat();
    let startedAt: number | null = resume?.startedAt ?? null;
    let session: SshSession | undefined;
    let prefix = resume?.tracePrefix ?? '';
    const say = (text: string) => {
      prefix += text;
      trace.append(text);
    };
    let detachedJob = false;
    let os: GuestOs = resume?.os ?? 'linux';
    let marked: Promise<unknown> = Promise.resolve();
    const onOutput = () => {
      if (startedAt !== null) return;
      startedAt = this.d.clock.now();
      if (resume) void this.d.store.markJobStarted(job.id, new Date(startedAt)).catch(() => {});
      else this.observeStart(ctx, startedAt, log);
    };
    // Built once per run (cache URLs are signed for it); a job already claimed on its VM ignores it.
    let script: Promise<Buffer> | null = null;
    const scriptBytes = () => (script ??= this.scriptOptions(cls, job, ctx.timeoutSeconds).then((o) => Buffer.from(buildBashScript(job, o))));
    // A re-attach sends the script only in case the job never started: failing to rebuild it (cache
    // URLs not signed) must not end a job that runs on its VM.
    const scriptFor = () =>
      resume
        ? scriptBytes().catch((err: Error) => {
            log.warn({ err }, 'could not rebuild the job script for the re-attach; attaching without it');
            return Buffer.from(unbuiltJobScript(err.message));
          })
        : scriptBytes();
    // Where the reading of the VM's output is (every pass of watch continues from it).
    const pos = { offset: 0 };
    const watch = async (first: SshSession | undefined, signal = abort.signal) =>
      this.watch({ ctx, vm, log, trace, masker, prefix: () => prefix, script: await scriptFor(), signal, session: first, pos, onOutput, setRewind: (f) => (rewind = f), setSession: (s) => (session = s) });
    try {
      if (cause) {
        detachedJob = resume !== null; // a running job is killed: its output cannot be masked
      } else if (resume) {
        trace.append(prefix);
        detachedJob = true;
        const got = await watch(undefined);
        if (!cause) cause = got;
      } else {
        if ('awaitVm' in ctx && ctx.awaitVm) {
          say(`No warm VM of class ${cls.name}: creating a fresh one for this job (cold start)\n`);
          vm = await ctx.awaitVm(abort.signal);
        }
        say(`Running with runner-fleet (shard ${this.d.config.shard}, class ${cls.name}) on VM ${vm.name}\n`);
        const unmasked = plan.ok ? ignoredWarning(plan.ignored) : null;
        if (unmasked) say(unmasked);
        // The boot probe's connection saves a handshake on the start path, if it is still up.
        const kept = this.d.pool.takeSession(vm.id);
        let connecting: Promise<SshSession> | undefined;
        if (kept?.closed === false) {
          session = kept;
          let info: ConnectInfo | undefined;
          try {
            info = this.providerConnectInfo(vm);
          } catch (err) {
            log.warn({ err }, 'no connect info for the VM; taking its OS from the class');
          }
          os = guestOs(info, cls);
        } else {
          kept?.close();
          const info = this.connectInfo(vm);
          if (!info) throw new Error('VM is not reachable: provider, key or address missing');
          os = guestOs(info, cls);
          connecting = connectSsh(info, { timeoutMs: 15_000, signal: abort.signal });
          connecting.catch(() => {}); // awaited below; not unhandled while the row is written
        }
        const unsupported = os === 'windows' ? windowsUnsupported(job) : null;
        if (unsupported) {
          session?.close();
          connecting?.then((s) => s.close(), () => {});
          cause = { kind: 'unsupported', message: unsupported };
        } else if (os === 'windows') {
          // `assigned` already guards the VM (recovery treats both alike): record `running`
          // alongside the start instead of before it, off the start-latency path.
          marked = this.d.store.transition(vm.id, 'assigned', 'running', {}, `job ${job.id}`).catch((err) => log.warn({ err }, 'could not record running'));
          session ??= await connecting!;
          const { command, stdin } = jobInvocation(os, job);
          const result = await session.exec(command, { stdin, signal: abort.signal, onData: (chunk) => (onOutput(), trace.write(chunk)) });
          if (!cause) cause = { kind: 'exit', code: result.exitCode, ...(result.signal ? { signal: result.signal } : {}) };
        } else {
          // The script (cache URLs signed for it) is made while the row is written and the VM reached.
          scriptBytes().catch(() => {}); // awaited in watch()
          // Written before the job starts (a manager that takes over needs it to re-attach), with
          // the VM's `running` in the same commit.
          await this.d.store.saveJobAttach(job.id, { payload: JSON.stringify(job), tracePrefix: prefix, os, vmId: vm.id });
          session ??= await connecting!;
          detachedJob = true;
          const got = await watch(session);
          if (!cause) cause = got;
        }
      }
      await marked;
    } catch (err) {
      if (isHostKeyRefusal(err)) await this.refuseVm(vm, err, log);
      if (!cause && !r.detached) cause = { kind: 'system', message: (err as Error).message };
    } finally {
      clearTimeout(timer);
    }
    if (r.detached && (detachedJob || !cause)) {
      // Lost the shard: the job goes on, watched by the next manager.
      session?.close();
      trace.close();
      log.info('stopped watching the job; it keeps running for the manager that takes over');
      return;
    }
    const c: EndCause = cause ?? { kind: 'system', message: 'the job ended for an unknown reason' };
    if (detachedJob && c.kind !== 'exit') {
      // A cancel runs the job's after_script on the VM (CI_JOB_STATUS=canceled, bounded by
      // RUNNER_AFTER_SCRIPT_TIMEOUT), as gitlab-runner 17 does; its output joins the trace, then
      // a second kill removes what is left. A timeout (job_execution_timeout) runs none, as in gitlab-runner.
      const afterS = c.kind === 'canceled' && stepScript(job, 'after_script').length ? afterScriptTimeout(job).seconds : 0;
      const killed = await this.killRemote(vm, job.id, c.kind === 'timeout' ? 'timeout' : 'canceled', session, log, afterS);
      session = killed.session;
      if (killed.afterScript) {
        const bound = new AbortController();
        const stop = setTimeout(() => bound.abort(), (afterS + 30) * 1000);
        const got = await watch(session, bound.signal).catch((err: Error) => log.warn({ err }, 'lost the after_script of the canceled job'));
        clearTimeout(stop);
        if (got === null) trace.append(`\nWARNING: after_script did not end within ${afterS} s: stopped\n`);
        session = (await this.killRemote(vm, job.id, 'canceled', session, log)).session;
      }
    }
    // A re-attached job may end before its output was all produced again: close after GitLab's part.
    if (resume && c.kind !== 'exit') await trace.catchUp().catch(() => {});
    const outcome = this.outcome(c, ctx, trace);
    const finish = () =>
      trace.finish().catch((err) => {
        log.warn({ err }, 'trace upload incomplete');
        return null;
      });
    let t = await finish();
    // GitLab lost trace after the job ended: the VM's file still has it all; produce it again.
    for (let i = 0; i < 3 && t && trace.needsRewind && detachedJob && c.kind === 'exit'; i++) {
      trace.restart(masker());
      trace.append(prefix);
      pos.offset = 0;
      const replay = new AbortController();
      const stop = setTimeout(() => replay.abort(), 60_000);
      const again = await watch(session, replay.signal).finally(() => clearTimeout(stop));
      if (!again) break;
      this.outcome(c, ctx, trace);
      t = await finish();
    }
    session?.close();
    this.d.metrics.traceBufferHighWater.set({ class: cls.name }, Math.max(trace.highWater, 0));
    trace.close();
    const finishedAt = new Date(this.d.clock.now());
    const full: JobOutcome = { ...outcome, finishedAt, traceBytes: t?.bytesize ?? 0, traceChecksum: t?.checksum ?? null };
    const closed = await this.close({ ...ctx, vm }, full, startedAt, log);
    if (closed) log.info({ result: full.result, exitCode: full.exitCode, failureReason: full.failureReason, seconds: (finishedAt.getTime() - ctx.pickedAt) / 1000 }, 'job finished');
  }

  /**
   * Start (unless started) and stream the detached job until it ends, through dropped
   * connections: reconnects until the VM is gone or unreachable past the deadline. Returns null
   * when stopped from outside (cancel, timeout, detach: the caller knows why).
   */
  private async watch(w: {
    ctx: JobContext | ReattachContext; vm: VmRow; log: Logger; trace: TraceUploader; masker: () => Masker; prefix: () => string; script: Buffer;
    signal: AbortSignal; session: SshSession | undefined; onOutput: () => void;
    /** The offset of the output read so far: a pass starts from it and moves it. */
    pos: { offset: number };
    setRewind: (f: () => void) => void; setSession: (s: SshSession | undefined) => void;
  }): Promise<EndCause | null> {
    const { trace, log, signal, vm } = w;
    const jobId = w.ctx.job.id;
    const unreachableMs = this.d.unreachableMs ?? 120_000;
    let session = w.session;
    const pos = w.pos;
    let unreachableSince: number | null = null;
    let lastError = '';
    let wantRewind = false;
    /** The log is past its cap: this pass is dropped and the next attach skips the output. */
    let skipping = false;
    let stream: AbortController | null = null;
    w.setRewind(() => {
      wantRewind = true;
      stream?.abort();
    });
    let pause = 100;
    const trouble = async (why: string): Promise<EndCause | null> => {
      lastError = why;
      unreachableSince ??= this.d.clock.now();
      if (await this.vmGone(vm)) return { kind: 'system', message: `the job's VM is gone (${why})` };
      const down = this.d.clock.now() - unreachableSince;
      if (down >= unreachableMs) return { kind: 'system', message: `the job's VM has been unreachable for ${Math.round(down / 1000)} s: ${lastError}` };
      log.warn({ err: why, unreachableSeconds: Math.round(down / 1000) }, 'lost the job VM; reconnecting');
      await this.d.clock.sleep(pause, signal).catch(() => {});
      pause = Math.min(5000, pause * 2);
      return null;
    };
    while (!signal.aborted) {
      if (wantRewind) {
        // GitLab lost trace we no longer hold: produce the whole trace again from the VM's file.
        wantRewind = false;
        skipping = false;
        pos.offset = 0;
        trace.restart(w.masker());
        trace.append(w.prefix());
      }
      if (!session || session.closed) {
        session?.close();
        session = undefined;
        w.setSession(undefined);
        const info = (() => {
          try {
            return this.connectInfo(vm);
          } catch (err) {
            return err as Error;
          }
        })();
        if (isHostKeyRefusal(info)) {
          await this.refuseVm(vm, info, log);
          return { kind: 'system', message: info.message };
        }
        if (!info || info instanceof Error) {
          const failed = await trouble(info ? info.message : 'VM is not reachable: provider, key or address missing');
          if (failed) return failed;
          continue;
        }
        try {
          session = await connectSsh(info, { timeoutMs: 15_000, signal });
          w.setSession(session);
        } catch (err) {
          if (signal.aborted) return null;
          if (isHostKeyRefusal(err)) {
            await this.refuseVm(vm, err, log);
            return { kind: 'system', message: err.message };
          }
          const failed = await trouble((err as Error).message);
          if (failed) return failed;
          continue;
        }
      }
      const cur = new AbortController();
      stream = cur;
      const onStop = () => cur.abort();
      signal.addEventListener('abort', onStop, { once: true });
      let stderr = '';
      let flow: { pause(): void; resume(): void } | undefined;
      try {
        await session.exec(startOrAttachCommand(jobId, w.script.length, pos.offset), {
          stdin: w.script,
          signal: cur.signal,
          onFlow: (f) => (flow = f),
          onData: (chunk, from) => {
            if (from === 'stderr') {
              stderr = (stderr + chunk.toString()).slice(-4096);
              return;
            }
            if (wantRewind || cur.signal.aborted) return; // an abandoned pass
            pos.offset += chunk.length;
            w.onOutput();
            if (!trace.write(chunk)) {
              flow?.pause();
              void trace.drained().then(() => flow?.resume());
            }
            if (trace.capped && pos.offset < SKIP_OUTPUT) {
              // Nothing more of the output will be sent: stop reading it, only wait for the end.
              log.info({ read: pos.offset }, 'job log past its size cap: no longer reading its output');
              pos.offset = SKIP_OUTPUT;
              skipping = true;
              cur.abort();
            }
          },
        });
      } catch (err) {
        if (signal.aborted) return null;
        if (wantRewind) continue;
        if (skipping) {
          skipping = false;
          continue;
        }
        session.close();
        const failed = await trouble((err as Error).message);
        if (failed) return failed;
        continue;
      } finally {
        signal.removeEventListener('abort', onStop);
        stream = null;
      }
      if (wantRewind) continue;
      const endLine = parseAttachEnd(stderr);
      if (!endLine && skipping) {
        skipping = false;
        continue;
      }
      if (!endLine) {
        const failed = await trouble(`the job's output stream ended early${stderr.trim() ? `: ${stderr.trim().slice(-200)}` : ''}`);
        if (failed) return failed;
        continue;
      }
      unreachableSince = null;
      pause = 100;
      if ('size' in endLine && pos.offset < endLine.size) continue; // tail stopped before the end: read the rest
      if (trace.needsRewind) {
        wantRewind = true;
        continue;
      }
      return endCauseOf(endLine);
    }
    return null;
  }

  /** Whether the cloud confirms the VM no longer exists (a failed look counts as no). */
  private async vmGone(vm: VmRow): Promise<boolean> {
    const provider = this.d.providers.get(vm.provider);
    if (!provider) return false;
    try {
      const found = await Promise.race([provider.describe([vmRef(vm)]), new Promise<null>((r) => setTimeout(() => r(null), 15_000).unref())]);
      if (found === null) return false;
      // Gone only by a complete answer (a partial list is "unknown", never "gone").
      return absentFrom(found, vmRef(vm));
    } catch {
      return false;
    }
  }

  /**
   * Kill a detached job's process group (cancel, timeout); bounded, best effort: deleting the VM is
   * the backstop. With `afterScriptS` > 0 a cancel starts the job's after_script on the VM:
   * `afterScript` says it runs (watch it, then kill again to clean up).
   */
  private async killRemote(vm: VmRow, jobId: number, reason: 'canceled' | 'timeout', session: SshSession | undefined, log: Logger, afterScriptS = 0): Promise<{ session: SshSession | undefined; afterScript: boolean }> {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        if (!session || session.closed) {
          const info = this.connectInfo(vm);
          if (!info) return { session: undefined, afterScript: false };
          session = await connectSsh(info, { timeoutMs: 10_000 });
        }
        const killed = new AbortController();
        const t = setTimeout(() => killed.abort(), 10_000);
        try {
          const res = await session.exec(killCommand(jobId, reason, afterScriptS), { signal: killed.signal });
          return { session, afterScript: res.exitCode === AFTER_SCRIPT_RUNNING };
        } finally {
          clearTimeout(t);
        }
      } catch (err) {
        session?.close();
        session = undefined;
        log.warn({ err: (err as Error).message, attempt }, 'could not kill the job on its VM; deleting the VM ends it');
        if (isHostKeyRefusal(err)) return { session: undefined, afterScript: false }; // not our VM: say nothing more to it
      }
    }
    return { session: undefined, afterScript: false };
  }

  /** How to reach the VM, and its OS, from its provider; undefined when provider, key or address is missing. */
  private providerConnectInfo(vm: VmRow): ConnectInfo | undefined {
    const provider = this.d.providers.get(vm.provider);
    const key = this.d.store.vmPrivateKey(vm);
    if (!provider || !key || !vm.internal_ip) return undefined;
    return provider.connectInfo({ ...vmRef(vm), internalIp: vm.internal_ip }, key);
  }

  /** providerConnectInfo pinned to the row's host key (re-attach after a restart included); throws HostKeyUnpinnedError without one. */
  private connectInfo(vm: VmRow): ConnectInfo | undefined {
    const info = this.providerConnectInfo(vm);
    return info && pinnedConnectInfo(info, vm);
  }

  /** The VM answered with another host key (or has none pinned): fail it; the job ends as a system failure on the normal path. */
  private async refuseVm(vm: VmRow, err: HostKeyMismatchError | HostKeyUnpinnedError, log: Logger): Promise<void> {
    reportHostKeyRefusal({ metrics: this.d.metrics, log }, vm, err);
    this.d.metrics.vmFailures.inc({ class: vm.class, reason: refusalReason(err) });
    await this.d.store.transition(vm.id, ['assigned', 'running'], 'failed', { failure: err.message.slice(0, 500) }).catch((e) => log.warn({ err: e }, 'could not mark the VM failed'));
  }

  private observeStart(ctx: JobContext, startedAt: number, log: Logger): void {
    const pickup = (startedAt - ctx.pickedAt) / 1000;
    const latency = (ctx.queuedSeconds ?? 0) + pickup;
    this.d.metrics.pickupToFirstLine.observe({ class: ctx.cls.name }, pickup);
    this.d.metrics.jobStartLatency.observe({ class: ctx.cls.name }, latency);
    log.info({ startLatencySeconds: Number(latency.toFixed(3)), pickupSeconds: Number(pickup.toFixed(3)) }, 'job started');
    void this.d.store.markJobStarted(ctx.job.id, new Date(startedAt)).catch((err) => log.warn({ err }, 'could not record job start'));
  }

  /** How the class runs a job's bash script (executor, default image, runner-set variables, signed cache URLs). */
  private async scriptOptions(cls: ClassConfig, job: JobPayload, timeoutSeconds: number): Promise<ScriptOptions> {
    return {
      cache: await this.signCache(job, timeoutSeconds),
      executor: cls.executor ?? 'shell',
      defaultImage: cls.defaultImage ?? null,
      ...(cls.pullPolicy ? { pullPolicy: cls.pullPolicy } : {}),
      runnerVariables: runnerVariables(cls),
      tlsCa: this.d.tlsCa ?? null,
      gitlabUrl: this.d.config.gitlab.url,
    };
  }

  /** The job's cache entries with URLs signed to outlive its timeout; null without a shard cache. */
  private async signCache(job: JobPayload, timeoutSeconds: number): Promise<ScriptOptions['cache']> {
    const signer = this.d.cache;
    const cfg = this.d.config.cache;
    if (!signer || !cfg || !job.cache?.length) return null;
    const plan = cachePlan(job, cfg.prefix);
    const ttl = timeoutSeconds + cfg.urlSlackMs / 1000;
    const entries: SignedCacheEntry[] = await Promise.all(
      plan.entries.map(async (e) => ({
        ...e,
        restore: await Promise.all(e.restore.map(async (r) => ({ key: r.key, url: await signer.read(r.object, ttl) }))),
        save: e.save ? { key: e.save.key, url: await signer.write(e.save.object, ttl), where: signer.where(e.save.object) } : null,
      })),
    );
    return { entries, warnings: plan.warnings };
  }

  private outcome(cause: EndCause, ctx: JobContext, trace: TraceUploader): Omit<JobOutcome, 'finishedAt' | 'traceBytes' | 'traceChecksum'> {
    switch (cause.kind) {
      case 'exit':
        if (cause.reason === 'image_pull_failure') {
          // GitLab knows the reason since 16.1; an older one is told script_failure, as gitlab-runner does.
          const known = ctx.job.features?.failure_reasons?.includes('image_pull_failure');
          trace.append('\nERROR: Job failed: a docker image of the job could not be pulled (see above)\n');
          return { result: 'failed', exitCode: null, failureReason: known ? 'image_pull_failure' : 'script_failure' };
        }
        if (cause.reason === 'upload_failure' || cause.reason === 'download_failure') {
          trace.append(`\nERROR: Job failed: ${cause.reason === 'upload_failure' ? 'uploading its artifacts' : 'downloading the artifacts of a job it depends on'} failed (see above)\n`);
          return { result: 'failed', exitCode: null, failureReason: 'script_failure' };
        }
        if (cause.reason === 'runner_system_failure') {
          trace.append('\nERROR: Job failed (system failure): preparing the job on its VM failed (see above)\n');
          return { result: 'failed', exitCode: null, failureReason: 'runner_system_failure' };
        }
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
      case 'unsupported':
        trace.append(`\nERROR: Job failed: ${cause.message}\n`);
        return { result: 'failed', exitCode: null, failureReason: 'runner_unsupported' };
    }
  }

  /**
   * Close the job in the database first, then delete the VM and tell GitLab, in parallel. Only the
   * manager whose closing transaction won reports: the loser of a race (another manager closed
   * the job first) says nothing to GitLab and leaves the VM to the winner. Returns whether it won.
   */
  private async close(ctx: JobContext, outcome: JobOutcome, startedAtMs: number | null, log: Logger): Promise<boolean> {
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
    if (!(await this.d.store.closeJob(job.id, outcome, event))) {
      log.warn({ result: outcome.result }, 'the job was already closed by another manager; not reporting it');
      return false;
    }
    this.d.metrics.billingEvents.inc({ class: cls.name });
    this.d.metrics.jobsTotal.inc({ class: cls.name, result: outcome.failureReason === 'runner_system_failure' ? 'system_failure' : outcome.result });
    this.d.metrics.jobDuration.observe({ class: cls.name }, event.durationSeconds);
    this.d.pool.deleteNow(vm.id);
    if (this.d.reports) await this.d.reports.report(job.id, job.token, outcome);
    else await reportFinal(this.d.gitlab, this.d.store, this.d.clock, job.id, job.token, outcome, this.d.log);
    return true;
  }
}

/**
 * Who a job bills and counts against: GitLab's own values, never the job's. job_info.project_id,
 * else the first definitions of the predefined variables: GitLab lists its predefined variables
 * before the project's, group's and `.gitlab-ci.yml`'s, so a later definition of the same name is
 * the job's and must not move the bill to another namespace.
 */
export function jobIdentity(job: JobPayload): { projectId: number | null; pipelineId: number | null; namespaceId: number | null; rootNamespaceId: number | null } {
  const { namespaceId, rootNamespaceId } = namespaceIds(job);
  const first = job.variables.find((v) => v.key === 'CI_PROJECT_ID')?.value;
  return {
    projectId: job.job_info?.project_id ?? (first && /^\d{1,15}$/.test(first) ? Number(first) : null), // past 2^53 it is not the id
    pipelineId: pipelineId(job),
    namespaceId,
    rootNamespaceId: rootNamespaceId ?? namespaceId,
  };
}

/**
 * Variables gitlab-runner sets itself. GitLab sends the runner's CI_RUNNER_ID, CI_RUNNER_TAGS and
 * CI_RUNNER_DESCRIPTION with the job (it knows the runner; with authentication tokens the runner
 * does not know its tags); those come later in the list and win.
 */
export function runnerVariables(cls: ClassConfig): Record<string, string> {
  const token = cls.runnerToken.replace(/^glrt-/, '');
  return {
    CI_RUNNER_VERSION: RUNNER_VERSION,
    CI_RUNNER_REVISION: 'runner-fleet',
    CI_RUNNER_EXECUTABLE_ARCH: RUNNER_EXECUTABLE_ARCH,
    CI_RUNNER_SHORT_TOKEN: token.slice(0, 8),
    CI_DISPOSABLE_ENVIRONMENT: 'true',
  };
}

/**
 * GitLab documents CI_RUNNER_EXECUTABLE_ARCH as the OS/architecture of the runner executable, not
 * of the job's environment: here the manager process (Go's names: x64 is amd64).
 */
const RUNNER_EXECUTABLE_ARCH = `${process.platform}/${process.arch === 'x64' ? 'amd64' : process.arch === 'ia32' ? '386' : process.arch}`;

/**
 * What a Windows job asks that its PowerShell script cannot do yet: artifacts and dependencies'
 * artifacts, and steps besides script/after_script such as `release` (claimed to GitLab only by
 * bash classes). Refused, naming it, rather than run with its artifacts or release silently dropped.
 */
export function windowsUnsupported(job: JobPayload): string | null {
  const extra = extraSteps(job);
  if (extra.length) return `the ${extra.map((s) => s.stage.replace(/^step_/, '')).join(', ')} step is not supported on Windows classes yet`;
  if (job.artifacts?.length) return 'artifacts are not supported on Windows classes yet (the job declares artifacts:)';
  if (job.dependencies?.some((d) => d.artifacts_file)) return "artifacts are not supported on Windows classes yet (the job needs a dependency's artifacts)";
  return null;
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
