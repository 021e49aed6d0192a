// The job payload GitLab answers to POST /api/v4/jobs/request with (201), validated at the edge.
// Lenient on fields we do not use, strict on those we do; errors name the field path.
import { z } from 'zod';

const variable = z.looseObject({
  key: z.string().min(1),
  value: z.string(),
  public: z.boolean().optional(),
  file: z.boolean().optional(),
  masked: z.boolean().optional(),
  raw: z.boolean().optional(),
});

const step = z.looseObject({
  name: z.string(),
  script: z.array(z.string()),
  timeout: z.number().int().nonnegative().optional(),
  when: z.enum(['on_success', 'on_failure', 'always']).optional(),
  allow_failure: z.boolean().optional(),
});

/** `pull_policy`: GitLab sends a list; a single string is taken as a list of one. */
const pullPolicy = z
  .union([z.enum(['always', 'if-not-present', 'never']), z.array(z.enum(['always', 'if-not-present', 'never']))])
  .transform((v) => (Array.isArray(v) ? v : [v]))
  .optional();

/** The docker image of a job (`image:`), as GitLab sends it. */
const image = z.looseObject({
  name: z.string().min(1, 'expected an image name'),
  alias: z.string().nullish(),
  command: z.array(z.string()).nullish(),
  entrypoint: z.array(z.string()).nullish(),
  pull_policy: pullPolicy.nullable(),
  ports: z.array(z.looseObject({ number: z.number().int().min(1).max(65535) })).nullish(),
  executor_opts: z.looseObject({ docker: z.looseObject({ platform: z.string().optional(), user: z.string().optional() }).nullish() }).nullish(),
});

const service = image.extend({ variables: z.array(z.looseObject({ key: z.string().min(1), value: z.string() })).nullish() });

/** An `artifacts` entry (GitLab sends reports as entries of their own type and format). */
const artifact = z.looseObject({
  name: z.string().nullish(),
  untracked: z.boolean().nullish(),
  paths: z.array(z.string()).nullish(),
  exclude: z.array(z.string()).nullish(),
  when: z.enum(['on_success', 'on_failure', 'always']).nullish(),
  artifact_type: z.string().nullish(),
  artifact_format: z.string().nullish(),
  expire_in: z.string().nullish(),
});

/** A `cache` entry: GitLab has computed the key (files-based keys, the protected-ref suffix). */
const cacheEntry = z.looseObject({
  key: z.string().nullish(),
  untracked: z.boolean().nullish(),
  policy: z.enum(['pull', 'push', 'pull-push']).nullish(),
  paths: z.array(z.string()).nullish(),
  when: z.enum(['on_success', 'on_failure', 'always']).nullish(),
  fallback_keys: z.array(z.string()).nullish(),
});

/** A job whose artifacts this one needs: GitLab sends its token and, when it has one, its artifacts file. */
const dependency = z.looseObject({
  id: z.number().int().positive(),
  name: z.string().optional(),
  token: z.string().optional(),
  artifacts_file: z.looseObject({ filename: z.string().optional(), size: z.number().optional() }).nullish(),
});

const credential = z.looseObject({ type: z.string(), url: z.string(), username: z.string().optional(), password: z.string().optional() });

const jobSchema = z.looseObject({
  id: z.number().int().positive(),
  token: z.string().min(1),
  allow_git_fetch: z.boolean().optional(),
  job_info: z
    .looseObject({
      id: z.number().int().optional(),
      name: z.string().optional(),
      stage: z.string().optional(),
      project_id: z.number().int().optional(),
      project_name: z.string().optional(),
      time_in_queue_seconds: z.number().nonnegative().optional(),
      project_jobs_running_on_instance_runners_count: z.union([z.string(), z.number()]).optional(),
      queue_size: z.number().int().nonnegative().optional(),
      queue_depth: z.number().int().nonnegative().optional(),
    })
    .optional(),
  git_info: z
    .looseObject({
      repo_type: z.string().optional(),
      repo_url: z.string().optional(),
      ref: z.string().optional(),
      sha: z.string().regex(/^[0-9a-f]{7,64}$/, 'expected a hex commit sha').optional(),
      before_sha: z.string().optional(),
      ref_type: z.string().optional(),
      refspecs: z.array(z.string()).optional(),
      depth: z.number().int().nonnegative().optional(),
    })
    .optional(),
  runner_info: z.looseObject({ timeout: z.number().int().positive().optional(), runner_session_url: z.string().nullish() }).optional(),
  variables: z.array(variable).default([]),
  steps: z.array(step).min(1, 'expected at least one step'),
  image: image.nullish(),
  services: z.array(service).nullish(),
  artifacts: z.array(artifact).nullish(),
  cache: z.array(cacheEntry).nullish(),
  credentials: z.array(credential).nullish(),
  dependencies: z.array(dependency).nullish(),
  features: z.looseObject({ failure_reasons: z.array(z.string()).optional() }).nullish(),
});

export type JobPayload = z.output<typeof jobSchema>;
export type JobVariable = z.output<typeof variable>;
export type JobImage = z.output<typeof image>;
export type JobService = z.output<typeof service>;
export type PullPolicy = 'always' | 'if-not-present' | 'never';

export type ParsedJob = { ok: true; job: JobPayload } | { ok: false; error: string; jobId?: number; token?: string };

/** A body the client could not take as JSON: why (never its content: it holds secrets), and its start. */
export class UnreadablePayload {
  constructor(
    readonly reason: string,
    /** The first bytes, from which the job's id and token may still be salvaged. */
    readonly prefix: string,
  ) {}
}

function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || '(payload)';
}

export function parseJobPayload(raw: unknown): ParsedJob {
  if (raw instanceof UnreadablePayload) return { ok: false, error: `(payload): ${raw.reason}`, ...salvageText(raw.prefix) };
  const res = jobSchema.safeParse(raw);
  if (res.success) return { ok: true, job: res.data };
  const errors = res.error.issues.slice(0, 5).map((i) => `${fieldPath(i.path)}: ${i.message}`);
  const out: ParsedJob = { ok: false, error: errors.join('; ') };
  // Salvage what is needed to fail the job back to GitLab.
  if (raw && typeof raw === 'object') {
    const r = raw as Record<string, unknown>;
    if (isJobId(r['id'])) out.jobId = r['id'];
    if (typeof r['token'] === 'string' && r['token']) out.token = r['token'];
  } else if (typeof raw === 'string') {
    Object.assign(out, salvageText(raw));
  }
  return out;
}

const isJobId = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;

/**
 * A body that is not JSON (cut off on the way, say) still starts as GitLab writes it,
 * `{"id":N,"token":"...",`: enough to fail the job back instead of leaving it to GitLab's
 * stuck-job timeout. Only that exact opening counts.
 */
function salvageText(text: string): { jobId?: number; token?: string } {
  const m = /^\s*\{\s*"id"\s*:\s*(\d{1,15})\s*,\s*"token"\s*:\s*"([A-Za-z0-9_.:-]{1,200})"\s*[,}]/.exec(text.slice(0, 512));
  if (!m) return {};
  const id = Number(m[1]);
  return isJobId(id) ? { jobId: id, token: m[2]! } : {};
}

/** The job's timeout: the smaller of GitLab's (runner_info.timeout) and the class cap. */
export function jobTimeoutSeconds(job: JobPayload, capSeconds: number): number {
  const own = job.runner_info?.timeout;
  return Math.max(1, Math.floor(own ? Math.min(own, capSeconds) : capSeconds));
}

/** A variable's value; the last definition wins, as in GitLab Runner (user variables come last). */
export function variableValue(job: JobPayload, key: string): string | undefined {
  return job.variables.findLast((v) => v.key === key)?.value;
}

/**
 * A predefined variable as GitLab set it: its first definition. GitLab lists its predefined
 * variables first; a later one of the same name comes from the project or `.gitlab-ci.yml`.
 */
export function predefinedValue(job: JobPayload, key: string): string | undefined {
  return job.variables.find((v) => v.key === key)?.value;
}

function intVar(job: JobPayload, key: string): number | null {
  const v = predefinedValue(job, key);
  return v !== undefined && /^\d{1,15}$/.test(v) ? Number(v) : null; // past 2^53 it is not the id
}

/** The project's namespace and root namespace ids (for quotas and billing; GitLab's values, never a job's), null when absent. */
export function namespaceIds(job: JobPayload): { namespaceId: number | null; rootNamespaceId: number | null } {
  const namespaceId = intVar(job, 'CI_PROJECT_NAMESPACE_ID');
  return { namespaceId, rootNamespaceId: intVar(job, 'CI_PROJECT_ROOT_NAMESPACE_ID') };
}

export function pipelineId(job: JobPayload): number | null {
  return intVar(job, 'CI_PIPELINE_ID');
}
