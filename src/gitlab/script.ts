// The job script for a Linux or macOS VM, built from the payload, in gitlab-runner's order and
// collapsible trace sections: (docker: prepare_executor: network, image pulls, services), git
// checkout at the job's sha with the job token (get_sources), the `script` step (step_script),
// then `after_script` (always, with CI_JOB_STATUS). Its exit code is the script step's. The first
// line prints at once: the manager times pick-up to first line by it. Run as
// `bash ./script after_canceled` (detach.ts killCommand, once a cancel killed the job past its
// script start) it runs only the after_script, with CI_JOB_STATUS=canceled, and cleans up.
//
// Executors: `shell` runs each step in a bash subshell on the VM; `docker` runs each in a
// container of the job's image on a per-job network beside its services, with the build
// directory mounted at /builds. The VM's own shell does the git and bookkeeping steps (it is the
// helper that gitlab-runner runs as a helper image), so the job image needs only a shell. The
// docker CLI never runs with the job's variables in its environment (a job's DOCKER_HOST is for
// the job's docker, not ours); they reach the build containers inside the step script, and
// services through an env file.
//
// A failure that is not the script's writes its reason (image_pull_failure, runner_system_failure)
// to `reason` in the job directory, which the attach reports with the exit status.
//
// The job's variables are set only inside the subshell of each step (git, script,
// after_script), by the function rf_vars, never in the wrapper's own shell: a job variable such
// as IFS, PATH, HOME, RF_TMP or rf_rc cannot change how the wrapper cleans up or which exit code
// it returns. rf_vars gets the wrapper's values as positional parameters, which no variable can
// overwrite.
import { ARTIFACT_HELPERS, artifactEntries, dependencies, uploadEntryScript, type ArtifactEntry } from './artifacts.js';
import { CACHE_HELPERS, restoreScript, saveScript, type SignedCacheEntry } from './cache-script.js';
import { CONTAINER_BUILDS_DIR, JOB_LABEL, STEP_LABEL, dockerPlan, type DockerImageRun, type DockerPlan } from './docker-plan.js';
import type { JobPayload, JobVariable, PullPolicy } from './job-payload.js';
import { variableValue } from './job-payload.js';
import { shq } from './script-quote.js';

export { shq };

/** A name a shell can export (others are skipped). */
export const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Expand `$NAME` / `${NAME}` in non-raw values from the job's own variables, as GitLab Runner
 * does. Unlike the runner, names that are not job variables stay as written, so a value such as
 * `$HOME/x` still reaches the shell intact.
 */
export function expandVariables(vars: Pick<JobVariable, 'key' | 'value' | 'raw' | 'file'>[]): Map<string, { value: string; file: boolean }> {
  const raw = new Map<string, { value: string; file: boolean; raw: boolean }>();
  for (const v of vars) raw.set(v.key, { value: v.value, file: !!v.file, raw: !!v.raw }); // last wins
  const out = new Map<string, { value: string; file: boolean }>();
  const expand = (value: string, depth: number): string =>
    value.replace(/\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (m, a?: string, b?: string) => {
      const ref = raw.get((a ?? b)!);
      if (!ref || depth > 8) return m;
      return ref.raw ? ref.value : expand(ref.value, depth + 1);
    });
  for (const [key, v] of raw) out.set(key, { value: v.raw ? v.value : expand(v.value, 0), file: v.file });
  return out;
}

function commandLines(cmds: string[]): string {
  return cmds.map((c) => `printf '\\033[32;1m$ %s\\033[0;m\\n' ${shq(c)}\n${c}`).join('\n');
}

/** The commands of one step (`script`, `after_script`); [] when the job has no such step. */
export function stepScript(job: JobPayload, name: string): string[] {
  return job.steps.find((s) => s.name === name)?.script ?? [];
}

/**
 * The job's steps besides `script` and `after_script` (GitLab's `release`), in the payload's
 * order, with their stage names (`step_<name>`, reduced to the characters a section or container
 * name takes).
 */
export function extraSteps(job: JobPayload): { stage: string; script: string[] }[] {
  return job.steps.filter((s) => s.name !== 'script' && s.name !== 'after_script').map((s) => ({ stage: `step_${s.name.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 60)}`, script: s.script }));
}

/** The project's path under the builds dir: CI_PROJECT_PATH (or project-<id>) reduced to safe characters. */
export function projectPath(job: JobPayload): string {
  return (variableValue(job, 'CI_PROJECT_PATH') ?? `project-${job.job_info?.project_id ?? 0}`).replace(/[^A-Za-z0-9._/-]/g, '_').replace(/\.\.+/g, '_');
}

/**
 * What the git step does, shell-independent: skip (GIT_STRATEGY none/empty), fail (no repository
 * in the payload, or a URL or refspec git would read as an option), or fetch the job's sha.
 * `warning` is set when GIT_STRATEGY was not understood.
 */
export type GitPlan = { warning?: string } & (
  | { kind: 'skip'; strategy: 'none' | 'empty' }
  | { kind: 'missing' }
  | { kind: 'invalid'; error: string }
  | {
      kind: 'fetch';
      /** clone: the project dir is emptied first. */
      clone: boolean;
      repoUrl: string;
      sha: string;
      /** The ref, reduced to safe characters (it is only printed). */
      ref: string;
      /** 0 = full history. */
      depth: number;
      refspecs: string[];
      /** `git clean` flags (each `-[A-Za-z]+`); null = GIT_CLEAN_FLAGS none. */
      cleanFlags: string[] | null;
      /** GIT_SUBMODULE_STRATEGY; GIT_SUBMODULE_DEPTH (0 = full). */
      submodules: 'none' | 'normal' | 'recursive';
      submoduleDepth: number;
    }
);

export function gitPlan(job: JobPayload): GitPlan {
  const declared = variableValue(job, 'GIT_STRATEGY') ?? 'fetch';
  const strategy = ['none', 'fetch', 'clone', 'empty'].includes(declared) ? declared : 'fetch';
  const warn = strategy !== declared ? { warning: `WARNING: unknown GIT_STRATEGY ${declared}, using fetch` } : {};
  if (strategy === 'none' || strategy === 'empty') return { ...warn, kind: 'skip', strategy };
  const git = job.git_info;
  if (!git?.repo_url || !git.sha) return { ...warn, kind: 'missing' };
  const depthVar = variableValue(job, 'GIT_DEPTH');
  const depth = depthVar !== undefined && /^\d+$/.test(depthVar) ? Number(depthVar) : (git.depth ?? 0);
  const refspecs = git.refspecs?.length ? git.refspecs : ['+refs/heads/*:refs/remotes/origin/*', '+refs/tags/*:refs/tags/*'];
  // Also passed after `--`; refused outright all the same, as nothing legitimate starts so.
  if (git.repo_url.startsWith('-')) return { ...warn, kind: 'invalid', error: 'the repository URL starts with "-"' };
  const bad = refspecs.find((r) => r.startsWith('-') || r === '');
  if (bad !== undefined) return { ...warn, kind: 'invalid', error: `the refspec ${JSON.stringify(bad.slice(0, 100))} is not valid` };
  const clean = variableValue(job, 'GIT_CLEAN_FLAGS') ?? '-ffdx';
  const sub = variableValue(job, 'GIT_SUBMODULE_STRATEGY') ?? 'none';
  const subDepth = variableValue(job, 'GIT_SUBMODULE_DEPTH') ?? '0';
  if (!['none', 'normal', 'recursive'].includes(sub)) Object.assign(warn, { warning: `WARNING: unknown GIT_SUBMODULE_STRATEGY ${sub.slice(0, 40)}, using none` });
  const flags = clean.split(/\s+/).filter((f) => /^-[A-Za-z]+$/.test(f));
  return {
    ...warn,
    kind: 'fetch',
    clone: strategy === 'clone',
    repoUrl: git.repo_url,
    sha: git.sha,
    ref: (git.ref ?? '').replace(/[^A-Za-z0-9._/-]/g, ''),
    depth,
    refspecs,
    cleanFlags: clean === 'none' ? null : flags.length ? flags : ['-ffdx'],
    submodules: sub === 'normal' || sub === 'recursive' ? sub : 'none',
    submoduleDepth: /^\d+$/.test(subDepth) ? Number(subDepth) : 0,
  };
}

/** The job's variables, expanded: the runner's own first, so GitLab's (later in the list) win. */
export function jobVariables(job: JobPayload): Map<string, { value: string; file: boolean }> {
  return expandVariables([{ key: 'CI', value: 'true' }, { key: 'GITLAB_CI', value: 'true' }, { key: 'CI_JOB_ID', value: String(job.id) }, ...job.variables]);
}

function gitSetup(job: JobPayload, vars: string): string[] {
  const plan = gitPlan(job);
  const out: string[] = [];
  if (plan.warning) out.push(`echo ${shq(plan.warning)}`);
  if (plan.kind === 'skip') {
    if (plan.strategy === 'empty') out.push('find . -mindepth 1 -delete');
    return [...out, `echo "Skipping Git repository setup (GIT_STRATEGY=${plan.strategy})"`];
  }
  if (plan.kind === 'missing') return [...out, 'echo "ERROR: the job has no git repository to fetch"', 'exit 1'];
  if (plan.kind === 'invalid') return [...out, `echo ${shq(`ERROR: ${plan.error}`)}`, 'exit 1'];
  const { depth } = plan;
  // The remote URL carries the job token: it is only ever an argument, never echoed. Arguments
  // from the payload come after `--`, so none can be read as an option.
  out.push(
    ...(plan.clone ? ['echo "Cloning repository..."', 'find . -mindepth 1 -delete'] : []),
    `echo "Fetching changes${depth ? ` with git depth set to ${depth}` : ''}..."`,
    '(',
    `  ${vars}`,
    '  set -e',
    // gitlab.tlsCaFile: git trusts GitLab's CA as the job's tools do.
    '  [ -z "${CI_SERVER_TLS_CA_FILE:-}" ] || export GIT_SSL_CAINFO="$CI_SERVER_TLS_CA_FILE"',
    '  git -c init.defaultBranch=main init -q .',
    '  git remote remove origin 2>/dev/null || true',
    `  git remote add -- origin ${shq(plan.repoUrl)}`,
    `  git -c protocol.version=2 fetch -q ${depth ? `--depth ${depth} ` : ''}--prune -- origin ${plan.refspecs.map(shq).join(' ')}`,
    `  echo ${shq(`Checking out ${plan.sha.slice(0, 8)} as detached HEAD (ref is ${plan.ref})...`)}`,
    `  git -c advice.detachedHead=false checkout -f -q ${shq(plan.sha)} --`,
    plan.cleanFlags === null ? '  true' : `  git clean -q ${plan.cleanFlags.join(' ')}`,
    ...submoduleLines(plan),
    ')',
    '[ "$?" -eq 0 ] || { echo "ERROR: git fetch/checkout failed"; exit 1; }',
  );
  return out;
}

/**
 * GIT_SUBMODULE_STRATEGY normal/recursive: sync and update the submodules. URLs on GitLab's own
 * host get the job token (git's insteadOf, as gitlab-runner does); relative ones resolve
 * against the remote, token included.
 */
function submoduleLines(plan: Extract<GitPlan, { kind: 'fetch' }>): string[] {
  if (plan.submodules === 'none') return [];
  const rec = plan.submodules === 'recursive' ? ' --recursive' : '';
  let insteadOf = '';
  try {
    const u = new URL(plan.repoUrl);
    if (u.username) insteadOf = `-c ${shq(`url.${u.protocol}//${u.username}:${u.password}@${u.host}/.insteadOf`)}=${shq(`${u.protocol}//${u.host}/`)} `;
  } catch {
    // Not a URL (scp-like ssh syntax): no rewrite.
  }
  return [
    `  echo ${shq(`Updating/initializing submodules${rec ? ' recursively' : ''}${plan.submoduleDepth ? ` with git depth set to ${plan.submoduleDepth}` : ''}...`)}`,
    `  git submodule sync -q${rec}`,
    `  git ${insteadOf}submodule update -q --init${rec}${plan.submoduleDepth ? ` --depth ${plan.submoduleDepth}` : ''}`,
    `  git submodule foreach -q${rec} 'git clean -q -ffdx'`,
  ];
}

/**
 * The function that sets the job's variables in a step's subshell: $1 the directory of file
 * variables, $2 the builds dir, $3 the project dir. File variables first, CI_BUILDS_DIR and
 * CI_PROJECT_DIR last (the runner's values win).
 */
function varsFunction(job: JobPayload, opts: ScriptOptions): string[] {
  return ['rf_vars() {', ...exportLines(job, opts, '"$1"'), 'export CI_BUILDS_DIR="$2" CI_PROJECT_DIR="$3"', '}'];
}

/** `export` lines of the job's variables; file variables point into `fileDir` (shell syntax). */
function exportLines(job: JobPayload, opts: ScriptOptions, fileDir: string): string[] {
  const files: string[] = [];
  const plain: string[] = [];
  for (const [key, v] of scriptVariables(job, opts)) {
    if (!SHELL_NAME.test(key)) continue; // not a shell name: cannot be exported
    if (v.file) files.push(`export ${key}=${fileDir}/${key}`);
    else plain.push(`export ${key}=${shq(v.value)}`);
  }
  return [...files, ...plain];
}

export interface ScriptOptions {
  /** The builds root on the VM (shell syntax); default `$HOME/builds`. */
  buildsDir?: string;
  executor?: 'shell' | 'docker';
  /** docker: the image of a job that names none. */
  defaultImage?: string | null;
  /** docker: pull policies of images that give none (default `always`, as gitlab-runner). */
  pullPolicy?: PullPolicy[];
  /** Runner-set variables (CI_RUNNER_VERSION, CI_RUNNER_SHORT_TOKEN, ...), before GitLab's. */
  runnerVariables?: Record<string, string>;
  /** PEM of the CA that GitLab's certificate chains to: the job gets it as CI_SERVER_TLS_CA_FILE. */
  tlsCa?: string | null;
  /** GitLab's URL as the VM reaches it (artifact transfers); default the job's CI_SERVER_URL. */
  gitlabUrl?: string;
  /** The job's cache entries with URLs signed for it (null: the shard has no cache). */
  cache?: { entries: SignedCacheEntry[]; warnings: string[] } | null;
}

/** The job's variables with the runner's own first (GitLab's, later in the list, win) and CI_SERVER_TLS_CA_FILE. */
function scriptVariables(job: JobPayload, opts: ScriptOptions): Map<string, { value: string; file: boolean }> {
  const runner = Object.entries(opts.runnerVariables ?? {}).map(([key, value]) => ({ key, value }));
  const tls = opts.tlsCa ? [{ key: 'CI_SERVER_TLS_CA_FILE', value: opts.tlsCa, file: true }] : [];
  return expandVariables([{ key: 'CI', value: 'true' }, { key: 'GITLAB_CI', value: 'true' }, { key: 'CI_JOB_ID', value: String(job.id) }, ...runner, ...job.variables, ...tls]);
}

const section = (name: string, title: string) => `rf_ss ${name} ${shq(title)}`;

/** bash helpers every script has: trace sections (GitLab's section_start/section_end markers) and the failure reason. */
const HELPERS = [
  `rf_ss() { printf '\\033[0Ksection_start:%s:%s\\r\\033[0K\\033[36;1m%s\\033[0;m\\n' "$(date +%s)" "$1" "$2"; }`,
  `rf_se() { printf '\\033[0Ksection_end:%s:%s\\r\\033[0K\\n' "$(date +%s)" "$1"; }`,
  // Run by the supervisor as ./script in its job directory: that is where the reason goes.
  'rf_jobdir=; [ "$0" = ./script ] && rf_jobdir="$PWD"',
  `rf_fail() { [ -n "$rf_jobdir" ] && printf '%s\\n' "$1" > "$rf_jobdir/reason"; return 0; }`,
];

/**
 * docker helpers: rf_pull IMAGE POLICY... (as gitlab-runner: each policy in turn until one gives
 * the image), rf_wait_svc CONTAINER NAME [PORT...] (up to 30 s for each TCP port, then a warning
 * with the service's last log lines, as gitlab-runner's health check), rf_cleanup (every
 * container and the network of the job; also on kill: see killCommand).
 */
function dockerHelpers(jobId: number, network: string): string[] {
  return [
    'rf_pull() {',
    '  local img="$1" p out err=; shift',
    '  for p in "$@"; do',
    '    case "$p" in',
    '      never|if-not-present)',
    '        if id=$(docker image inspect -f "{{.Id}}" -- "$img" 2>/dev/null); then echo "Using locally found image $img ($id)"; return 0; fi',
    '        [ "$p" = never ] && { err="image not present on the VM and pull policy is never"; continue; } ;;',
    '    esac',
    '    echo "Pulling docker image $img ..."',
    '    if out=$(DOCKER_CONFIG="$RF_TMP/docker" docker pull -q -- "$img" 2>&1); then',
    '      echo "Using docker image $(docker image inspect -f "{{.Id}}" -- "$img" 2>/dev/null) for $img"; return 0',
    '    fi',
    '    err=$(printf "%s" "$out" | tail -n 3 | tr "\\n" " ")',
    '  done',
    '  echo "ERROR: failed to pull image \\"$img\\" with specified policies [$*]: $err"',
    '  return 1',
    '}',
    'rf_wait_svc() {',
    '  local c="$1" name="$2" ip ports p end; shift 2; ports="$*"',
    `  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$c" 2>/dev/null | awk '{print $1}')`,
    `  [ -n "$ports" ] || ports=$(docker inspect -f '{{range $p, $v := .Config.ExposedPorts}}{{$p}} {{end}}' "$c" 2>/dev/null | tr ' ' '\\n' | sed -n 's,/tcp$,,p')`,
    '  [ -n "$ip" ] && [ -n "$ports" ] || return 0',
    '  end=$((SECONDS + 30))',
    '  for p in $ports; do',
    '    until timeout 2 bash -c ": <> /dev/tcp/$ip/$p" 2>/dev/null; do',
    `      if [ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" != true ] || [ "$SECONDS" -ge "$end" ]; then`,
    '        echo "*** WARNING: Service $name probably didn\'t start properly."',
    '        echo "Health check error: nothing listens on $ip:$p (TCP)"',
    '        echo "Service container logs:"; docker logs --tail 20 "$c" 2>&1 | sed "s/^/  /"',
    '        return 0',
    '      fi',
    '      sleep 0.2',
    '    done',
    '  done',
    '}',
    'rf_cleanup() {',
    `  docker ps -aq --filter label=${JOB_LABEL}=${jobId} 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1`,
    `  docker network rm ${shq(network)} >/dev/null 2>&1`,
    '  return 0',
    '}',
  ];
}

/** `docker create` arguments that run a container of `img` (entrypoint, user, platform); the command follows. */
function imageArgs(img: DockerImageRun): { flags: string[]; before: string[] } {
  const flags: string[] = [];
  const before: string[] = [];
  if (img.entrypoint) {
    flags.push('--entrypoint', shq(img.entrypoint[0]!));
    before.push(...img.entrypoint.slice(1).map(shq));
  }
  if (img.user) flags.push('--user', shq(img.user));
  if (img.platform) flags.push('--platform', shq(img.platform));
  return { flags, before };
}

/** gitlab-runner's shell detection: the first bash, else sh, of the image runs the step file ($0). */
const DETECT_SHELL =
  'for s in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/local/bin/sh /usr/bin/sh /bin/sh /busybox/sh; do [ -x "$s" ] && exec "$s" "$0"; done; echo "shell not found in the image" >&2; exit 1';

/**
 * A service's environment file: the job's variables and the service's own (plain names, one line
 * each: the file format has no multi-line values, which are left out).
 */
function serviceEnv(job: JobPayload, opts: ScriptOptions, vars: { key: string; value: string }[]): string {
  const all = new Map<string, string>();
  for (const [k, v] of scriptVariables(job, opts)) if (!v.file) all.set(k, v.value);
  for (const v of vars) all.set(v.key, v.value);
  let out = '';
  for (const [k, v] of all) if (SHELL_NAME.test(k) && !/[\n\r\0]/.test(v)) out += `${k}=${v}\n`;
  return out;
}

/** prepare_executor: network, image, services; any failure ends the job with its reason. */
function dockerPrepare(job: JobPayload, opts: ScriptOptions, plan: DockerPlan): string[] {
  // rf_exit (the EXIT trap) runs rf_cleanup (dockerHelpers): a trap of its own here would replace it.
  const out: string[] = [];
  out.push(section('prepare_executor', 'Preparing the "docker" executor'), `echo ${shq(`Using Docker executor with image ${plan.image.name} ...`)}`);
  if (plan.authConfig) out.push('(umask 0077; mkdir -p "$RF_TMP/docker" && printf \'%s\' ' + shq(plan.authConfig) + ' > "$RF_TMP/docker/config.json")');
  else out.push('mkdir -p "$RF_TMP/docker"');
  out.push(
    `if ! err=$(docker network create --label ${JOB_LABEL}=${job.id} ${shq(plan.network)} 2>&1 >/dev/null); then`,
    '  echo "ERROR: cannot create the job\'s Docker network (is Docker Engine running on the VM?): $err"; rf_fail runner_system_failure; exit 1',
    'fi',
  );
  const pull = (img: DockerImageRun) => `rf_pull ${shq(img.name)} ${img.pullPolicy.map(shq).join(' ')} || { rf_fail image_pull_failure; exit 1; }`;
  for (const [i, svc] of plan.services.entries()) {
    out.push(`echo ${shq(`Starting service ${svc.name} ...`)}`, pull(svc));
    out.push(`printf '%s' ${shq(serviceEnv(job, opts, svc.variables))} > "$RF_TMP/svc-${i}.env"`);
    const { flags, before } = imageArgs(svc);
    const args = [
      'docker create --pull never', `--name ${svc.container}`, `--label ${JOB_LABEL}=${job.id}`, `--network ${shq(plan.network)}`,
      ...svc.aliases.map((a) => `--network-alias ${shq(a)}`), `--env-file "$RF_TMP/svc-${i}.env"`, `-v "$rf_builds:${CONTAINER_BUILDS_DIR}"`,
      ...flags, '--', shq(svc.name), ...before, ...(svc.command ?? []).map(shq),
    ];
    out.push(
      `if ! err=$(${args.join(' ')} 2>&1 >/dev/null) || ! err=$(docker start ${svc.container} 2>&1 >/dev/null); then`,
      `  echo ${shq(`ERROR: cannot start service ${svc.name}:`)} "$err"; rf_fail runner_system_failure; exit 1`,
      'fi',
    );
  }
  out.push(pull(plan.image));
  for (const svc of plan.services) out.push(`rf_wait_svc ${svc.container} ${shq(svc.name)} ${svc.ports.join(' ')}`.trimEnd());
  out.push('rf_se prepare_executor');
  return out;
}

/**
 * One step in a fresh container of the job image: the step file (variables, cd, the commands) is
 * written under the build dir's `.tmp` (mode 0700) and run by the image's shell; the container's
 * exit code is the step's. Creating the container failing is the runner's failure, not the script's.
 */
function dockerStep(job: JobPayload, opts: ScriptOptions, plan: DockerPlan, name: string, commands: string[], status?: string): string[] {
  const cdir = `${CONTAINER_BUILDS_DIR}/${projectPath(job)}`;
  const stepFile = `${cdir}.tmp/${name}.sh`;
  const exports = [...exportLines(job, opts, shq(`${cdir}.tmp`)), `export CI_BUILDS_DIR=${shq(CONTAINER_BUILDS_DIR)} CI_PROJECT_DIR=${shq(cdir)}`, ''].join('\n');
  const body = [
    `cd ${shq(cdir)} || exit 1`,
    'set -e',
    '(set -o pipefail) 2>/dev/null && set -o pipefail',
    commandLines(commands),
    '',
  ].join('\n');
  const { flags, before } = imageArgs(plan.image);
  const create = [
    'docker create --pull never', `--name rf-${job.id}-${name.replace(/_/g, '-')}`, `--label ${JOB_LABEL}=${job.id}`, `--label ${STEP_LABEL}=${name}`, `--network ${shq(plan.network)}`,
    `-v "$rf_builds:${CONTAINER_BUILDS_DIR}"`, `-w ${shq(cdir)}`, ...flags, '--', shq(plan.image.name), ...before, ...(plan.image.command ?? []).map(shq),
    'sh', '-c', shq(DETECT_SHELL), shq(stepFile),
  ];
  return [
    // CI_JOB_STATUS is the VM shell's to expand (it knows how the script step ended).
    `(umask 0077; mkdir -p "$rf_dir.tmp"; { printf '%s' ${shq(exports)}; ${status ? `printf 'export CI_JOB_STATUS=%s\\n' "${status}"; ` : ''}printf '%s' ${shq(body)}; } > "$rf_dir.tmp/${name}.sh")`,
    `if rf_cid=$(${create.join(' ')} 2>"$RF_TMP/create.err"); then`,
    '  docker start -a "$rf_cid" </dev/null',
    'else',
    `  echo "ERROR: cannot create the ${name} container: $(tail -n 3 "$RF_TMP/create.err")"; rf_fail runner_system_failure; (exit 1)`,
    'fi',
  ];
}

/**
 * What artifact transfers need: GitLab's API base, the job's token as a header file (never an
 * argument: `ps` would show it), the CA, the helpers, and the VM tools they use.
 */
function transferSetup(job: JobPayload, opts: ScriptOptions, entries: ArtifactEntry[], deps: unknown[], cache: boolean): string[] {
  const tools = new Set(['curl', 'sort', 'find', 'grep', 'sed']);
  if (deps.length || cache) tools.add('unzip');
  if (cache) tools.add('zip');
  for (const e of entries) tools.add(e.format === 'zip' ? 'zip' : e.format === 'gzip' ? 'gzip' : 'cp');
  const out = [
    `rf_api=${shq(`${(opts.gitlabUrl ?? variableValue(job, 'CI_SERVER_URL') ?? '').replace(/\/+$/, '')}/api/v4`)} rf_job_id=${job.id}`,
    `(umask 0077; printf 'JOB-TOKEN: %s\\n' ${shq(job.token)} > "$RF_TMP/job-token.hdr")`,
    'rf_cacert=',
  ];
  if (opts.tlsCa) out.push(`printf '%s' ${shq(opts.tlsCa)} > "$RF_TMP/ca.pem"`, 'rf_cacert="--cacert $RF_TMP/ca.pem"');
  out.push(
    `for rf_t in ${[...tools].join(' ')}; do command -v "$rf_t" >/dev/null 2>&1 || { echo "ERROR: the VM image lacks $rf_t, which artifact transfers need"; rf_fail runner_system_failure; exit 1; }; done`,
    ...ARTIFACT_HELPERS,
    ...(cache ? CACHE_HELPERS : []),
  );
  return out;
}

/**
 * What a re-attaching manager sends when it cannot rebuild a job's script (its cache URLs could not
 * be signed): a job already claimed on its VM ignores it and runs on; one that never started ends
 * there as the runner's failure, not the job's.
 */
export function unbuiltJobScript(why: string): string {
  return ['#!/usr/bin/env bash', ...HELPERS, `echo ${shq(`ERROR: runner-fleet could not rebuild the job script: ${why}`)}`, 'rf_fail runner_system_failure', 'exit 1', ''].join('\n');
}

/** gitlab-runner's default bound of after_script (RUNNER_AFTER_SCRIPT_TIMEOUT unset). */
export const AFTER_SCRIPT_TIMEOUT_S = 300;

const GO_UNITS: Record<string, number> = { ns: 1e-9, us: 1e-6, 'µs': 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };

/**
 * How long the after_script of a canceled job may run: RUNNER_AFTER_SCRIPT_TIMEOUT (a Go duration
 * such as `90s`, `5m`, `1h30m`), else 5 minutes, as gitlab-runner; whole seconds, at least 1.
 * A value that is not a duration gives the default and a warning.
 */
export function afterScriptTimeout(job: JobPayload): { seconds: number; warning?: string } {
  const v = jobVariables(job).get('RUNNER_AFTER_SCRIPT_TIMEOUT')?.value.trim();
  if (!v) return { seconds: AFTER_SCRIPT_TIMEOUT_S };
  const parts = [...v.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/g)];
  if (!parts.length || parts.map((m) => m[0]).join('') !== v) {
    return { seconds: AFTER_SCRIPT_TIMEOUT_S, warning: `RUNNER_AFTER_SCRIPT_TIMEOUT ${JSON.stringify(v.slice(0, 40))} is not a duration (such as 90s or 5m); using 5m` };
  }
  const total = parts.reduce((n, m) => n + Number(m[1]) * GO_UNITS[m[2]!]!, 0);
  return { seconds: Math.max(1, Math.min(Math.ceil(total), 7 * 24 * 3600)) };
}

export function buildBashScript(job: JobPayload, opts: ScriptOptions = {}): string {
  const docker = opts.executor === 'docker';
  const out: string[] = [];
  // One stream, so the log keeps the order in which things happened.
  // `bash ./script after_canceled` (killCommand, after a cancel killed the job) runs only the
  // after_script, with CI_JOB_STATUS=canceled, then cleans up.
  out.push('#!/usr/bin/env bash', '# generated by runner-fleet', 'exec 2>&1', '[ "${1:-}" = after_canceled ] || echo "Running with runner-fleet on $(hostname)"');
  out.push(...HELPERS);
  out.push('umask 0077', 'RF_TMP="$(mktemp -d "${TMPDIR:-/tmp}/runner-fleet.XXXXXX")" || exit 1', 'mkdir -p "$RF_TMP/vars"', 'umask 0022');
  const buildsRoot = opts.buildsDir ?? '$HOME/builds';
  out.push(`rf_builds="${buildsRoot}"`, `rf_dir="${buildsRoot}/${projectPath(job)}"`);
  // Whatever way the script ends: its temp files, file variables and (docker) containers go.
  // rf_cleanup is defined with the docker plan: before it (a plan that fails) there is nothing to clean.
  out.push(`rf_exit() { ${docker ? 'command -v rf_cleanup >/dev/null && rf_cleanup; ' : ''}rm -rf "$RF_TMP" "$rf_dir.tmp"; }`, 'trap rf_exit EXIT');
  // File variables: a path whose file holds the value (mode 0600). Docker jobs find them under the
  // mounted build dir (`<project dir>.tmp`, as gitlab-runner keeps them); shell jobs in RF_TMP.
  const fileDir = docker ? '"$rf_dir.tmp"' : '"$RF_TMP/vars"';
  out.push(`mkdir -p ${fileDir} && chmod 0700 ${fileDir}`);
  for (const [key, v] of scriptVariables(job, opts)) {
    if (v.file && SHELL_NAME.test(key)) out.push(`(umask 0077; printf '%s' ${shq(v.value)} > ${fileDir}/${key})`);
  }
  out.push(...varsFunction(job, opts));
  const vars = `rf_vars ${fileDir} "$rf_builds" "$rf_dir"`;
  let plan: DockerPlan | null = null;
  if (docker) {
    const p = dockerPlan(job, { defaultImage: opts.defaultImage ?? null, pullPolicy: opts.pullPolicy ?? [] });
    if (!p.ok) {
      out.push(`echo ${shq(`ERROR: ${p.error}`)}`, 'rf_fail runner_system_failure', 'exit 1', '');
      return out.join('\n');
    }
    plan = p.plan;
    out.push(...dockerHelpers(job.id, plan.network));
  }
  const after = stepScript(job, 'after_script');
  const afterTimeout = afterScriptTimeout(job);
  // The after_script, its container (docker) or subshell from the project dir; not on the left of
  // `||`, where bash would ignore `set -e` inside it. Its failure is reported but does not change
  // the job's result.
  const afterSection = (status: string) => [
    section('after_script', 'Running after_script'),
    'cd "$rf_dir" 2>/dev/null',
    ...(plan ? dockerStep(job, opts, plan, 'after_script', after, status) : ['(', vars, `export CI_JOB_STATUS="${status}"`, 'set -eo pipefail', commandLines(after), ')']),
    '[ "$?" -eq 0 ] || echo "WARNING: after_script failed, but job will continue unaffected"',
    'rf_se after_script',
  ];
  if (after.length) {
    // After a cancel: the killed run's temp dir (its path in after-canceled) goes too.
    out.push(
      'if [ "${1:-}" = after_canceled ]; then',
      ...(afterTimeout.warning ? [`echo ${shq(`WARNING: ${afterTimeout.warning}`)}`] : []),
      '  rf_old=; [ -n "$rf_jobdir" ] && [ -s "$rf_jobdir/after-canceled" ] && read -r rf_old < "$rf_jobdir/after-canceled"',
      '  case "$rf_old" in */runner-fleet.*) rm -rf -- "$rf_old" ;; esac',
      ...afterSection('canceled'),
      '  exit 0',
      'fi',
    );
  }
  if (plan) out.push(...dockerPrepare(job, opts, plan));
  out.push(section('prepare_script', 'Preparing environment'), 'echo "Running on $(hostname)..."', 'rf_se prepare_script');
  out.push('mkdir -p "$rf_dir" && cd "$rf_dir" || exit 1');
  out.push(section('get_sources', 'Getting source from Git repository'), ...gitSetup(job, vars), 'rf_se get_sources');
  const artifacts = artifactEntries(job);
  const deps = dependencies(job);
  for (const w of artifacts.warnings) out.push(`echo ${shq(`WARNING: ${w}`)}`);
  const cache = opts.cache?.entries ?? [];
  for (const w of opts.cache?.warnings ?? []) out.push(`echo ${shq(`WARNING: ${w}`)}`);
  if (artifacts.entries.length || deps.length || cache.length) out.push(...transferSetup(job, opts, artifacts.entries, deps, cache.length > 0));
  if (cache.some((c) => c.restore.length)) out.push(section('restore_cache', 'Restoring cache'), ...restoreScript(cache), 'rf_se restore_cache');
  if (deps.length) {
    out.push(section('download_artifacts', 'Downloading artifacts'));
    for (const [i, d] of deps.entries()) {
      out.push(`(umask 0077; printf 'JOB-TOKEN: %s\\n' ${shq(d.token)} > "$RF_TMP/dep-${i}.hdr")`);
      out.push(`rf_download ${d.id} ${shq(d.name)} "$RF_TMP/dep-${i}.hdr" || { rf_fail download_failure; exit 1; }`);
    }
    out.push('rf_se download_artifacts');
  }

  // `script`, then GitLab's other steps (`release`, sent to runners claiming multi_build_steps) in
  // its order, each as its own stage `step_<name>` that runs only while every earlier one passed,
  // as gitlab-runner runs them; the job's exit code is the failing step's.
  const runStep = (stage: string, commands: string[]) => [
    section(stage, `Executing "${stage}" stage of the job script`),
    ...(plan ? dockerStep(job, opts, plan, stage, commands) : ['(', vars, 'set -eo pipefail', commandLines(commands), ')']),
    'rf_rc="$?"',
    `rf_se ${stage}`,
  ];
  // From here a cancel runs the after_script (killCommand, reading the marker's temp dir); not once it has begun.
  if (after.length) out.push('[ -n "$rf_jobdir" ] && printf \'%s\\n\' "$RF_TMP" > "$rf_jobdir/after"');
  out.push(...runStep('step_script', stepScript(job, 'script')));
  for (const step of extraSteps(job)) out.push('if [ "$rf_rc" -eq 0 ]; then', ...runStep(step.stage, step.script), 'fi');
  if (after.length) {
    out.push('[ -n "$rf_jobdir" ] && rm -f "$rf_jobdir/after"');
    out.push('if [ "$rf_rc" -eq 0 ]; then rf_status=success; else rf_status=failed; fi');
    out.push(...afterSection('$rf_status'));
  }
  const saving = (w: 'on_success' | 'on_failure') => cache.map((e, i) => ({ e, i })).filter(({ e }) => e.save && (e.when === w || e.when === 'always'));
  if (saving('on_success').length || saving('on_failure').length) {
    out.push('if [ "$rf_rc" -eq 0 ]; then');
    out.push(...(saving('on_success').length ? [section('archive_cache', 'Saving cache for successful job'), ...saveScript(saving('on_success')), 'rf_se archive_cache'] : ['  :']));
    out.push('else');
    out.push(...(saving('on_failure').length ? [section('archive_cache_on_failure', 'Saving cache for failed job'), ...saveScript(saving('on_failure')), 'rf_se archive_cache_on_failure'] : ['  :']));
    out.push('fi');
  }
  if (artifacts.entries.length) {
    const on = (w: 'on_success' | 'on_failure') => artifacts.entries.map((e, i) => [e, i] as const).filter(([e]) => e.when === w || e.when === 'always');
    const success = on('on_success');
    const failure = on('on_failure');
    out.push('rf_art_failed=');
    out.push('if [ "$rf_rc" -eq 0 ]; then');
    if (success.length) out.push(section('upload_artifacts_on_success', 'Uploading artifacts for successful job'), ...success.flatMap(([e, i]) => uploadEntryScript(e, i)), 'rf_se upload_artifacts_on_success');
    else out.push('  :');
    out.push('else');
    if (failure.length) out.push(section('upload_artifacts_on_failure', 'Uploading artifacts for failed job'), ...failure.flatMap(([e, i]) => uploadEntryScript(e, i)), 'rf_se upload_artifacts_on_failure');
    else out.push('  :');
    out.push('fi');
    // A job that passed but could not hand in its artifacts failed; a failed one keeps its own code.
    out.push('if [ -n "$rf_art_failed" ] && [ "$rf_rc" -eq 0 ]; then rf_fail upload_failure; rf_rc=1; fi');
  }
  out.push(section('cleanup_file_variables', 'Cleaning up project directory and file based variables'), 'rm -rf "$RF_TMP" "$rf_dir.tmp"', 'rf_se cleanup_file_variables');
  out.push('exit "$rf_rc"', '');
  return out.join('\n');
}
