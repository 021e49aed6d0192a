// The demo's job stream: a mix of passing, failing, secret-echoing and canceled jobs, at a
// steady pace with an occasional pipeline fan-out, so the pool and metrics have work to show.
import type { Logger } from 'pino';
import type { EnqueueSpec, GitLabEmulator } from './server.js';

const SAMPLES: Omit<EnqueueSpec, 'runnerToken'>[] = [
  { name: 'build', script: ['echo "compiling..."', 'sleep 2', 'sh ./test.sh'] },
  { name: 'unit-tests', script: ['echo "running tests"', 'sleep 3', 'echo "42 passed"'] },
  { name: 'lint', script: ['echo "linting"', 'exit 3'], afterScript: ['echo "collecting lint report"'] },
  { name: 'deploy-preview', script: ['echo "deploying with token $DEPLOY_TOKEN"', 'sleep 1'], variables: [{ key: 'DEPLOY_TOKEN', value: 'demo-s3cr3t-deploy-token', masked: true }] },
  { name: 'integration', script: ['echo "long integration suite"', 'sleep 120'], git: false },
];

/**
 * A two-stage pipeline: `build` (in an image on a docker class, when there is one) fills a cache
 * and hands `out/` on as an artifact; `test`, queued when build has passed, gets it through its
 * dependencies. The second run of build finds the cache the first one saved.
 */
export function pipelineJobs(image: string | null): { build: Omit<EnqueueSpec, 'runnerToken'>; test: (buildId: number) => Omit<EnqueueSpec, 'runnerToken'> } {
  const docker = image ? { image: { name: image, pull_policy: ['if-not-present'] } } : {};
  return {
    build: {
      name: 'pipeline:build',
      git: false,
      ...docker,
      cache: [{ key: 'demo-deps-1-non_protected', paths: ['.deps/'], policy: 'pull-push', when: 'on_success' }],
      script: [
        'if [ -f .deps/deps.txt ]; then echo "dependencies from the cache: $(cat .deps/deps.txt)"; else echo "cache miss: fetching dependencies"; mkdir -p .deps; echo "deps fetched by job $CI_JOB_ID" > .deps/deps.txt; sleep 2; fi',
        'mkdir -p out && echo "app built by job $CI_JOB_ID" > out/app.txt',
      ],
      artifacts: [{ name: 'app', paths: ['out/'], when: 'on_success', artifact_type: 'archive', artifact_format: 'zip', expire_in: '1 day' }],
    },
    test: (buildId) => ({ name: 'pipeline:test', git: false, ...docker, dependencies: [buildId], script: ['echo "testing: $(cat out/app.txt)"'] }),
  };
}

export function startDemoFeed(gitlab: GitLabEmulator, o: {
  runnerTokens: Record<string, string>; intervalMs?: number; limit?: number; log: Logger;
  /** Runner token of the class that runs the two-stage pipeline, and its image (null: shell). */
  pipeline?: { runnerToken: string; image: string | null; everyTicks?: number };
}): { stop(): void } {
  const tokens = Object.values(o.runnerTokens);
  let n = 0;
  let stopped = false;
  const timers = new Set<NodeJS.Timeout>();
  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };
  const tick = () => {
    if (o.limit !== undefined && n >= o.limit) return;
    const sample = SAMPLES[n % SAMPLES.length]!;
    const runnerToken = tokens[n % tokens.length]!;
    const id = gitlab.enqueue({ ...sample, runnerToken });
    n++;
    if (sample.name === 'integration') later(6000, () => gitlab.cancel(id)); // a user cancels it
    // Every tenth job starts a pipeline of three parallel jobs.
    if (n % 10 === 0) for (let i = 0; i < 3; i++) gitlab.enqueue({ name: `parallel-${i + 1}/3`, script: ['echo "shard $((RANDOM % 3))"', 'sleep 2'], git: false, runnerToken });
    const p = o.pipeline;
    if (p && n % (p.everyTicks ?? 5) === 1) {
      const jobs = pipelineJobs(p.image);
      const build = gitlab.enqueue({ ...jobs.build, runnerToken: p.runnerToken });
      void gitlab.waitForFinal(build, 10 * 60_000).then(
        (b) => {
          if (b.state === 'success' && !stopped) gitlab.enqueue({ ...jobs.test(build), runnerToken: p.runnerToken });
        },
        () => {},
      );
    }
    later(o.intervalMs ?? 4000, tick);
  };
  later(1000, tick);
  return {
    stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
    },
  };
}
