// The job script for a Linux VM, built from the payload: variables, git checkout at the job's
// sha with the job token, the `script` step, then `after_script` (always). Its exit code is the
// script step's. The first line prints at once: the manager times pick-up to first line by it.
//
// The job's variables are set only inside the subshell of each step (git, script,
// after_script), by the function rf_vars, never in the wrapper's own shell: a job variable such
// as IFS, PATH, HOME, RF_TMP or rf_rc cannot change how the wrapper cleans up or which exit code
// it returns. rf_vars gets the wrapper's values as positional parameters, which no variable can
// overwrite.
import type { JobPayload, JobVariable } from './job-payload.js';
import { variableValue } from './job-payload.js';

/** Quote for bash: a single-quoted string with embedded single quotes spliced in. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

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
    '  git -c init.defaultBranch=main init -q .',
    '  git remote remove origin 2>/dev/null || true',
    `  git remote add -- origin ${shq(plan.repoUrl)}`,
    `  git -c protocol.version=2 fetch -q ${depth ? `--depth ${depth} ` : ''}--prune -- origin ${plan.refspecs.map(shq).join(' ')}`,
    `  echo ${shq(`Checking out ${plan.sha.slice(0, 8)} as detached HEAD (ref is ${plan.ref})...`)}`,
    `  git -c advice.detachedHead=false checkout -f -q ${shq(plan.sha)} --`,
    plan.cleanFlags === null ? '  true' : `  git clean -q ${plan.cleanFlags.join(' ')}`,
    ')',
    '[ "$?" -eq 0 ] || { echo "ERROR: git fetch/checkout failed"; exit 1; }',
  );
  return out;
}

/**
 * The function that sets the job's variables in a step's subshell: $1 the wrapper's temp dir,
 * $2 the builds dir, $3 the project dir. File variables first (their paths use $1 before any
 * job variable is set), CI_BUILDS_DIR and CI_PROJECT_DIR last (the runner's values win).
 */
function varsFunction(job: JobPayload): string[] {
  const files: string[] = [];
  const plain: string[] = [];
  for (const [key, v] of jobVariables(job)) {
    if (!SHELL_NAME.test(key)) continue; // not a shell name: cannot be exported
    if (v.file) files.push(`export ${key}="$1/vars/${key}"`);
    else plain.push(`export ${key}=${shq(v.value)}`);
  }
  return ['rf_vars() {', ...files, ...plain, 'export CI_BUILDS_DIR="$2" CI_PROJECT_DIR="$3"', '}'];
}

export function buildBashScript(job: JobPayload, opts: { buildsDir?: string } = {}): string {
  const out: string[] = [];
  // One stream, so the log keeps the order in which things happened.
  out.push('#!/usr/bin/env bash', '# generated by runner-fleet', 'exec 2>&1', 'echo "Running with runner-fleet on $(hostname)"');
  out.push('umask 0077', 'RF_TMP="$(mktemp -d "${TMPDIR:-/tmp}/runner-fleet.XXXXXX")" || exit 1', 'mkdir -p "$RF_TMP/vars"', 'umask 0022');
  for (const [key, v] of jobVariables(job)) {
    // A file variable holds a path; the value is the file's content (mode 0600).
    if (v.file && SHELL_NAME.test(key)) out.push(`(umask 0077; printf '%s' ${shq(v.value)} > "$RF_TMP/vars/${key}")`);
  }
  const buildsRoot = opts.buildsDir ?? '$HOME/builds';
  out.push(`rf_builds="${buildsRoot}"`, `rf_dir="${buildsRoot}/${projectPath(job)}"`);
  out.push(...varsFunction(job));
  const vars = 'rf_vars "$RF_TMP" "$rf_builds" "$rf_dir"';
  out.push('mkdir -p "$rf_dir" && cd "$rf_dir" || exit 1');
  out.push(...gitSetup(job, vars));

  out.push('(', vars, 'set -eo pipefail', commandLines(stepScript(job, 'script')), ')', 'rf_rc="$?"');
  const after = stepScript(job, 'after_script');
  if (after.length) {
    // Its own subshell from the project dir; not on the left of `||`, where bash would ignore
    // `set -e` inside it. Its failure is reported but does not change the job's result.
    out.push('echo "Running after_script"', 'cd "$rf_dir" 2>/dev/null', '(', vars, 'set -eo pipefail', commandLines(after), ')', '[ "$?" -eq 0 ] || echo "WARNING: after_script failed, but job will continue unaffected"');
  }
  out.push('rm -rf "$RF_TMP"', 'exit "$rf_rc"', '');
  return out.join('\n');
}
