// The generated job script run by a real bash against the emulator's real git repository.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGitLabEmulator, type EnqueueSpec, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { GitLabClient } from '../../src/gitlab/client.js';
import { parseJobPayload, type JobPayload } from '../../src/gitlab/job-payload.js';
import { buildBashScript, unbuiltJobScript } from '../../src/gitlab/script.js';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let gitlab: GitLabEmulator;
let client: GitLabClient;
const home = mkdtempSync(join(tmpdir(), 'rf-script-'));

beforeAll(async () => {
  gitlab = await startGitLabEmulator();
  client = new GitLabClient({ url: gitlab.url, timeoutMs: 5000, log: pino({ level: 'silent' }), systemId: 's_test' });
});
afterAll(async () => {
  await gitlab.close();
  rmSync(home, { recursive: true, force: true });
});

async function take(spec: Omit<EnqueueSpec, 'runnerToken'>): Promise<JobPayload> {
  gitlab.enqueue({ ...spec, runnerToken: 'script-token' });
  const res = await client.requestJob('script-token');
  if (res.kind !== 'job') throw new Error('no job');
  const parsed = parseJobPayload(res.raw);
  if (!parsed.ok) throw new Error(parsed.error);
  return parsed.job;
}

/** Async: the emulator serving git lives in this process, so its event loop must keep running. */
function bash(script: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', script], { env: { PATH: process.env['PATH']!, HOME: home }, timeout: 30_000 });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (out += c));
    child.on('close', (code) => resolve({ code, out }));
  });
}

describe('unbuiltJobScript', () => {
  it('ends a job that had not started as the runner\'s failure, with the reason beside its exit code', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rf-unbuilt-'));
    try {
      writeFileSync(join(dir, 'script'), unbuiltJobScript('signing timed out'), { mode: 0o700 });
      let code = 0;
      let out = '';
      try {
        out = execFileSync('bash', ['./script'], { cwd: dir, encoding: 'utf8' });
      } catch (err) {
        code = (err as { status: number }).status;
        out = String((err as { stdout: string }).stdout);
      }
      expect(code).toBe(1);
      expect(out).toContain('could not rebuild the job script: signing timed out');
      expect(readFileSync(join(dir, 'reason'), 'utf8').trim()).toBe('runner_system_failure');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('buildBashScript', () => {
  it('prints its first line before anything else', async () => {
    const job = await take({ script: ['true'], git: false });
    expect((await bash(buildBashScript(job))).out.split('\n')[0]).toMatch(/^Running with runner-fleet on /);
  });

  it('exports variables with quotes, dollars and newlines intact, and file variables as files', async () => {
    const tricky = `it's "quoted" $HOME \`x\`\nline2`;
    const job = await take({
      script: ['printf "%s|" "$TRICKY"', 'cat "$MY_FILE"', 'echo "[$MY_FILE]"'],
      variables: [{ key: 'TRICKY', value: tricky }, { key: 'MY_FILE', value: 'file-content', file: true }],
      git: false,
    });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(0);
    expect(r.out).toContain(`${tricky}|`);
    expect(r.out).toContain('file-content');
    expect(r.out).toMatch(/\[\/.*\/vars\/MY_FILE\]/);
  });

  it('stops at the failing command, keeps its exit code, and still runs after_script', async () => {
    const job = await take({ script: ['echo one', 'exit 3', 'echo never'], afterScript: ['echo after-1', 'false', 'echo after-not'], git: false });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(3);
    expect(r.out).toContain('one');
    expect(r.out).not.toMatch(/^never$/m);
    expect(r.out).toContain('after-1');
    expect(r.out).not.toMatch(/^after-not$/m);
  });

  it('fails on a failing pipeline stage (pipefail)', async () => {
    const job = await take({ script: ['false | cat', 'echo never'], git: false });
    expect((await bash(buildBashScript(job))).code).toBe(1);
  });

  it('fetches the repository with the job token and checks out the job sha', async () => {
    const job = await take({ script: ['git rev-parse HEAD', 'cat README.md'] });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(0);
    expect(r.out).toContain(job.git_info!.sha!);
    expect(r.out).toContain('# demo project');
    expect(r.out).not.toContain(job.token); // the URL's credentials are never echoed
  });

  it('lets the last definition of a variable win and expands $VAR from job variables, but not raw ones', async () => {
    const job = await take({
      script: ['echo "dup=$DUP"', 'echo "exp=$EXPANDED"', 'echo "raw=$RAWV"', 'echo "keep=$KEEP"'],
      variables: [
        { key: 'DUP', value: 'first' },
        { key: 'DUP', value: 'second' },
        { key: 'BASE', value: 'base-value' },
        { key: 'EXPANDED', value: '${BASE}/x-$BASE' },
        { key: 'KEEP', value: '$NOT_A_JOB_VAR' },
      ],
      git: false,
      mutate: (p) => ({ ...p, variables: [...(p['variables'] as object[]), { key: 'RAWV', value: '$BASE', public: true, raw: true }] }),
    });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^dup=second$/m);
    expect(r.out).toMatch(/^exp=base-value\/x-base-value$/m);
    expect(r.out).toMatch(/^raw=\$BASE$/m);
    expect(r.out).toMatch(/^keep=\$NOT_A_JOB_VAR$/m);
  });

  it('writes a multi-line file variable byte for byte, readable only by the job user', async () => {
    const pem = "-----BEGIN KEY-----\nab'c\"d\n-----END KEY-----\n";
    const job = await take({ script: ['stat -c %a "$KEY_FILE"', 'cat "$KEY_FILE"; echo "<eof>"'], variables: [{ key: 'KEY_FILE', value: pem, file: true }], git: false });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(0);
    expect(r.out).toContain(`${pem}<eof>`);
    expect(r.out).toMatch(/^600$/m);
  });

  it('after_script sees the job variables, runs from the project dir and keeps the script exit code', async () => {
    const job = await take({ script: ['exit 7'], afterScript: ['echo "after in $(pwd) with $AV"'], variables: [{ key: 'AV', value: 'after-var' }], git: false });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(7);
    expect(r.out).toMatch(/^after in \/.*\/builds\/demo\/project with after-var$/m);
  });

  it('runs a release step after script in its own stage, only when script passed; its failure is the job\'s', async () => {
    const stages = (out: string) => [...out.matchAll(/section_start:\d+:(\w+)/g)].map((m) => m[1]);
    const ok = await take({ script: ['echo built'], release: ['echo "releasing $RV"'], afterScript: ['echo "after $CI_JOB_STATUS"'], variables: [{ key: 'RV', value: 'v1' }], git: false });
    const r = await bash(buildBashScript(ok));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^releasing v1$/m);
    expect(stages(r.out)).toEqual(['prepare_script', 'get_sources', 'step_script', 'step_release', 'after_script', 'cleanup_file_variables']);
    expect(r.out).toMatch(/section_end:\d+:step_release/);
    const scriptFails = await take({ script: ['exit 3'], release: ['echo never-released'], git: false });
    const f = await bash(buildBashScript(scriptFails));
    expect(f.code).toBe(3);
    expect(f.out).not.toMatch(/^never-released$/m);
    expect(stages(f.out)).not.toContain('step_release');
    const releaseFails = await take({ script: ['true'], release: ['exit 5'], afterScript: ['echo "after $CI_JOB_STATUS"'], git: false });
    const g = await bash(buildBashScript(releaseFails));
    expect(g.code).toBe(5);
    expect(g.out).toMatch(/^after failed$/m);
  });

  it('gives the job gitlab.tlsCaFile as the file variable CI_SERVER_TLS_CA_FILE, and git trusts it', async () => {
    const pem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
    const job = await take({ script: ['cat "$CI_SERVER_TLS_CA_FILE"', 'echo "builds=$CI_BUILDS_DIR project=$CI_PROJECT_DIR"'], git: false });
    const r = await bash(buildBashScript(job, { tlsCa: pem }));
    expect(r.code).toBe(0);
    expect(r.out).toContain(pem);
    expect(r.out).toMatch(/^builds=\/.*\/builds project=\/.*\/builds\/demo\/project$/m);
    const withGit = await take({ script: ['true'] });
    expect(buildBashScript(withGit, { tlsCa: pem })).toContain('export GIT_SSL_CAINFO="$CI_SERVER_TLS_CA_FILE"');
    expect((await bash(buildBashScript(job))).out).not.toContain('BEGIN CERTIFICATE');
  });

  it('runs commands in order with their $ echo lines, and stderr is in the same stream', async () => {
    const job = await take({ script: ['echo out-1', 'echo err-1 >&2', 'echo out-2'], git: false });
    const r = await bash(buildBashScript(job));
    const lines = r.out.split('\n').filter((l) => /out-|err-/.test(l));
    expect(lines).toEqual(['\x1b[32;1m$ echo out-1\x1b[0;m', 'out-1', '\x1b[32;1m$ echo err-1 >&2\x1b[0;m', 'err-1', '\x1b[32;1m$ echo out-2\x1b[0;m', 'out-2']);
  });

  it('honours GIT_DEPTH and GIT_STRATEGY=clone (a clean tree at the sha)', async () => {
    const first = await take({ script: ['touch stale-file'] });
    expect((await bash(buildBashScript(first))).code).toBe(0);
    const job = await take({
      script: ['git rev-parse --is-shallow-repository', 'ls -A', 'git rev-parse HEAD'],
      variables: [{ key: 'GIT_STRATEGY', value: 'clone' }, { key: 'GIT_DEPTH', value: '1' }],
    });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^true$/m);
    expect(r.out).not.toContain('stale-file');
    expect(r.out).toContain(job.git_info!.sha!);
    expect(r.out).toContain('with git depth set to 1');
  });

  it('fetches submodules with GIT_SUBMODULE_STRATEGY (the token reaches them), and leaves them out without it', async () => {
    for (const strategy of ['normal', 'recursive', null]) {
      rmSync(join(home, 'builds'), { recursive: true, force: true });
      const job = await take({ submodule: true, script: ['cat lib/lib.txt 2>/dev/null || echo no-submodule'], variables: strategy ? [{ key: 'GIT_SUBMODULE_STRATEGY', value: strategy }] : [] });
      const r = await bash(buildBashScript(job));
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(strategy ? /^from the submodule$/m : /^no-submodule$/m);
      expect(r.out).not.toContain(job.token);
    }
  });

  it('skips git with GIT_STRATEGY=none', async () => {
    const job = await take({ script: ['test -d .git && echo has-git || echo no-git'], git: false });
    rmSync(join(home, 'builds'), { recursive: true, force: true });
    const r = await bash(buildBashScript(job));
    expect(r.out).toContain('Skipping Git repository setup');
    expect(r.out).toMatch(/^no-git$/m);
  });

  it('fails with exit 1 and without showing the token when GitLab refuses the fetch', async () => {
    const job = await take({ script: ['echo should-not-run'] });
    // A finished job's token no longer opens the repository, as on GitLab.
    expect((await client.updateJob(job.id, job.token, { state: 'success' })).result).toBe('ok');
    rmSync(join(home, 'builds'), { recursive: true, force: true });
    const r = await bash(buildBashScript(job));
    expect(r.code).toBe(1);
    expect(r.out).toContain('ERROR: git fetch/checkout failed');
    expect(r.out).not.toMatch(/^should-not-run$/m);
    expect(r.out).not.toContain(job.token);
  });

  it('keeps its exit code and cleans up whatever IFS, RF_TMP, rf_rc, HOME or PATH the job sets', async () => {
    const victim = join(home, 'victim');
    mkdirSync(victim, { recursive: true });
    writeFileSync(join(victim, 'keep'), 'x');
    const job = await take({
      // Builtins only: the job's PATH is the job's business; the wrapper's own commands keep the VM's.
      script: ['echo "file=$(< "$MY_FILE")"', 'echo "project=$CI_PROJECT_DIR"', 'exit 10'],
      afterScript: ['echo after-ran', 'exit 20'],
      variables: [
        { key: 'IFS', value: '0' },
        { key: 'RF_TMP', value: victim },
        { key: 'rf_rc', value: '0' },
        { key: 'rf_dir', value: '/nonexistent' },
        { key: 'HOME', value: '/nonexistent-home' },
        { key: 'PATH', value: '/nonexistent-bin' },
        { key: 'MY_FILE', value: 'file-var-content', file: true },
      ],
      git: false,
    });
    const r = await bash(buildBashScript(job));
    expect(r.out).toMatch(/^file=file-var-content$/m);
    expect(r.out).toMatch(new RegExp(`^project=${home}/builds/demo/project$`, 'm'));
    expect(r.out).toContain('after-ran');
    expect(r.out).toContain('WARNING: after_script failed');
    expect(r.code).toBe(10); // with IFS=0 in the wrapper, `exit $rf_rc` was `exit 1`
    expect(existsSync(join(victim, 'keep'))).toBe(true); // rm -rf "$RF_TMP" was the job's directory
  });

  it('keeps exit codes 100 and 0 under IFS=0', async () => {
    for (const code of [100, 0]) {
      const job = await take({ script: [`exit ${code}`], variables: [{ key: 'IFS', value: '0' }], git: false });
      expect((await bash(buildBashScript(job))).code).toBe(code);
    }
  });

  it('passes payload arguments to git after --, and refuses a URL or refspec starting with "-"', async () => {
    const job = await take({ script: ['echo ran'] });
    const s = buildBashScript(job);
    expect(s).toContain(`git remote add -- origin '${job.git_info!.repo_url}'`);
    expect(s).toMatch(/git -c protocol\.version=2 fetch -q (--depth \d+ )?--prune -- origin '\+refs/);
    expect(s).toContain(`checkout -f -q '${job.git_info!.sha}' --`);
    for (const git_info of [{ ...job.git_info!, repo_url: `--upload-pack=touch ${home}/pwned` }, { ...job.git_info!, refspecs: [`--upload-pack=touch ${home}/pwned`] }]) {
      const bad = { ...job, git_info };
      const r = await bash(buildBashScript(bad));
      expect(r.code).toBe(1);
      expect(r.out).toMatch(/ERROR: the (repository URL starts with "-"|refspec "--upload-pack=touch [^"]*" is not valid)/);
      expect(r.out).not.toMatch(/^ran$/m);
      expect(existsSync(join(home, 'pwned'))).toBe(false);
    }
  });
});
