// A GitLab Runner API emulator: a real HTTP server with a job queue per runner token, the
// request/trace/update endpoints with GitLab's status codes and headers, cancelation, fault
// injection, and a real git repository for the jobs to fetch. Used by the demo, tests, benches.
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { createDemoRepo, gitHttpBackend } from './git-repo.js';

export type EmuJobState = 'pending' | 'running' | 'success' | 'failed' | 'canceling' | 'canceled';

export interface EnqueueSpec {
  runnerToken: string;
  name?: string;
  script: string[];
  afterScript?: string[];
  /** A `release` step (GitLab sends it, between script and after_script, to runners with multi_build_steps). */
  release?: string[];
  variables?: { key: string; value: string; masked?: boolean; file?: boolean; public?: boolean }[];
  timeoutS?: number;
  /** Fetch the emulator's git repository (default true); false sets GIT_STRATEGY=none. */
  git?: boolean;
  projectId?: number;
  /** Rewrite the payload before it is served (malformed-payload tests). */
  mutate?: (payload: Record<string, unknown>) => unknown;
  /**
   * Serve exactly this payload (malformed-payload tests). Its `id`/`token`, when usable, become
   * the job's, so the runner can still fail the job back.
   */
  raw?: unknown;
  /** Serve this text as the body instead of the payload's JSON (truncated or broken JSON tests). */
  rawText?: (payload: Record<string, unknown>) => string;
  /** `image:` and `services:` of the job, as GitLab sends them (docker executor). */
  image?: Record<string, unknown> | null;
  services?: Record<string, unknown>[];
  /** Registry credentials sent with the job (`credentials`, type registry). */
  credentials?: { type: string; url: string; username: string; password: string }[];
  /** features.failure_reasons: what this GitLab understands (default: GitLab 17's list). */
  failureReasons?: string[];
  /** `artifacts` entries of the job, as GitLab sends them. */
  artifacts?: Record<string, unknown>[];
  /** Jobs whose artifacts this one needs (`dependencies`), filled in when the job is handed out. */
  dependencies?: number[];
  /** `cache` entries (GitLab computes the keys, with the -protected / -non_protected suffix). */
  cache?: Record<string, unknown>[];
  /** The pipeline's ref is protected (CI_COMMIT_REF_PROTECTED). */
  protectedRef?: boolean;
  /** Check out the branch whose `lib` is a git submodule (on the same server). */
  submodule?: boolean;
}

/** An artifact a job uploaded, as the emulator keeps it. */
export interface EmuArtifact {
  artifactType: string;
  artifactFormat: string;
  expireIn: string | null;
  filename: string;
  size: number;
  data: Buffer;
}

/** The failure reasons GitLab 17 lists in a job payload's features.failure_reasons. */
export const GITLAB_FAILURE_REASONS = [
  'unknown_failure', 'script_failure', 'api_failure', 'stuck_or_timeout_failure', 'runner_system_failure', 'missing_dependency_failure',
  'runner_unsupported', 'stale_schedule', 'job_execution_timeout', 'archived_failure', 'unmet_prerequisites', 'scheduler_failure',
  'data_integrity_failure', 'forward_deployment_failure', 'user_blocked', 'project_deleted', 'insufficient_bridge_permissions',
  'downstream_bridge_project_not_found', 'invalid_bridge_trigger', 'upstream_bridge_project_not_found', 'insufficient_upstream_permissions',
  'bridge_pipeline_is_child_pipeline', 'downstream_pipeline_creation_failed', 'secrets_provider_not_found', 'reached_max_descendant_pipelines_depth',
  'ip_restriction_failure', 'reached_max_pipeline_hierarchy_size', 'reached_downstream_pipeline_trigger_rate_limit', 'image_pull_failure',
];

export interface EmuJob {
  id: number;
  runnerToken: string;
  token: string;
  state: EmuJobState;
  trace: string;
  exitCode?: number;
  failureReason?: string;
  checksum?: string;
  bytesize?: number;
  /** Whether the final update's checksum and size matched the trace held (GitLab only logs it). */
  traceValid?: boolean;
  enqueuedAt: number;
  pickedAt?: number;
  finishedAt?: number;
  /** When the first trace byte arrived (benches: pick-up -> first output). */
  firstTraceAt?: number;
  artifacts: EmuArtifact[];
  /** `info` of the job request that took the job (executor, features). */
  runnerInfo?: { executor?: string; features?: Record<string, unknown> };
  updates: number;
}

export interface EmulatorFaults {
  /** Answer /jobs/request with this status (e.g. 500) while set. */
  requestStatus?: number;
  /** Answer the next trace PATCH with 416 once. */
  traceRangeMismatchOnce?: boolean;
  /** Answer the next trace PATCH with this status once (e.g. 500, 409), before touching it. */
  tracePatchStatusOnce?: number;
  /** Answer this many final PUTs with 202 (trace still being processed) before taking one. */
  updateAcceptedTimes?: number;
  /** Answer every final PUT (state success/failed) with this status while set (e.g. 503). */
  finalUpdateStatus?: number;
  /**
   * On the next trace PATCH, lose every byte of the trace past this offset and answer 416
   * `Range: 0-<offset>` (a trace store that dropped chunks): the runner must resend from there.
   */
  traceTruncateOnce?: number;
  /** Hold every /jobs/request this long before answering (a loaded GitLab), so overlap is visible. */
  requestDelayMs?: number;
  /** Answer this many artifact uploads with `status` (e.g. 502) before taking one. */
  artifactUploadFailures?: { status: number; times: number };
  /** A lower artifact size limit than the emulator's own while set (413 above it). */
  artifactMaxBytes?: number;
  /** Answer this many artifact downloads with `status` before serving one. */
  artifactDownloadFailures?: { status: number; times: number };
}

export interface GitLabEmulator {
  url: string;
  faults: EmulatorFaults;
  enqueue(spec: EnqueueSpec): number;
  cancel(jobId: number): void;
  job(jobId: number): EmuJob;
  jobs(): EmuJob[];
  waitFor(jobId: number, pred: (j: EmuJob) => boolean, timeoutMs: number): Promise<EmuJob>;
  waitForFinal(jobId: number, timeoutMs: number): Promise<EmuJob>;
  stats(): EmulatorStats;
  /** Drop a finished job's record (long soaks keep the emulator's memory flat). */
  forget(jobId: number): void;
  close(): Promise<void>;
}

export interface EmulatorStats {
  requests: number;
  /** Requests answered 204 at once because the runner's last_update was current. */
  upToDate: number;
  pending: number;
  running: number;
  finished: number;
  /** Most /jobs/request calls being answered at once since start. */
  maxRequestsInFlight: number;
  /** /jobs/request calls being answered now. */
  requestsInFlight: number;
}

/** The emulator's own record: the trace kept as bytes, so chunks may split characters. */
type JobRecord = Omit<EmuJob, 'trace'> & { traceBuf: Buffer };

const FINAL: EmuJobState[] = ['success', 'failed', 'canceled'];

export async function startGitLabEmulator(opts: {
  host?: string; port?: number; traceUpdateIntervalS?: number; log?: Logger; runnerTokens?: string[];
  /** Largest artifact accepted (GitLab's max_artifacts_size; default 100 MiB); larger ones get 413. */
  maxArtifactBytes?: number;
} = {}): Promise<GitLabEmulator> {
  const host = opts.host ?? '127.0.0.1';
  const interval = String(opts.traceUpdateIntervalS ?? 3);
  const repo = createDemoRepo();
  const jobs = new Map<number, JobRecord>();
  const payloads = new Map<number, unknown>();
  const queues = new Map<string, number[]>();
  const faults: EmulatorFaults = {};
  let nextId = 1000;
  let requests = 0;
  let upToDate = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  // GitLab's runner queue value: changes when a job is queued for the runner; a request that
  // sends the current value back gets 204 without a queue lookup.
  const queueValues = new Map<string, string>();
  const bumpQueue = (token: string) => queueValues.set(token, randomBytes(8).toString('hex'));
  let baseUrl = '';

  // Close drops open keep-alive connections too: a client's connection must not hold a test's teardown.
  const app = Fastify({ logger: false, bodyLimit: 64 * 1024 * 1024, forceCloseConnections: true });
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  const jobToken = (req: FastifyRequest) => (req.headers['job-token'] as string | undefined) ?? ((req.body as { token?: string } | undefined)?.token);
  // GitLab answers 403 for an unknown job too: a 404 could come from any proxy on the way.
  const authJob = (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply): JobRecord | null => {
    const job = jobs.get(Number(req.params.id));
    if (!job || jobToken(req) !== job.token) {
      void reply.code(403).send({ message: '403 Forbidden' });
      return null;
    }
    return job;
  };

  app.post('/api/v4/jobs/request', async (req, reply) => {
    requests++;
    maxInFlight = Math.max(maxInFlight, ++inFlight);
    try {
      if (faults.requestDelayMs) await new Promise((r) => setTimeout(r, faults.requestDelayMs));
      return await answerJobRequest(req, reply);
    } finally {
      inFlight--;
    }
  });

  async function answerJobRequest(req: FastifyRequest, reply: FastifyReply) {
    const body = (req.body ?? {}) as { token?: string; last_update?: string; info?: EmuJob['runnerInfo'] };
    if (faults.requestStatus) return reply.code(faults.requestStatus).send({ message: 'injected fault' });
    if (!body.token || (opts.runnerTokens && !opts.runnerTokens.includes(body.token))) return reply.code(403).send({ message: '403 Forbidden' });
    if (!queueValues.has(body.token)) bumpQueue(body.token);
    const current = queueValues.get(body.token)!;
    if (body.last_update && body.last_update === current) {
      upToDate++;
      return reply.code(204).header('X-GitLab-Last-Update', current).send();
    }
    const queue = queues.get(body.token) ?? [];
    const id = queue.shift();
    if (id === undefined) return reply.code(204).header('X-GitLab-Last-Update', current).send();
    const job = jobs.get(id)!;
    job.state = 'running';
    job.pickedAt = Date.now();
    if (body.info) job.runnerInfo = body.info;
    const wanted = specs.get(id)?.dependencies ?? [];
    // GitLab sends each dependency with the token of the job being handed out (the dependency's
    // own token ended with it), and its artifacts file when it has one.
    (payloads.get(id) as Record<string, unknown>)['dependencies'] = wanted.map((depId) => {
      const dep = jobs.get(depId);
      const archive = dep?.artifacts.find((a) => a.artifactType === 'archive');
      return { id: depId, name: specs.get(depId)?.name ?? `job-${depId}`, token: job.token, ...(archive ? { artifacts_file: { filename: archive.filename, size: archive.size } } : {}) };
    });
    const payload = payloads.get(id) as Record<string, unknown>;
    (payload['job_info'] as Record<string, unknown>)['time_in_queue_seconds'] = (job.pickedAt - job.enqueuedAt) / 1000;
    (payload['job_info'] as Record<string, unknown>)['queue_size'] = queue.length;
    (payload['job_info'] as Record<string, unknown>)['queue_depth'] = queue.length;
    const spec = specs.get(id)!;
    const served = spec.raw !== undefined ? spec.raw : spec.mutate ? spec.mutate(payload) : payload;
    const text = spec.rawText ? spec.rawText(payload) : JSON.stringify(served);
    return reply.code(201).header('content-type', 'application/json').send(text);
  }

  app.patch<{ Params: { id: string } }>('/api/v4/jobs/:id/trace', async (req, reply) => {
    const job = authJob(req, reply);
    if (!job) return reply;
    void reply.header('Job-Status', job.state).header('X-GitLab-Trace-Update-Interval', interval);
    if (job.state !== 'running' && job.state !== 'canceling') return reply.code(403).send({ message: '403 Forbidden - Job is not running' });
    if (faults.tracePatchStatusOnce) {
      const status = faults.tracePatchStatusOnce;
      faults.tracePatchStatusOnce = undefined;
      return reply.code(status).send({ message: 'injected fault' });
    }
    const chunk = Buffer.isBuffer(req.body) ? req.body : Buffer.from(String(req.body ?? ''));
    if (faults.traceTruncateOnce !== undefined && faults.traceTruncateOnce < job.traceBuf.length) {
      job.traceBuf = job.traceBuf.subarray(0, faults.traceTruncateOnce);
      faults.traceTruncateOnce = undefined;
      return reply.code(416).header('Range', `0-${job.traceBuf.length}`).send({ message: '416 Range Not Satisfiable' });
    }
    const size = job.traceBuf.length;
    const range = req.headers['content-range'];
    if (range === undefined) return reply.code(400).send({ message: '400 Missing header Content-Range' });
    // `start-end`, end inclusive (an empty keep-alive PATCH sends `N-(N-1)`); an optional `/total`.
    const m = /^(\d+)-(\d+)(?:\/\d+)?$/.exec(String(range));
    const fits = m && Number(m[1]) === size && Number(m[2]) - Number(m[1]) + 1 === chunk.length;
    if (!fits || faults.traceRangeMismatchOnce) {
      faults.traceRangeMismatchOnce = false;
      // Like GitLab: `0-<bytes held>`, the offset the runner must resend from.
      return reply.code(416).header('Range', `0-${size}`).send({ message: '416 Range Not Satisfiable' });
    }
    job.traceBuf = Buffer.concat([job.traceBuf, chunk]);
    if (chunk.length > 0) job.firstTraceAt ??= Date.now();
    return reply.code(202).header('Range', `0-${job.traceBuf.length}`).send();
  });

  app.put<{ Params: { id: string } }>('/api/v4/jobs/:id', async (req, reply) => {
    const job = authJob(req, reply);
    if (!job) return reply;
    void reply.header('Job-Status', job.state);
    if (job.state !== 'running' && job.state !== 'canceling') return reply.code(403).send({ message: '403 Forbidden - Job is not running' });
    const body = req.body as { state?: string; exit_code?: number; failure_reason?: string; checksum?: string; output?: { checksum?: string; bytesize?: number } };
    job.updates++;
    if (body.state === 'running') return reply.code(200).send();
    if (body.state !== 'success' && body.state !== 'failed') return reply.code(400).send({ message: 'state is invalid' });
    const bytes = job.traceBuf;
    if (faults.finalUpdateStatus) return reply.code(faults.finalUpdateStatus).send({ message: 'injected fault' });
    if (faults.updateAcceptedTimes) {
      faults.updateAcceptedTimes--;
      return reply.code(202).header('Job-Status', 'running').header('X-GitLab-Trace-Update-Interval', interval).send();
    }
    if (body.output?.bytesize !== undefined && body.output.bytesize > bytes.length) {
      // The trace has not fully arrived: GitLab asks the runner to retry.
      return reply.code(202).header('X-GitLab-Trace-Update-Interval', interval).send();
    }
    job.checksum = body.output?.checksum ?? body.checksum;
    job.bytesize = body.output?.bytesize;
    if (job.checksum) job.traceValid = job.checksum === `crc32:${(crc32(bytes) >>> 0).toString(16).padStart(8, '0')}` && (job.bytesize ?? bytes.length) === bytes.length;
    job.state = job.state === 'canceling' ? 'canceled' : (body.state as EmuJobState);
    if (body.exit_code !== undefined) job.exitCode = body.exit_code;
    if (body.failure_reason) job.failureReason = body.failure_reason;
    job.finishedAt = Date.now();
    return reply.code(200).header('Job-Status', job.state).send();
  });

  // Artifacts: multipart `file` with artifact_type, artifact_format, expire_in (form fields or
  // query), JOB-TOKEN of the running job; 413 above the size limit, as GitLab.
  const maxArtifact = opts.maxArtifactBytes ?? 100 * 1024 * 1024;
  app.post<{ Params: { id: string }; Querystring: Record<string, string> }>('/api/v4/jobs/:id/artifacts', { bodyLimit: maxArtifact + 1024 * 1024 }, async (req, reply) => {
    const job = authJob(req, reply);
    if (!job) return reply;
    if (job.state !== 'running' && job.state !== 'canceling') return reply.code(403).send({ message: '403 Forbidden - Job is not running' });
    const fail = faults.artifactUploadFailures;
    if (fail && fail.times > 0) {
      fail.times--;
      return reply.code(fail.status).send({ message: 'injected fault' });
    }
    const ct = String(req.headers['content-type'] ?? '');
    if (!ct.startsWith('multipart/form-data') || !Buffer.isBuffer(req.body)) return reply.code(400).send({ message: '400 Bad request - file is missing' });
    const form = await new Response(req.body, { headers: { 'content-type': ct } }).formData().catch(() => null);
    const file = form?.get('file');
    if (!form || !file || typeof file === 'string') return reply.code(400).send({ message: '400 Bad request - file is missing' });
    const field = (k: string) => (form.get(k) as string | null) ?? req.query[k] ?? null;
    const data = Buffer.from(await file.arrayBuffer());
    if (data.length > Math.min(maxArtifact, faults.artifactMaxBytes ?? Infinity)) return reply.code(413).send({ message: '413 Request Entity Too Large' });
    const artifactType = field('artifact_type') ?? 'archive';
    const artifactFormat = field('artifact_format') ?? 'zip';
    job.artifacts = job.artifacts.filter((a) => a.artifactType !== artifactType);
    job.artifacts.push({ artifactType, artifactFormat, expireIn: field('expire_in'), filename: file.name, size: data.length, data });
    return reply.code(201).send({ id: job.id, artifacts_file: { filename: file.name, size: data.length } });
  });

  // Download: the token is a running job's that depends on :id (GitLab's authenticate_job_via_dependent_job!).
  app.get<{ Params: { id: string } }>('/api/v4/jobs/:id/artifacts', async (req, reply) => {
    const id = Number(req.params.id);
    const token = jobToken(req);
    const asker = [...jobs.values()].find((j) => j.token === token && (j.state === 'running' || j.state === 'canceling'));
    if (!asker || !(specs.get(asker.id)?.dependencies ?? []).includes(id)) return reply.code(403).send({ message: '403 Forbidden' });
    const fail = faults.artifactDownloadFailures;
    if (fail && fail.times > 0) {
      fail.times--;
      return reply.code(fail.status).send({ message: 'injected fault' });
    }
    const archive = jobs.get(id)?.artifacts.find((a) => a.artifactType === 'archive');
    if (!archive) return reply.code(404).send({ message: '404 Not Found' });
    return reply.code(200).header('content-type', 'application/zip').header('content-disposition', `attachment; filename="${archive.filename}"`).send(archive.data);
  });

  // Smart HTTP git: the job token of a running job is the password, as on GitLab.
  for (const url of [`${repo.path}/*`, `${repo.libPath}/*`]) app.route({
    method: ['GET', 'POST'],
    url,
    handler: async (req, reply) => {
      const auth = /^Basic (.+)$/.exec(String(req.headers.authorization ?? ''));
      const [user, pass] = auth ? Buffer.from(auth[1]!, 'base64').toString().split(':') : [];
      const ok = user === 'gitlab-ci-token' && [...jobs.values()].some((j) => j.token === pass && (j.state === 'running' || j.state === 'canceling'));
      if (!ok) return reply.code(401).header('WWW-Authenticate', 'Basic realm="GitLab"').send('HTTP Basic: Access denied');
      const url = new URL(req.url, 'http://x');
      const res = await gitHttpBackend(repo, {
        method: req.method,
        pathInfo: decodeURIComponent(url.pathname),
        query: url.search.slice(1),
        ...(req.headers['content-type'] ? { contentType: String(req.headers['content-type']) } : {}),
        ...(req.headers['content-encoding'] ? { contentEncoding: String(req.headers['content-encoding']) } : {}),
        ...(req.headers['git-protocol'] ? { gitProtocol: String(req.headers['git-protocol']) } : {}),
        ...(Buffer.isBuffer(req.body) ? { body: req.body } : {}),
      });
      return reply.code(res.status).headers(res.headers).send(res.body);
    },
  });

  const specs = new Map<number, EnqueueSpec>();
  const address = await app.listen({ host, port: opts.port ?? 0 });
  baseUrl = address.replace('localhost', '127.0.0.1');
  const origin = new URL(baseUrl);

  function payloadFor(id: number, token: string, spec: EnqueueSpec): Record<string, unknown> {
    const projectId = spec.projectId ?? 42;
    const timeout = spec.timeoutS ?? 3600;
    const vars = [
      { key: 'CI_JOB_TOKEN', value: token, public: false, masked: true },
      { key: 'CI_JOB_NAME', value: spec.name ?? `job-${id}`, public: true, masked: false },
      { key: 'CI_PROJECT_ID', value: String(projectId), public: true, masked: false },
      { key: 'CI_PROJECT_PATH', value: 'demo/project', public: true, masked: false },
      { key: 'CI_PROJECT_NAMESPACE_ID', value: '7', public: true, masked: false },
      { key: 'CI_PROJECT_ROOT_NAMESPACE_ID', value: '3', public: true, masked: false },
      { key: 'CI_PIPELINE_ID', value: String(500 + Math.floor(id / 10)), public: true, masked: false },
      { key: 'CI_SERVER_URL', value: baseUrl, public: true, masked: false },
      { key: 'CI_COMMIT_REF_PROTECTED', value: spec.protectedRef ? 'true' : 'false', public: true, masked: false },
      { key: 'CI_RUNNER_ID', value: '1', public: true, masked: false },
      { key: 'CI_RUNNER_DESCRIPTION', value: 'runner-fleet emulator runner', public: true, masked: false },
      { key: 'CI_RUNNER_TAGS', value: '["linux", "amd64"]', public: true, masked: false },
      ...(spec.git === false ? [{ key: 'GIT_STRATEGY', value: 'none', public: true, masked: false }] : []),
      ...(spec.variables ?? []).map((v) => ({ key: v.key, value: v.value, public: v.public ?? !v.masked, masked: v.masked ?? false, ...(v.file ? { file: true } : {}) })),
    ];
    return {
      id,
      token,
      allow_git_fetch: true,
      job_info: { id, name: spec.name ?? `job-${id}`, stage: 'test', project_id: projectId, project_name: 'project', time_in_queue_seconds: 0, project_jobs_running_on_instance_runners_count: '0', queue_size: 0, queue_depth: 0 },
      git_info: {
        repo_type: 'project',
        repo_url: `${origin.protocol}//gitlab-ci-token:${token}@${origin.host}${repo.path}`,
        ref: spec.submodule ? 'with-submodule' : repo.ref,
        sha: spec.submodule ? repo.submoduleSha : repo.sha,
        before_sha: '0000000000000000000000000000000000000000',
        ref_type: 'branch',
        refspecs: [`+refs/heads/${spec.submodule ? 'with-submodule' : repo.ref}:refs/remotes/origin/${spec.submodule ? 'with-submodule' : repo.ref}`],
        depth: 20,
      },
      runner_info: { timeout, runner_session_url: null },
      variables: vars,
      steps: [
        { name: 'script', script: spec.script, timeout, when: 'on_success', allow_failure: false },
        ...(spec.release ? [{ name: 'release', script: spec.release, timeout, when: 'on_success', allow_failure: false }] : []),
        ...(spec.afterScript ? [{ name: 'after_script', script: spec.afterScript, timeout: 300, when: 'always', allow_failure: true }] : []),
      ],
      image: spec.image ?? null,
      services: spec.services ?? [],
      artifacts: spec.artifacts ?? null,
      cache: spec.cache ?? [],
      credentials: spec.credentials ?? [],
      dependencies: [],
      features: { trace_sections: true, failure_reasons: spec.failureReasons ?? GITLAB_FAILURE_REASONS },
    };
  }

  const snapshot = ({ traceBuf, ...j }: JobRecord): EmuJob => ({ ...j, trace: traceBuf.toString() });

  async function waitFor(jobId: number, pred: (j: EmuJob) => boolean, timeoutMs: number): Promise<EmuJob> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const j = jobs.get(jobId);
      const snap = j && snapshot(j);
      if (snap && pred(snap)) return snap;
      if (Date.now() > end) throw new Error(`job ${jobId}: condition not met within ${timeoutMs} ms (state ${snap?.state}, trace ${JSON.stringify(snap?.trace.slice(-300))})`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  return {
    url: baseUrl,
    faults,
    enqueue(spec) {
      const raw = spec.raw && typeof spec.raw === 'object' ? (spec.raw as Record<string, unknown>) : {};
      const rawId = raw['id'];
      const id = typeof rawId === 'number' && Number.isInteger(rawId) && !jobs.has(rawId) ? rawId : nextId++;
      nextId = Math.max(nextId, id + 1);
      const token = typeof raw['token'] === 'string' && raw['token'] ? raw['token'] : `glcbt-${randomBytes(12).toString('hex')}`;
      jobs.set(id, { id, runnerToken: spec.runnerToken, token, state: 'pending', traceBuf: Buffer.alloc(0), enqueuedAt: Date.now(), updates: 0, artifacts: [] });
      specs.set(id, spec);
      payloads.set(id, payloadFor(id, token, spec));
      const q = queues.get(spec.runnerToken) ?? [];
      q.push(id);
      queues.set(spec.runnerToken, q);
      bumpQueue(spec.runnerToken);
      return id;
    },
    cancel(jobId) {
      const j = jobs.get(jobId);
      if (!j) return;
      if (j.state === 'pending') {
        j.state = 'canceled';
        const q = queues.get(j.runnerToken);
        if (q) q.splice(q.indexOf(jobId), 1);
      } else if (j.state === 'running') j.state = 'canceling';
    },
    job(jobId) {
      const j = jobs.get(jobId);
      if (!j) throw new Error(`no job ${jobId}`);
      return snapshot(j);
    },
    jobs: () => [...jobs.values()].map(snapshot),
    waitFor,
    waitForFinal: (jobId, timeoutMs) => waitFor(jobId, (j) => FINAL.includes(j.state), timeoutMs),
    stats() {
      const all = [...jobs.values()];
      return { requests, upToDate, pending: all.filter((j) => j.state === 'pending').length, running: all.filter((j) => j.state === 'running' || j.state === 'canceling').length, finished: all.filter((j) => FINAL.includes(j.state)).length, maxRequestsInFlight: maxInFlight, requestsInFlight: inFlight };
    },
    forget(jobId) {
      const j = jobs.get(jobId);
      if (!j || !FINAL.includes(j.state)) return;
      jobs.delete(jobId);
      specs.delete(jobId);
      payloads.delete(jobId);
    },
    async close() {
      await app.close();
      repo.close();
    },
  };
}
