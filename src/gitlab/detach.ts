// Detached jobs on Linux and macOS VMs: the job's bash script runs under a small supervisor that
// outlives the SSH session, keeping merged stdout+stderr in a file and the exit status in another,
// so a manager that restarts (or the standby that takes over) re-attaches and reports the real
// outcome. Plain POSIX sh + coreutils/BSD tools only: setsid(1) where present (Linux), else job
// control (`set -m`) gives the supervisor its own process group (macOS has no setsid(1)).
//
// Per job, on the VM: ~/.runner-fleet/jobs/<id>/ (mode 0700), created with mkdir: the claim.
//   script  the job script, moved in whole (its size checked) before anything runs
//   out     merged output          pid     the supervisor's pid = the job's process group
//   status  the exit status, written atomically (tmp + mv) when the script ends
//   killed  why the manager killed the group (canceled, timeout), written before the kill
//   reason  a failure that was not the script's (image_pull_failure, runner_system_failure)
// The supervisor also kills the group when the job directory disappears (the VM is being
// deleted, on providers where deletion does not end every process at once).
//
// Outcome of an attach, on stderr as the command's last line (stdout carries only job output):
//   rf-status <code> <size> [reason]  the script ended with <code>; `out` holds <size> bytes in
//                             all; reason: why, when the script says it was not the script's fault
//   rf-killed <reason> <size> the manager killed it     rf-lost <size>  the supervisor died without a status
//   rf-unlaunched             claimed but never launched (the start was cut in a few-ms window)
import { JOB_LABEL, STEP_LABEL } from './docker-plan.js';
import { shq } from './script-quote.js';

export const JOBS_DIR = '"$HOME/.runner-fleet/jobs"';

/** The supervisor, run detached with the job directory as $1. */
const SUPERVISOR = [
  'cd "$1" || exit 1',
  'echo $$ > pid.tmp && mv pid.tmp pid',
  // Watchdog: the directory gone means the VM is going; take the whole group with it. Checked
  // every 2 s: with bash, a timed read on a private fifo waits without a process per check;
  // a plain sh falls back to a sleep loop.
  '( if command -v bash >/dev/null 2>&1; then',
  '    exec bash -c \'if mkfifo -m 600 "$1/.w" 2>/dev/null && exec 9<>"$1/.w"; then rm -f "$1/.w"; while [ -d "$1" ]; do read -r -t 2 -u 9 _ || :; done; else rm -f "$1/.w"; while [ -d "$1" ]; do sleep 2; done; fi; kill -s KILL -- -"$2"\' rf-watch "$1" $$',
  '  else while [ -d "$1" ]; do sleep 2; done; kill -s KILL -- -$$; fi ) </dev/null >/dev/null 2>&1 &',
  'w=$!',
  'bash ./script </dev/null >>out 2>&1 &',
  'wait $!',
  'rc=$?',
  'echo $rc > status.tmp && mv status.tmp status',
  'kill $w 2>/dev/null',
].join('\n');

/**
 * Streams `out` from byte $off while the job runs, then the end line on stderr (uses $d, $off).
 * `tail -f` starts at once and sends output as it is written, so the first line costs no poll;
 * the supervisor's pid (for the liveness check) is read after. A job already ended (status, or
 * supervisor dead) gets a plain read, so the bytes after the offset are complete.
 */
const ATTACH = [
  'end() {',
  '  n=$(( $(wc -c < "$d/out") ))',
  '  if [ -f "$d/status" ]; then read rc < "$d/status"; why=; [ -f "$d/reason" ] && read why < "$d/reason"; echo "rf-status $rc $n $why" >&2',
  '  elif [ -f "$d/killed" ]; then read why < "$d/killed"; echo "rf-killed $why $n" >&2',
  '  else echo "rf-lost $n" >&2; fi',
  '}',
  'if [ ! -d "$d" ]; then echo rf-missing >&2; exit 0; fi',
  'pg=; [ -s "$d/pid" ] && read pg < "$d/pid"',
  'if [ -f "$d/status" ] || { [ -n "$pg" ] && ! kill -0 "$pg" 2>/dev/null; }; then tail -c +$((off+1)) "$d/out"; end; exit 0; fi',
  'tail -c +$((off+1)) -f "$d/out" & t=$!',
  'i=0',
  'while [ -z "$pg" ]; do',
  // Just launched: the supervisor writes its pid within milliseconds; never, if its start was cut.
  '  i=$((i+1)); if [ $i -gt 500 ]; then kill $t 2>/dev/null; echo rf-unlaunched >&2; exit 0; fi',
  '  sleep 0.02; [ -s "$d/pid" ] && read pg < "$d/pid"',
  'done',
  // Wait for the supervisor's end without a process per check. The attach that launched it is
  // its parent: wait for it (it would stay a zombie, alive to kill -0, until reaped). Another
  // attach uses GNU tail --pid (checks every 0.2 s); elsewhere (BSD tail) a sleep loop.
  '[ -n "$sup" ] && wait "$sup" 2>/dev/null',
  'if [ -f "$d/status" ] || ! kill -0 "$pg" 2>/dev/null; then :',
  'elif tail --pid=$$ -n 0 /dev/null 2>/dev/null; then tail --pid="$pg" -s 0.2 -f /dev/null 2>/dev/null',
  'else while [ ! -f "$d/status" ] && kill -0 "$pg" 2>/dev/null; do sleep 0.2; done; fi',
  // Let tail pass on the last bytes; whatever it missed, the manager reads in one more attach.
  'sleep 0.1; kill $t 2>/dev/null',
  'end',
].join('\n');

/**
 * One SSH exec that starts the job unless it was started already, then attaches from `offset`.
 * The script comes on stdin (`scriptBytes` long); it is written beside the job directory, its
 * size checked, and only then is the directory claimed (mkdir) and the supervisor launched, so
 * a cut connection never leaves a half-written script that could run.
 */
export function startOrAttachCommand(jobId: number, scriptBytes: number, offset: number): string {
  const body = [
    `j=${JOBS_DIR}; d="$j/$1"; t="$j/.$1.$$"; sup=`,
    'umask 077; mkdir -p "$j" || { echo "rf-error cannot create $j" >&2; exit 1; }',
    'cat > "$t"',
    'if [ ! -d "$d" ]; then',
    '  if [ "$(( $(wc -c < "$t") ))" != "$2" ]; then rm -f "$t"; echo "rf-error the job script arrived incomplete" >&2; exit 1; fi',
    '  if mkdir "$d" 2>/dev/null; then',
    '    mv "$t" "$d/script" && : > "$d/out"',
    `    if command -v setsid >/dev/null 2>&1; then setsid sh -c ${shq(SUPERVISOR)} rf-job "$d" </dev/null >/dev/null 2>&1 & sup=$!`,
    `    else set -m; nohup sh -c ${shq(SUPERVISOR)} rf-job "$d" </dev/null >/dev/null 2>&1 & sup=$!; set +m; fi`,
    '  fi',
    'fi',
    'rm -f "$t"; off=$3',
    ATTACH,
  ].join('\n');
  return `sh -c ${shq(body)} rf-start ${jobId} ${scriptBytes} ${offset}`;
}

/**
 * The run of a canceled job's after_script, detached like the job (its pid replaces the job's, so
 * an attach follows it): `bash ./script after_canceled`, appending to `out`, killed with its
 * whole group past $1 seconds (RUNNER_AFTER_SCRIPT_TIMEOUT), with a trace line saying so.
 */
const AFTER_CANCELED = [
  'cd "$2" || exit 1',
  'echo $$ > pid.tmp && mv pid.tmp pid',
  'bash ./script after_canceled </dev/null >>out 2>&1 &',
  'c=$!',
  '( sleep "$1"; printf "\nWARNING: after_script did not end within %s s (RUNNER_AFTER_SCRIPT_TIMEOUT): stopped\n" "$1" >>out; kill -s KILL -- -$$ ) </dev/null >/dev/null 2>&1 &',
  'w=$!',
  'wait $c',
  'kill $w 2>/dev/null',
].join('\n');

/** killCommand's exit code when it started (or found running) the after_script of a cancel: watch it, then kill again to clean up. */
export const AFTER_SCRIPT_RUNNING = 10;

/**
 * Kill the job's process group, recording why first; a no-op once the job has ended. A cancel
 * with `afterScriptS` > 0 of a job that reached its script (the script's `after` marker) then runs
 * its after_script (gitlab-runner 17 does, with CI_JOB_STATUS=canceled): the step containers go,
 * the network and services stay for it, and the command exits AFTER_SCRIPT_RUNNING with the run
 * launched (or already under way, for a manager that re-attached). Otherwise, or on the kill
 * after that run, every container and the network of the job go too.
 */
export function killCommand(jobId: number, reason: 'canceled' | 'timeout', afterScriptS = 0): string {
  const after = Math.max(0, Math.floor(afterScriptS));
  const body = [
    `d=${JOBS_DIR}/$1`,
    '[ -s "$d/pid" ] || exit 0',
    '[ -f "$d/status" ] && exit 0',
    `if [ "$2" = canceled ] && [ "$3" -gt 0 ] && [ -f "$d/after-canceled" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then exit ${AFTER_SCRIPT_RUNNING}; fi`,
    'printf "%s\n" "$2" > "$d/killed"',
    'kill -s KILL -- -"$(cat "$d/pid")" 2>/dev/null',
    'if [ "$2" = canceled ] && [ "$3" -gt 0 ] && mv "$d/after" "$d/after-canceled" 2>/dev/null; then',
    // The killed step's container would run on (the daemon's child): it goes; services stay.
    `  command -v docker >/dev/null 2>&1 && docker ps -aq --filter label=${JOB_LABEL}=$1 --filter label=${STEP_LABEL} 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1`,
    '  rm -f "$d/pid"',
    `  if command -v setsid >/dev/null 2>&1; then setsid sh -c ${shq(AFTER_CANCELED)} rf-after "$3" "$d" </dev/null >/dev/null 2>&1 &`,
    `  else set -m; nohup sh -c ${shq(AFTER_CANCELED)} rf-after "$3" "$d" </dev/null >/dev/null 2>&1 & set +m; fi`,
    '  i=0; while [ ! -s "$d/pid" ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done',
    `  exit ${AFTER_SCRIPT_RUNNING}`,
    'fi',
    // A docker job's containers are the daemon's children, not the group's: remove them too.
    `command -v docker >/dev/null 2>&1 && docker ps -aq --filter label=${JOB_LABEL}=$1 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1`,
    `command -v docker >/dev/null 2>&1 && docker network rm rf-$1 >/dev/null 2>&1`,
    'exit 0',
  ].join('\n');
  return `sh -c ${shq(body)} rf-kill ${jobId} ${reason} ${after}`;
}

/** Failure reasons a job script may report beside its exit code (anything else is ignored). */
export const SCRIPT_FAILURE_REASONS = ['image_pull_failure', 'runner_system_failure', 'upload_failure', 'download_failure'] as const;
export type ScriptFailureReason = (typeof SCRIPT_FAILURE_REASONS)[number];
const isScriptFailureReason = (s: string | undefined): s is ScriptFailureReason => (SCRIPT_FAILURE_REASONS as readonly string[]).includes(s ?? '');

export type AttachEnd =
  | { kind: 'status'; code: number; size: number; reason?: ScriptFailureReason }
  | { kind: 'killed'; reason: string; size: number }
  | { kind: 'lost'; size: number }
  | { kind: 'missing' }
  | { kind: 'unlaunched' }
  | { kind: 'error'; message: string };

/** The end line of an attach (the last `rf-` line of its stderr); null when it never came. */
export function parseAttachEnd(stderr: string): AttachEnd | null {
  const lines = stderr.split('\n').filter((l) => l.startsWith('rf-'));
  const last = lines[lines.length - 1];
  if (!last) return null;
  const [tag, a, b, c] = last.trim().split(/\s+/);
  const n = (s: string | undefined) => (s !== undefined && /^\d+$/.test(s) ? Number(s) : NaN);
  switch (tag) {
    case 'rf-status':
      if (!Number.isFinite(n(a)) || !Number.isFinite(n(b))) return null;
      return { kind: 'status', code: n(a), size: n(b), ...(isScriptFailureReason(c) ? { reason: c } : {}) };
    case 'rf-killed':
      return a && Number.isFinite(n(b)) ? { kind: 'killed', reason: a, size: n(b) } : null;
    case 'rf-lost':
      return Number.isFinite(n(a)) ? { kind: 'lost', size: n(a) } : null;
    case 'rf-missing':
      return { kind: 'missing' };
    case 'rf-unlaunched':
      return { kind: 'unlaunched' };
    case 'rf-error':
      return { kind: 'error', message: last.slice('rf-error '.length).trim() };
    default:
      return null;
  }
}
