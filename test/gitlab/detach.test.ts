// The detached-job commands run by a real shell (bash -c, as a VM's sshd would), with HOME in a
// temporary directory: start and stream, re-attach from an offset, one run however often the
// start is repeated, a half-sent script never runs, kill records why, and the end lines parse.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AFTER_SCRIPT_RUNNING, killCommand, parseAttachEnd, startOrAttachCommand } from '../../src/gitlab/detach.js';
import { parseJobPayload } from '../../src/gitlab/job-payload.js';
import { afterScriptTimeout } from '../../src/gitlab/script.js';
import { endCauseOf } from '../../src/manager/executor.js';
import { reportBackoffMs } from '../../src/manager/job-reports.js';
import { recoveryPlan } from '../../src/manager/reconciler.js';

const home = mkdtempSync(join(tmpdir(), 'rf-detach-'));
afterAll(() => rmSync(home, { recursive: true, force: true }));

function sh(command: string, stdin = '', path = process.env['PATH']!): Promise<{ stdout: string; stderr: string; firstByteMs: number; code: number | null }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    let firstByteMs = -1;
    const child = spawn('bash', ['-c', command], { env: { PATH: path, HOME: home } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => {
      if (firstByteMs < 0) firstByteMs = Date.now() - t0;
      stdout += c;
    });
    child.stderr.on('data', (c) => (stderr += c));
    child.on('close', (code) => resolve({ stdout, stderr, firstByteMs, code }));
    child.stdin.end(stdin);
  });
}

const jobDir = (id: number) => join(home, '.runner-fleet/jobs', String(id));

describe('detached job commands', () => {
  it('starts the script detached, streams its output and ends with its exit status and output size', async () => {
    const script = 'echo one\nsleep 0.3\necho two\nexit 3\n';
    const r = await sh(startOrAttachCommand(1, Buffer.byteLength(script), 0), script);
    expect(r.stdout).toBe('one\ntwo\n');
    expect(parseAttachEnd(r.stderr)).toEqual({ kind: 'status', code: 3, size: 8 });
    expect(readFileSync(join(jobDir(1), 'status'), 'utf8').trim()).toBe('3');
  });

  it('without GNU tail --pid (BSD tail, macOS) the attach still sees the end, by its sleep loop', async () => {
    const bin = join(home, 'bsd-bin');
    mkdirSync(bin);
    // Like BSD tail: no --pid option.
    writeFileSync(join(bin, 'tail'), '#!/bin/sh\nfor a in "$@"; do case "$a" in --pid*) echo "tail: illegal option -- -" >&2; exit 1;; esac; done\nexec /usr/bin/tail "$@"\n', { mode: 0o755 });
    const script = 'echo one\nsleep 0.5\necho two\nexit 4\n';
    const r = await sh(startOrAttachCommand(11, Buffer.byteLength(script), 0), script, `${bin}:${process.env['PATH']!}`);
    expect(r.stdout).toBe('one\ntwo\n');
    expect(parseAttachEnd(r.stderr)).toEqual({ kind: 'status', code: 4, size: 8 });
  });

  it('kills the job when its directory is removed (the VM going), without a process per check', async () => {
    const script = 'sleep 60\n';
    const first = spawn('bash', ['-c', startOrAttachCommand(12, Buffer.byteLength(script), 0)], { env: { PATH: process.env['PATH']!, HOME: home }, detached: true });
    first.stdin.end(script);
    const pidFile = join(jobDir(12), 'pid');
    while (!existsSync(pidFile) || !readFileSync(pidFile, 'utf8').trim()) await new Promise((r) => setTimeout(r, 20));
    const pgid = Number(readFileSync(pidFile, 'utf8').trim());
    const alive = () => {
      try {
        process.kill(-pgid, 0);
        return true;
      } catch {
        return false;
      }
    };
    // The watchdog waits in bash's timed read: no sleep process in the group across a check.
    await new Promise((r) => setTimeout(r, 2500));
    const group = execFileSync('ps', ['-o', 'comm=', '-g', String(pgid)], { encoding: 'utf8' }).split('\n').filter(Boolean);
    expect(group.filter((c) => c === 'sleep')).toEqual(['sleep']); // the job's own sleep 60 only
    expect(alive()).toBe(true);
    rmSync(jobDir(12), { recursive: true, force: true });
    const until = Date.now() + 5000;
    while (alive() && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    expect(alive()).toBe(false);
    await new Promise((r) => first.once('exit', r).exitCode !== null && r(null)); // the attach sees the end too
  });

  it('a repeated start runs nothing again and re-attaches from the offset asked', async () => {
    const script = 'echo ran >> "$HOME/runs-2"\necho hello-from-2\n';
    await sh(startOrAttachCommand(2, Buffer.byteLength(script), 0), script);
    const again = await sh(startOrAttachCommand(2, Buffer.byteLength(script), 6), script);
    expect(again.stdout).toBe('from-2\n');
    expect(parseAttachEnd(again.stderr)).toEqual({ kind: 'status', code: 0, size: 13 });
    expect(readFileSync(join(home, 'runs-2'), 'utf8')).toBe('ran\n');
  });

  it('keeps running when the watcher goes away, and a later attach gets the rest', async () => {
    const script = 'for i in 1 2 3 4 5; do echo "n$i"; sleep 0.2; done\n';
    const first = spawn('bash', ['-c', startOrAttachCommand(3, Buffer.byteLength(script), 0)], { env: { PATH: process.env['PATH']!, HOME: home }, detached: true });
    first.stdin.end(script);
    let got = '';
    await new Promise<void>((resolve) => first.stdout.on('data', (c) => ((got += c), got.includes('n2') && resolve())));
    process.kill(-first.pid!, 'SIGKILL'); // the watcher's whole process group, as a dropped session
    const rest = await sh(startOrAttachCommand(3, Buffer.byteLength(script), Buffer.byteLength(got)), script);
    expect(got + rest.stdout).toBe('n1\nn2\nn3\nn4\nn5\n');
    expect(parseAttachEnd(rest.stderr)).toMatchObject({ kind: 'status', code: 0 });
  });

  it('never runs a script that arrived incomplete, and claims nothing', async () => {
    const r = await sh(startOrAttachCommand(4, 1000, 0), 'echo partial\n');
    expect(parseAttachEnd(r.stderr)).toEqual({ kind: 'error', message: 'the job script arrived incomplete' });
    expect(existsSync(jobDir(4))).toBe(false);
  });

  it('kill ends the job group and records why; the attach reports it', async () => {
    const script = 'echo started\nsleep 30\n';
    const watching = sh(startOrAttachCommand(5, Buffer.byteLength(script), 0), script);
    while (!existsSync(join(jobDir(5), 'pid'))) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    await sh(killCommand(5, 'canceled'));
    const r = await watching;
    expect(r.stdout).toBe('started\n');
    expect(parseAttachEnd(r.stderr)).toEqual({ kind: 'killed', reason: 'canceled', size: 8 });
    const pid = Number(readFileSync(join(jobDir(5), 'pid'), 'utf8'));
    expect(() => process.kill(pid, 0)).toThrow();
  });
});

describe('after_script of a cancel', () => {
  // The job script's protocol (buildBashScript): `after` marks a job past its script start (it holds
  // the run's temp dir); `bash ./script after_canceled` runs only the after_script.
  const script = [
    'if [ "${1:-}" = after_canceled ]; then echo "after-run tmp=$(cat after-canceled)"; sleep 0.5; echo after-done; exit 0; fi',
    'printf "%s\\n" /tmp/runner-fleet.x > after',
    'echo started',
    'sleep 30',
    '',
  ].join('\n');

  it('kills the job, then runs the after_script detached in its place (the attach follows it); a repeated cancel leaves it running; the last kill ends it', async () => {
    const watching = sh(startOrAttachCommand(20, Buffer.byteLength(script), 0), script);
    while (!existsSync(join(jobDir(20), 'after'))) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    const jobPid = Number(readFileSync(join(jobDir(20), 'pid'), 'utf8'));
    expect((await sh(killCommand(20, 'canceled', 5))).code).toBe(AFTER_SCRIPT_RUNNING);
    const first = await watching; // it may pass on the start of the after_script's output too
    expect(first.stdout).toMatch(/^started\n/);
    expect(() => process.kill(jobPid, 0)).toThrow(); // the script's group is gone
    const afterPid = Number(readFileSync(join(jobDir(20), 'pid'), 'utf8'));
    expect(afterPid).not.toBe(jobPid);
    // A manager that re-attached and hears the cancel again: the run goes on.
    expect((await sh(killCommand(20, 'canceled', 5))).code).toBe(AFTER_SCRIPT_RUNNING);
    const rest = await sh(startOrAttachCommand(20, Buffer.byteLength(script), Buffer.byteLength(first.stdout)), script);
    expect(first.stdout + rest.stdout).toBe('started\nafter-run tmp=/tmp/runner-fleet.x\nafter-done\n');
    expect(parseAttachEnd(rest.stderr)).toMatchObject({ kind: 'killed', reason: 'canceled' });
    expect((await sh(killCommand(20, 'canceled', 5))).code).toBe(0); // ended: the clean-up kill
    expect(existsSync(join(jobDir(20), 'after'))).toBe(false);
  });

  it('takes its bound from RUNNER_AFTER_SCRIPT_TIMEOUT (a Go duration), else 5 minutes', () => {
    const bound = (value?: string) => {
      const p = parseJobPayload({ id: 1, token: 't', steps: [{ name: 'script', script: ['true'] }], variables: value === undefined ? [] : [{ key: 'RUNNER_AFTER_SCRIPT_TIMEOUT', value }] });
      if (!p.ok) throw new Error(p.error);
      return afterScriptTimeout(p.job);
    };
    expect(bound()).toEqual({ seconds: 300 });
    expect(bound('90s')).toEqual({ seconds: 90 });
    expect(bound('1m30s')).toEqual({ seconds: 90 });
    expect(bound('1.5h')).toEqual({ seconds: 5400 });
    expect(bound('500ms')).toEqual({ seconds: 1 });
    expect(bound('10')).toMatchObject({ seconds: 300, warning: expect.stringContaining('is not a duration') });
  });

  it('runs none for a timeout, a job not yet at its script, or without an after_script; bounds the run by its timeout', async () => {
    const noAfter = 'echo started\nsleep 30\n';
    for (const [id, body, reason, seconds] of [[21, script, 'timeout', 5], [22, noAfter, 'canceled', 5], [23, script, 'canceled', 0]] as const) {
      const watching = sh(startOrAttachCommand(id, Buffer.byteLength(body), 0), body);
      while (!(existsSync(join(jobDir(id), 'out')) && readFileSync(join(jobDir(id), 'out'), 'utf8').includes('started'))) await new Promise((r) => setTimeout(r, 20));
      expect((await sh(killCommand(id, reason, seconds))).code).toBe(0);
      expect(parseAttachEnd((await watching).stderr)).toMatchObject({ kind: 'killed', reason });
    }
    const slow = script.replace('sleep 0.5', 'sleep 30');
    const watching = sh(startOrAttachCommand(24, Buffer.byteLength(slow), 0), slow);
    while (!existsSync(join(jobDir(24), 'after'))) await new Promise((r) => setTimeout(r, 20));
    expect((await sh(killCommand(24, 'canceled', 1))).code).toBe(AFTER_SCRIPT_RUNNING);
    await watching;
    const t0 = Date.now();
    const rest = await sh(startOrAttachCommand(24, Buffer.byteLength(slow), 0), slow);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(rest.stdout).toContain('after-run');
    expect(rest.stdout).toContain('WARNING: after_script did not end within 1 s (RUNNER_AFTER_SCRIPT_TIMEOUT): stopped');
    expect(rest.stdout).not.toContain('after-done');
  });
});

describe('re-attach decisions', () => {
  it('maps attach ends to job ends', () => {
    expect(endCauseOf({ kind: 'status', code: 0, size: 1 })).toEqual({ kind: 'exit', code: 0 });
    expect(endCauseOf({ kind: 'killed', reason: 'timeout', size: 1 })).toEqual({ kind: 'timeout' });
    expect(endCauseOf({ kind: 'killed', reason: 'canceled', size: 1 })).toEqual({ kind: 'canceled' });
    expect(endCauseOf({ kind: 'lost', size: 1 }).kind).toBe('system');
    expect(endCauseOf({ kind: 'unlaunched' }).kind).toBe('system');
    expect(parseAttachEnd('noise\nrf-status 7 120\n')).toEqual({ kind: 'status', code: 7, size: 120 });
    expect(parseAttachEnd('connection reset')).toBeNull();
  });

  it('re-attaches only detached jobs on a VM still theirs, with their attach data', () => {
    const attach = { guest_os: 'linux', payload_enc: 'x' };
    expect(recoveryPlan(attach, { state: 'running' }, true)).toEqual({ action: 'reattach' });
    expect(recoveryPlan(attach, { state: 'assigned' }, true)).toEqual({ action: 'reattach' });
    expect(recoveryPlan(attach, { state: 'creating' }, true).action).toBe('fail');
    expect(recoveryPlan({ guest_os: null, payload_enc: null }, { state: 'running' }, true).action).toBe('fail');
    expect(recoveryPlan({ guest_os: 'windows', payload_enc: 'x' }, { state: 'running' }, true).action).toBe('fail');
    expect(recoveryPlan(attach, undefined, true).action).toBe('fail');
  });

  it('backs report retries off exponentially, jittered, capped', () => {
    expect(reportBackoffMs(1, 1000, 60_000, 1)).toBe(1000);
    expect(reportBackoffMs(3, 1000, 60_000, 1)).toBe(4000);
    expect(reportBackoffMs(30, 1000, 60_000, 1)).toBe(60_000);
    expect(reportBackoffMs(3, 1000, 60_000, 0)).toBe(2000);
  });
});
