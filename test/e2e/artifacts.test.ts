// Artifacts and dependencies end to end through real parts: a job on a local VM (real SSH, real
// bash, zip and curl) collects its artifacts and posts them to the GitLab emulator itself; a later
// job downloads them with the token GitLab sends and finds them in its project dir. Retries on
// 5xx, GitLab's message on 413, `when`, `exclude`, `untracked`, gzip reports, raw artifacts.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type EmuArtifact, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import '../../src/providers/builtin.js';
import { freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN } from '../helpers/shard.js';

/** The paths inside a zip the emulator received. */
function zipEntries(a: EmuArtifact, dir: string): string[] {
  const f = join(dir, `${Math.random().toString(36).slice(2)}.zip`);
  writeFileSync(f, a.data);
  return execFileSync('unzip', ['-Z1', f], { encoding: 'utf8' }).split('\n').filter(Boolean).sort();
}

describe('artifacts and dependencies', () => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-artifacts-'));
    db = await freshDatabase(process.env['DATABASE_URL'] ? 'postgres' : 'pglite');
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: 'e2e-artifacts', gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 2, max: 6 }));
    shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false });
  }, 60_000);

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const BUILD = [
    'mkdir -p dist/sub dist/logs',
    'echo alpha > dist/a.txt; echo beta > dist/sub/b.txt; echo noise > dist/logs/x.log; echo top > top.txt',
    'printf "<testsuite tests=\\"1\\"/>" > report.xml',
  ];

  it('uploads a zip of paths minus exclude and a gzip report; a dependent job gets the zip in its project dir', async () => {
    const build = gitlab.enqueue({
      runnerToken: TOKEN,
      name: 'build',
      git: false,
      script: BUILD,
      artifacts: [
        { name: 'build-out', paths: ['dist/'], exclude: ['dist/**/*.log'], when: 'on_success', artifact_type: 'archive', artifact_format: 'zip', expire_in: '1 week' },
        { paths: ['report.xml'], when: 'always', artifact_type: 'junit', artifact_format: 'gzip' },
      ],
    });
    const b = await gitlab.waitForFinal(build, 60_000);
    expect(b.state, b.trace).toBe('success');
    expect(b.runnerInfo?.features).toMatchObject({ artifacts: true, upload_multiple_artifacts: true, artifacts_exclude: true });
    expect(b.trace).toMatch(/section_start:\d+:upload_artifacts_on_success/);
    const archive = b.artifacts.find((a) => a.artifactType === 'archive')!;
    expect([archive.artifactFormat, archive.expireIn, archive.filename]).toEqual(['zip', '1 week', 'build-out.zip']);
    expect(zipEntries(archive, dataDir).filter((e) => !e.endsWith('/'))).toEqual(['dist/a.txt', 'dist/sub/b.txt']);
    const junit = b.artifacts.find((a) => a.artifactType === 'junit')!;
    expect(junit.artifactFormat).toBe('gzip');
    expect(gunzipSync(junit.data).toString()).toBe('<testsuite tests="1"/>');

    const test = gitlab.enqueue({ runnerToken: TOKEN, name: 'test', git: false, dependencies: [build], script: ['cat dist/a.txt dist/sub/b.txt', 'test ! -e dist/logs/x.log && echo no-log'] });
    const t = await gitlab.waitForFinal(test, 60_000);
    expect(t.state, t.trace).toBe('success');
    expect(t.trace).toMatch(/section_start:\d+:download_artifacts/);
    expect(t.trace).toContain(`Downloading artifacts for build (${build})... 200 OK`);
    expect(t.trace).toMatch(/^alpha\r?\nbeta$/m);
    expect(t.trace).toContain('no-log');
  });

  it('uploads a raw artifact as the one file it names, unchanged; a raw entry matching two files fails the upload', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      git: false,
      script: ['printf "metric_a 1\\nmetric_b 2\\n" > metrics.txt'],
      artifacts: [{ name: 'metrics.txt', paths: ['metrics.txt'], artifact_type: 'metrics', artifact_format: 'raw', expire_in: '2 days' }],
    });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final.state, final.trace).toBe('success');
    expect(final.runnerInfo?.features).toMatchObject({ upload_raw_artifacts: true });
    expect(final.artifacts.map((a) => [a.artifactType, a.artifactFormat, a.filename, a.expireIn, a.data.toString()])).toEqual([['metrics', 'raw', 'metrics.txt', '2 days', 'metric_a 1\nmetric_b 2\n']]);
    const two = gitlab.enqueue({ runnerToken: TOKEN, git: false, script: ['echo 1 > a.txt; echo 2 > b.txt'], artifacts: [{ paths: ['*.txt'], artifact_type: 'metrics', artifact_format: 'raw' }] });
    const bad = await gitlab.waitForFinal(two, 60_000);
    expect([bad.state, bad.failureReason], bad.trace).toEqual(['failed', 'script_failure']);
    expect(bad.trace).toContain('ERROR: artifacts metrics (raw) must match exactly one file');
    expect(bad.artifacts).toEqual([]);
  });

  it('retries an upload answered 502 and a download answered 503, then succeeds', async () => {
    gitlab.faults.artifactUploadFailures = { status: 502, times: 2 };
    const build = gitlab.enqueue({ runnerToken: TOKEN, name: 'flaky-build', git: false, script: BUILD, artifacts: [{ paths: ['top.txt'], artifact_type: 'archive', artifact_format: 'zip' }] });
    const b = await gitlab.waitForFinal(build, 90_000);
    expect(b.state, b.trace).toBe('success');
    expect(b.trace.match(/WARNING: Uploading artifacts as "archive" to coordinator\.\.\. 502/g)?.length).toBe(2);
    gitlab.faults.artifactDownloadFailures = { status: 503, times: 1 };
    const t = gitlab.enqueue({ runnerToken: TOKEN, git: false, dependencies: [build], script: ['cat top.txt'] });
    const final = await gitlab.waitForFinal(t, 60_000);
    expect(final.state, final.trace).toBe('success');
    expect(final.trace).toMatch(/WARNING: Downloading artifacts for flaky-build \(\d+\)\.\.\. 503/);
    expect(final.trace).toMatch(/^top$/m);
  });

  it('fails a job whose artifacts are too large with GitLab\'s 413 message', async () => {
    gitlab.faults.artifactMaxBytes = 64;
    try {
      const id = gitlab.enqueue({ runnerToken: TOKEN, git: false, script: ['head -c 4096 /dev/urandom > big.bin'], artifacts: [{ paths: ['big.bin'], artifact_type: 'archive', artifact_format: 'zip' }] });
      const final = await gitlab.waitForFinal(id, 60_000);
      expect([final.state, final.failureReason]).toEqual(['failed', 'script_failure']);
      expect(final.trace).toContain('ERROR: Uploading artifacts as "archive" to coordinator... 413 Request Entity Too Large: {"message":"413 Request Entity Too Large"}');
      expect(final.trace).toContain('ERROR: Job failed: uploading its artifacts failed');
    } finally {
      gitlab.faults.artifactMaxBytes = undefined;
    }
  });

  it('uploads on_failure artifacts (with untracked files) when the script fails, keeping its exit code', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      script: ['echo crash > crash.log', 'exit 4'],
      artifacts: [
        { name: 'debug', untracked: true, when: 'on_failure', artifact_type: 'archive', artifact_format: 'zip' },
        { paths: ['never.txt'], when: 'on_success', artifact_type: 'dotenv', artifact_format: 'gzip' },
      ],
    });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect([final.state, final.failureReason, final.exitCode]).toEqual(['failed', 'script_failure', 4]);
    expect(final.trace).toMatch(/section_start:\d+:upload_artifacts_on_failure/);
    expect(final.artifacts.map((a) => a.artifactType)).toEqual(['archive']);
    const entries = zipEntries(final.artifacts[0]!, dataDir);
    expect(entries).toContain('crash.log');
    expect(entries).not.toContain('README.md'); // tracked by git: not untracked
  });

  it('fails a job whose dependency\'s artifacts GitLab refuses, before its script, with the line saying so', async () => {
    const build = gitlab.enqueue({ runnerToken: TOKEN, name: 'refused-build', git: false, script: BUILD, artifacts: [{ paths: ['top.txt'], artifact_type: 'archive', artifact_format: 'zip' }] });
    expect((await gitlab.waitForFinal(build, 60_000)).state).toBe('success');
    gitlab.faults.artifactDownloadFailures = { status: 404, times: 1 }; // not retried: GitLab has none
    const id = gitlab.enqueue({ runnerToken: TOKEN, git: false, dependencies: [build], script: ['echo should-not-run'] });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect([final.state, final.failureReason]).toEqual(['failed', 'script_failure']);
    expect(final.trace).toContain(`ERROR: Downloading artifacts for refused-build (${build}) from coordinator... 404`);
    expect(final.trace).toContain('ERROR: Job failed: downloading the artifacts of a job it depends on failed');
    expect(final.trace).not.toMatch(/^should-not-run$/m);
  });
});
