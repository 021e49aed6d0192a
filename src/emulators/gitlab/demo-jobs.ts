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

export function startDemoFeed(gitlab: GitLabEmulator, o: { runnerTokens: Record<string, string>; intervalMs?: number; limit?: number; log: Logger }): { stop(): void } {
  const tokens = Object.values(o.runnerTokens);
  let n = 0;
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
    later(o.intervalMs ?? 4000, tick);
  };
  later(1000, tick);
  return {
    stop() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
    },
  };
}
