// The docker executor end to end, through real parts: GitLab emulator -> manager -> local VM over
// real SSH -> real Docker Engine: the job's image, services on a per-job network, pulls from a
// real registry with and without the job's credentials, cancel removing every container.
// Skips (with the reason) where Docker Engine does not run; .ci/run starts one.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import '../../src/providers/builtin.js';
import { freshDatabase, type TestDatabase } from '../helpers/database.js';
import { dockerUnavailable, ensureTestImage, jobContainers, startTestRegistry, TEST_IMAGE, type TestRegistry } from '../helpers/docker.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

const why = dockerUnavailable();
if (why) console.log(`docker executor tests skipped: ${why}`);

// The busybox image answering HTTP on port 80 with a fixed body, as a service (busybox httpd: it
// serves connections one after another, where an `nc -l` loop refuses one between two listens).
const HTTP_SERVICE = ['sh', '-c', 'mkdir -p /www && echo "from-$SVC_WORD" > /www/index.html && exec httpd -f -p 80 -h /www'];

describe.skipIf(why !== null)('docker executor', () => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;
  let registry: TestRegistry;
  let privateImage: string;
  const logLines: string[] = [];

  beforeAll(async () => {
    ensureTestImage();
    registry = await startTestRegistry();
    privateImage = registry.push(TEST_IMAGE, 'private/busybox:1');
    dataDir = mkdtempSync(join(tmpdir(), 'rf-docker-'));
    db = await freshDatabase(process.env['DATABASE_URL'] ? 'postgres' : 'pglite');
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const classExtra = `    executor: docker\n    defaultImage: "${TEST_IMAGE}"\n    pullPolicy: [if-not-present]\n`;
    const config = parseConfig(shardYaml({ shard: 'e2e-docker', gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 2, max: 6, classExtra }));
    shard = await startShard({ config, log: createLogger({ level: 'debug', destination: { write: (l: string) => void logLines.push(l) } }), tickMs: 100, defaultMetrics: false });
  }, 120_000);

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    await registry?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('offers image and services to GitLab and runs the job in its image beside a service reached by alias and derived name', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      name: 'docker-job',
      image: { name: TEST_IMAGE, pull_policy: ['if-not-present'] },
      services: [{ name: TEST_IMAGE, alias: 'web,www', command: HTTP_SERVICE, variables: [{ key: 'SVC_WORD', value: 'service' }], ports: [{ number: 80 }] }],
      variables: [{ key: 'GREETING', value: "it's \"quoted\"" }, { key: 'MY_FILE', value: 'file-var-content', file: true }],
      script: [
        'echo "greeting=$GREETING project=$CI_PROJECT_DIR builds=$CI_BUILDS_DIR"',
        'cat "$MY_FILE"; echo',
        'test -f README.md && echo repo-in-container',
        'wget -q -O - http://web/; echo',
        'wget -q -O - http://rf-test-busybox/; echo',
        'ls /usr/bin/git 2>/dev/null || echo no-git-in-image',
        'echo "runner=$CI_RUNNER_VERSION id=$CI_RUNNER_ID tags=$CI_RUNNER_TAGS"',
      ],
      release: ['echo "release in $CI_PROJECT_DIR"'],
      afterScript: ['echo "after status=$CI_JOB_STATUS"'],
    });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final.state, final.trace).toBe('success');
    expect(final.runnerInfo?.executor).toBe('docker');
    expect(final.runnerInfo?.features).toMatchObject({ image: true, services: true, service_variables: true });
    const t = final.trace;
    expect(t).toContain(`Using Docker executor with image ${TEST_IMAGE}`);
    expect(t).toContain(`greeting=it's "quoted" project=/builds/demo/project builds=/builds`);
    expect(t).toContain('file-var-content');
    expect(t).toContain('repo-in-container'); // git ran on the VM, into the mounted build dir
    expect(t).toContain('no-git-in-image');
    expect(t.match(/from-service/g)?.length).toBe(2); // by alias and by the name derived from the image
    expect(t).toMatch(/runner=\d+\.\d+\.\d+ id=1 tags=\["linux", "amd64"\]/);
    expect(t).toContain('after status=success');
    expect(t).toContain('release in /builds/demo/project'); // GitLab's release step, in the job image
    for (const s of ['prepare_executor', 'get_sources', 'step_script', 'step_release', 'after_script', 'cleanup_file_variables']) {
      expect(t).toMatch(new RegExp(`\\x1b\\[0Ksection_start:\\d+:${s}\\r\\x1b\\[0K`));
      expect(t).toMatch(new RegExp(`\\x1b\\[0Ksection_end:\\d+:${s}\\r\\x1b\\[0K`));
    }
    await waitUntil(() => jobContainers(id).length === 0, 10_000, 'the job containers removed');
  });

  it('keeps the script exit code, and after_script sees CI_JOB_STATUS=failed', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, git: false, script: ['echo before', 'exit 7'], afterScript: ['echo "after status=$CI_JOB_STATUS"'] });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect([final.state, final.failureReason, final.exitCode]).toEqual(['failed', 'script_failure', 7]);
    expect(final.trace).toContain('after status=failed');
  });

  it('pulls a private image with the registry credentials of the job, never showing the password', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      git: false,
      image: { name: privateImage, pull_policy: ['always'] },
      credentials: [{ type: 'registry', url: registry.authed, username: registry.user, password: registry.password }],
      script: ['echo pulled-and-ran'],
    });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final.state, final.trace).toBe('success');
    expect(final.trace).toContain(`Pulling docker image ${privateImage}`);
    expect(final.trace).toContain('pulled-and-ran');
    expect(final.trace).not.toContain(registry.password);
    expect(logLines.join('\n')).not.toContain(registry.password);
  });

  it('fails with image_pull_failure and a clear line when the pull is refused, the image is missing, or policy never finds none', async () => {
    const cases = [
      { image: { name: `${registry.authed}/private/other:1`, pull_policy: ['always'] }, line: /ERROR: failed to pull image ".*private\/other:1" with specified policies \[always\]: .*(no basic auth credentials|unauthorized|authentication required)/i },
      { image: { name: `${registry.direct}/nothing/here:1` }, line: /ERROR: failed to pull image ".*nothing\/here:1" with specified policies \[if-not-present\]: .*(not found|manifest unknown)/i },
      { image: { name: 'rf-test/absent:1', pull_policy: ['never'] }, line: /ERROR: failed to pull image "rf-test\/absent:1" with specified policies \[never\]: image not present on the VM and pull policy is never/ },
      // A registry nobody answers for.
      { image: { name: '127.0.0.1:1/nothing/here:1', pull_policy: ['always'] }, line: /ERROR: failed to pull image "127\.0\.0\.1:1\/nothing\/here:1" with specified policies \[always\]: .*(connection refused|dial tcp)/i },
    ];
    const ids = cases.map((c) => gitlab.enqueue({ runnerToken: TOKEN, git: false, image: c.image, script: ['echo should-not-run'] }));
    for (const [i, id] of ids.entries()) {
      const final = await gitlab.waitForFinal(id, 60_000);
      expect([final.state, final.failureReason], final.trace).toEqual(['failed', 'image_pull_failure']);
      expect(final.trace).toMatch(cases[i]!.line);
      expect(final.trace).not.toMatch(/^should-not-run$/m);
      expect(final.trace).toContain('ERROR: Job failed: a docker image of the job could not be pulled');
    }
    // A GitLab older than 16.1 does not know image_pull_failure: told script_failure, as gitlab-runner does.
    const old = gitlab.enqueue({ runnerToken: TOKEN, git: false, image: { name: 'rf-test/absent:1', pull_policy: ['never'] }, script: ['true'], failureReasons: ['script_failure', 'runner_system_failure'] });
    expect((await gitlab.waitForFinal(old, 60_000)).failureReason).toBe('script_failure');
  });

  it('passes artifacts from a build job in its image to a test job in its image (files written by the container)', async () => {
    const build = gitlab.enqueue({
      runnerToken: TOKEN,
      name: 'docker-build',
      git: false,
      script: ['mkdir -p out && echo "built in $(cat /etc/passwd | head -c 4)" > out/result.txt'],
      artifacts: [{ paths: ['out/'], artifact_type: 'archive', artifact_format: 'zip' }],
    });
    const b = await gitlab.waitForFinal(build, 60_000);
    expect(b.state, b.trace).toBe('success');
    expect(b.artifacts.map((a) => a.filename)).toEqual(['artifacts.zip']);
    const test = gitlab.enqueue({ runnerToken: TOKEN, name: 'docker-test', git: false, dependencies: [build], script: ['cat out/result.txt'] });
    const t = await gitlab.waitForFinal(test, 60_000);
    expect(t.state, t.trace).toBe('success');
    expect(t.trace).toMatch(/^built in root$/m);
  });

  it('cancel runs after_script in the job image (CI_JOB_STATUS=canceled, services still reachable), then stops every container of the job', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      git: false,
      services: [
        { name: TEST_IMAGE, alias: 'sleeper', command: ['sleep', '600'] },
        { name: TEST_IMAGE, alias: 'web', command: HTTP_SERVICE, variables: [{ key: 'SVC_WORD', value: 'after' }], ports: [{ number: 80 }] },
      ],
      script: ['echo started-long', 'sleep 600'],
      afterScript: ['echo "after status=$CI_JOB_STATUS in $(cat /etc/hostname | head -c 0)$CI_PROJECT_DIR"', 'wget -q -O - http://web/; echo'],
    });
    await gitlab.waitFor(id, (j) => j.trace.includes('started-long'), 60_000);
    expect(jobContainers(id).length).toBe(3); // the build container and the services
    gitlab.cancel(id);
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('canceled');
    expect(final.trace).toContain('after status=canceled in /builds/demo/project');
    expect(final.trace).toMatch(/^from-after$/m); // the service outlived the killed script for the after_script
    expect(final.trace.indexOf('from-after')).toBeLessThan(final.trace.indexOf('ERROR: Job was canceled'));
    await waitUntil(() => jobContainers(id).length === 0, 15_000, 'the canceled job containers removed');
  });

  it('runs the job image through its entrypoint, and services as the executor_opts user', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      git: false,
      image: { name: TEST_IMAGE, pull_policy: ['if-not-present'], entrypoint: ['/bin/sh', '-c', 'echo "entrypoint-ran"; export FROM_ENTRYPOINT=yes; exec "$@"', 'rf-entrypoint'] },
      services: [
        {
          name: TEST_IMAGE,
          alias: 'uidsvc',
          // It serves (/etc, unwritable to it) only when it runs as the executor_opts user.
          command: ['sh', '-c', 'test "$(id -u)" = 1234 || { echo "service runs as uid $(id -u)"; exit 1; }; exec httpd -f -p 8080 -h /etc'],
          ports: [{ number: 8080 }],
          executor_opts: { docker: { user: '1234' } },
        },
      ],
      script: ['echo "from-entrypoint=$FROM_ENTRYPOINT job-uid=$(id -u)"', 'wget -q -O - http://uidsvc:8080/passwd >/dev/null && echo served-by-uid-1234'],
    });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final.state, final.trace).toBe('success');
    expect(final.runnerInfo?.features).toMatchObject({ service_executor_opts: true, image_executor_opts: true });
    expect(final.trace).toMatch(/^entrypoint-ran$/m);
    expect(final.trace).toContain('from-entrypoint=yes job-uid=0');
    expect(final.trace).toMatch(/^served-by-uid-1234$/m);
  });

  it('a timeout stops the containers too', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, git: false, timeoutS: 4, script: ['echo started-timed', 'sleep 600'] });
    await gitlab.waitFor(id, (j) => j.trace.includes('started-timed'), 60_000);
    const final = await gitlab.waitForFinal(id, 30_000);
    expect([final.state, final.failureReason]).toEqual(['failed', 'job_execution_timeout']);
    await waitUntil(() => jobContainers(id).length === 0, 15_000, 'the timed-out job containers removed');
  });
});
