// GitLab Runner API client: job request, trace append, job update. Every call has a timeout;
// network errors, 5xx and 429 are retried with jittered backoff (p-retry), a bounded number of
// times. Tokens go in bodies and headers only, never into logs or error messages.
import type { IncomingHttpHeaders } from 'node:http';
import { arch, platform } from 'node:os';
import { rootCertificates } from 'node:tls';
import pRetry, { AbortError } from 'p-retry';
import type { Logger } from 'pino';
import { Agent, request, type Dispatcher } from 'undici';
import { deadline } from '../connect/deadline.js';
import { scrubUrls } from '../isolation/redact.js';
import { UnreadablePayload } from './job-payload.js';

export const RUNNER_VERSION = '0.1.0';

export interface GitLabClientOptions {
  url: string;
  timeoutMs: number;
  log: Logger;
  systemId: string;
  runnerName?: string;
  version?: string;
  /** Retries of one call on network errors, 5xx and 429. */
  retries?: number;
  /** Base of the backoff (tests use a short one). */
  minRetryMs?: number;
  /** Largest job payload read (default 64 MiB); a larger one is failed back, not held in memory. */
  maxPayloadBytes?: number;
  /** PEM of gitlab.tlsCaFile: trusted besides the system's CAs. */
  tlsCa?: string | null;
}

export type RequestJobResult = { kind: 'job'; raw: unknown } | { kind: 'none' } | { kind: 'forbidden' };

export interface PatchTraceResult {
  ok: boolean;
  /** Where the next chunk must start (GitLab's view after a 416). */
  nextOffset: number;
  jobStatus?: string;
  updateIntervalMs?: number;
  canceled: boolean;
  /** GitLab's HTTP status: 202, 416 (resend from nextOffset), 409 (busy), 403/404 (job over). */
  status: number;
}

export interface JobUpdate {
  state: 'running' | 'success' | 'failed';
  exitCode?: number;
  failureReason?: string;
  checksum?: string;
  bytesize?: number;
}

export interface UpdateJobResult {
  result: 'ok' | 'accepted' | 'abort' | 'notFound' | 'traceMismatch';
  jobStatus?: string;
  updateIntervalMs?: number;
  canceled: boolean;
}

export class GitLabHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'GitLabHttpError';
  }
}

/**
 * Features this runner supports, named as GitLab Runner's FeaturesInfo (only those names: GitLab's
 * `trace_sections` is a flag it sends in the job payload, not a runner feature). GitLab uses them to
 * shape the payload; `cancel_gracefully` makes a cancel go through `canceling`, so the job can
 * still send its trace and final state.
 */
const FEATURES = {
  variables: true,
  image: false,
  services: false,
  artifacts: false,
  cache: false,
  shared: false,
  upload_multiple_artifacts: false,
  upload_raw_artifacts: false,
  session: false,
  terminal: false,
  refspecs: true,
  masking: true,
  proxy: false,
  raw_variables: true,
  artifacts_exclude: false,
  multi_build_steps: true,
  trace_reset: true,
  trace_checksum: true,
  trace_size: true,
  vault_secrets: false,
  cancelable: true,
  return_exit_code: true,
  service_variables: false,
  service_multiple_aliases: false,
  image_executor_opts: false,
  service_executor_opts: false,
  cancel_gracefully: true,
  native_steps_integration: false,
  two_phase_job_commit: false,
  fallback_cache_keys: false,
};

export type RunnerExecutor = 'shell' | 'docker';

/** What a class's job script can do, which decides the features offered to GitLab. */
export interface RunnerKind {
  executor: RunnerExecutor;
  /** Windows jobs run the PowerShell script, which has no artifact steps yet. */
  windows?: boolean;
  /** The shard has a distributed cache (bash scripts restore and save `cache:`). */
  cache?: boolean;
}

const CACHE_FEATURES = { cache: true, fallback_cache_keys: true };

/**
 * The PowerShell script (Windows) runs `script` and `after_script` only: it does not claim
 * multi_build_steps, so GitLab refuses it a job with `release:` instead of handing it one whose
 * release step would be skipped.
 */
const WINDOWS_FEATURES = { ...FEATURES, multi_build_steps: false };

/** The bash script (Linux, macOS) collects, uploads and downloads artifacts on the VM. */
const BASH_FEATURES = {
  ...FEATURES,
  artifacts: true,
  upload_multiple_artifacts: true,
  upload_raw_artifacts: true,
  artifacts_exclude: true,
};

/** A docker class also runs `image:` and `services:` (with their variables, aliases and executor_opts). */
const DOCKER_FEATURES = {
  ...BASH_FEATURES,
  image: true,
  services: true,
  service_variables: true,
  service_multiple_aliases: true,
  image_executor_opts: true,
  service_executor_opts: true,
};

const isCanceled = (s: string | undefined) => s === 'canceling' || s === 'canceled';

/**
 * One answer of GitLab: status, headers and the body as a Node stream. Over undici's `request`
 * rather than `fetch`: fetch wraps every answer in WHATWG streams, a Request/Response pair and a
 * tee, which at a thousand running jobs (a trace PATCH or a job PUT every few seconds each) was
 * most of the manager's garbage and CPU (README, Scale).
 */
class Answer {
  constructor(
    readonly status: number,
    private readonly raw: IncomingHttpHeaders,
    readonly body: Dispatcher.ResponseData['body'],
  ) {}

  header(name: string): string | undefined {
    const v = this.raw[name];
    return Array.isArray(v) ? v.join(', ') : v;
  }
}

/** GitLab's X-GitLab-Trace-Update-Interval in ms, if sane (1 s to 1 h); else undefined. */
function updateInterval(res: Answer): number | undefined {
  const s = Number(res.header('x-gitlab-trace-update-interval'));
  return Number.isFinite(s) && s > 0 ? Math.min(Math.max(s, 1), 3600) * 1000 : undefined;
}

/**
 * Lets go of a body we do not read: a small one is drained so its connection is reused, a big or
 * stalled one is cut (its connection closed). Bounded, as every call must be.
 */
async function discard(body: Answer['body'], ms = 1000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([body.dump({ limit: 64 * 1024 }).catch(() => {}), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
  if (!body.destroyed && !body.readableEnded) body.destroy();
}

/** For answers read by their status and headers alone. */
const discarded = async (res: Answer): Promise<Answer> => {
  await discard(res.body);
  return res;
};

/** The body as text, or (over: true) its first 512 bytes once it passes `max`. */
async function readCapped(res: Answer, max: number): Promise<{ text: string; over: boolean }> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of res.body) {
    const b = chunk as Buffer;
    n += b.length;
    chunks.push(b);
    if (n > max) {
      res.body.destroy();
      return { text: Buffer.concat(chunks).subarray(0, 512).toString('utf8'), over: true };
    }
  }
  return { text: Buffer.concat(chunks).toString('utf8'), over: false };
}

export class GitLabClient {
  private readonly base: string;
  private readonly lastUpdate = new Map<string, string>();
  private readonly userAgent: string;
  /** Keep-alive connections to GitLab, trusting gitlab.tlsCaFile as well when one is given. */
  private readonly agent: Agent;
  private readonly refused: string | undefined;

  constructor(private readonly o: GitLabClientOptions) {
    this.base = o.url.replace(/\/+$/, '');
    this.userAgent = `runner-fleet ${o.version ?? RUNNER_VERSION} (${platform()}/${arch() === 'x64' ? 'amd64' : arch()})`;
    const u = URL.canParse(this.base) ? new URL(this.base) : undefined;
    // The config refuses such a URL; a client built another way refuses it too (as fetch did), naming it scrubbed.
    if (u && (u.username || u.password)) this.refused = `a URL that includes credentials is refused: ${scrubUrls(o.url, [o.url])}`;
    this.agent = new Agent({ keepAliveTimeout: 30_000, ...(o.tlsCa ? { connect: { ca: [...rootCertificates, o.tlsCa] } } : {}) });
  }

  /** Closes the kept-alive connections (calls in flight finish first). */
  async close(): Promise<void> {
    await this.agent.close();
  }

  private info(kind: RunnerKind = { executor: 'shell' }) {
    const executor = kind.executor;
    return {
      name: this.o.runnerName ?? 'runner-fleet',
      version: this.o.version ?? RUNNER_VERSION,
      revision: 'runner-fleet',
      platform: platform(),
      architecture: arch() === 'x64' ? 'amd64' : arch(),
      executor: executor === 'docker' ? 'docker' : 'custom',
      shell: 'bash',
      features: kind.windows ? WINDOWS_FEATURES : { ...(executor === 'docker' ? DOCKER_FEATURES : BASH_FEATURES), ...(kind.cache ? CACHE_FEATURES : {}) },
    };
  }

  /**
   * One HTTP call with timeout and bounded retries of transient failures. `read` takes what it
   * needs of the answer (or discards its body) under the same timeout, which ends with it.
   */
  private async call<T>(what: string, path: string, init: { method: 'GET' | 'POST' | 'PUT' | 'PATCH'; headers?: Record<string, string>; body?: string | Buffer; signal?: AbortSignal | undefined }, read: (res: Answer) => Promise<T>): Promise<T> {
    return pRetry(
      async () => {
        if (init.signal?.aborted) throw new AbortError(`${what}: aborted`);
        if (this.refused) throw new AbortError(`${what}: ${this.refused}`);
        // The caller's signal (shutdown) may cut the wait for an answer, never an answer that has
        // arrived: a job GitLab has handed out must be read and recorded, or it is lost.
        const untilAnswer = new AbortController();
        const cut = () => untilAnswer.abort();
        init.signal?.addEventListener('abort', cut, { once: true });
        const limit = deadline(this.o.timeoutMs, untilAnswer.signal);
        try {
          let res: Answer;
          try {
            const headers = { 'user-agent': this.userAgent, ...init.headers };
            // request() follows no redirect: one would send the job token (a header) wherever Location points.
            const r = await request(`${this.base}${path}`, { method: init.method, headers, body: init.body ?? null, signal: limit.signal, dispatcher: this.agent });
            res = new Answer(r.statusCode, r.headers, r.body);
          } catch (err) {
            if (init.signal?.aborted) throw new AbortError(`${what}: aborted`);
            const e = err as Error & { code?: string; cause?: { code?: string; message?: string } };
            const why = limit.signal.aborted && (limit.signal.reason as Error | undefined)?.name === 'TimeoutError' ? `no answer within ${this.o.timeoutMs} ms` : `${e.message}${e.code ? ` (${e.code})` : e.cause ? ` (${e.cause.code ?? e.cause.message})` : ''}`;
            // undici puts the whole URL (user:password, query) in some messages.
            throw new Error(`${what}: ${scrubUrls(why, [this.o.url])}`);
          } finally {
            init.signal?.removeEventListener('abort', cut);
          }
          if (res.status >= 500 || res.status === 429) {
            await discard(res.body);
            throw new GitLabHttpError(res.status, `${what}: HTTP ${res.status}`);
          }
          // What goes wrong reading an answer is not retried: the call was answered (a job handed
          // out stays handed out), so the caller decides.
          return await read(res).catch((err: unknown) => {
            throw new AbortError(err instanceof Error ? err : new Error(String(err)));
          });
        } finally {
          limit.clear();
        }
      },
      {
        retries: this.o.retries ?? 4,
        minTimeout: this.o.minRetryMs ?? 500,
        maxTimeout: 10_000,
        randomize: true,
        // Not p-retry's `signal`: it rejects an attempt that succeeded if the signal fires during it.
        shouldRetry: () => !init.signal?.aborted,
        onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
          if (retriesLeft > 0) this.o.log.debug({ err: error.message, attempt: attemptNumber }, 'GitLab call failed; retrying');
        },
      },
    );
  }

  /** Ask for a job; `kind` decides the features offered (a docker class takes `image:` and `services:`). */
  async requestJob(runnerToken: string, signal?: AbortSignal, kind: RunnerKind = { executor: 'shell' }): Promise<RequestJobResult> {
    const key = runnerToken; // kept in memory only
    const body = JSON.stringify({ token: runnerToken, system_id: this.o.systemId, info: this.info(kind), last_update: this.lastUpdate.get(key) ?? '' });
    const max = this.o.maxPayloadBytes ?? 64 * 1024 * 1024;
    const { res, payload } = await this.call('job request', '/api/v4/jobs/request', { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal }, async (res) => {
      if (res.status === 201) return { res, payload: await readCapped(res, max) };
      await discard(res.body);
      return { res, payload: undefined };
    });
    const lu = res.header('x-gitlab-last-update');
    if (lu) this.lastUpdate.set(key, lu);
    if (payload) {
      // The payload validator names the problem; the reason never quotes the body (it holds secrets).
      if (payload.over) return { kind: 'job', raw: new UnreadablePayload(`larger than ${max} bytes`, payload.text) };
      try {
        return { kind: 'job', raw: JSON.parse(payload.text) };
      } catch {
        return { kind: 'job', raw: new UnreadablePayload(`not valid JSON (${Buffer.byteLength(payload.text)} bytes, cut off or corrupted)`, payload.text.slice(0, 512)) };
      }
    }
    if (res.status === 204 || res.status === 409) return { kind: 'none' };
    if (res.status === 403 || res.status === 401) return { kind: 'forbidden' };
    throw new GitLabHttpError(res.status, `job request: unexpected HTTP ${res.status}`);
  }

  async patchTrace(jobId: number, jobToken: string, chunk: Buffer, offset: number): Promise<PatchTraceResult> {
    const end = offset + chunk.length - 1;
    const res = await this.call(`trace of job ${jobId}`, `/api/v4/jobs/${jobId}/trace`, {
      method: 'PATCH',
      headers: { 'job-token': jobToken, 'content-type': 'text/plain', 'content-range': `${offset}-${end}` },
      body: chunk,
    }, discarded);
    const jobStatus = res.header('job-status');
    const interval = updateInterval(res);
    const common = { status: res.status, ...(jobStatus ? { jobStatus } : {}), ...(interval ? { updateIntervalMs: interval } : {}) };
    // GitLab answers `Range: 0-<size it holds>` (not an inclusive end: an empty trace is `0-0`,
    // see gitlab's jobs_trace_spec), so the next chunk starts at that number.
    // Up to 15 digits: a larger size is no offset we could resend from (nor a safe integer).
    const held = /^\d{1,15}-(\d{1,15})$/.exec(res.header('range') ?? '');
    if (res.status === 202 || res.status === 200) return { ok: true, nextOffset: held ? Number(held[1]) : end + 1, canceled: isCanceled(jobStatus), ...common };
    if (res.status === 416) return { ok: false, nextOffset: held ? Number(held[1]) : 0, canceled: isCanceled(jobStatus), ...common };
    // 403: the job is no longer running (canceled, finished, erased) or the token is stale.
    if (res.status === 403 || res.status === 404) return { ok: false, nextOffset: offset, canceled: true, ...common };
    // 409: another write to this trace is in progress on GitLab's side; send again later.
    if (res.status === 409) return { ok: false, nextOffset: offset, canceled: false, ...common };
    throw new GitLabHttpError(res.status, `trace of job ${jobId}: unexpected HTTP ${res.status}`);
  }

  async updateJob(jobId: number, jobToken: string, u: JobUpdate): Promise<UpdateJobResult> {
    const body = JSON.stringify({
      info: this.info(),
      token: jobToken,
      state: u.state,
      ...(u.failureReason ? { failure_reason: u.failureReason } : {}),
      ...(u.exitCode !== undefined ? { exit_code: u.exitCode } : {}),
      ...(u.checksum ? { checksum: u.checksum, output: { checksum: u.checksum, bytesize: u.bytesize ?? 0 } } : {}),
    });
    const res = await this.call(`update of job ${jobId}`, `/api/v4/jobs/${jobId}`, { method: 'PUT', headers: { 'job-token': jobToken, 'content-type': 'application/json' }, body }, discarded);
    const jobStatus = res.header('job-status');
    const interval = updateInterval(res);
    const common = { canceled: isCanceled(jobStatus), ...(jobStatus ? { jobStatus } : {}), ...(interval ? { updateIntervalMs: interval } : {}) };
    switch (res.status) {
      case 200:
        return { result: 'ok', ...common };
      case 202:
        return { result: 'accepted', ...common };
      case 403:
        return { result: 'abort', ...common };
      case 404:
        return { result: 'notFound', ...common };
      case 412:
        return { result: 'traceMismatch', ...common };
      default:
        throw new GitLabHttpError(res.status, `update of job ${jobId}: unexpected HTTP ${res.status}`);
    }
  }
}
