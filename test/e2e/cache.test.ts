// The distributed cache end to end through real parts, on both bucket APIs: the manager signs
// URLs with the real SDKs (@google-cloud/storage V4, @aws-sdk/client-s3 presigning) against the
// bucket emulator, which checks every signature; the job on a local VM (real SSH, bash, zip,
// curl) restores and saves its cache with them. Keys, fallback keys, policies, and the separation
// of protected refs' caches.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startBucketEmulator, type BucketEmulator } from '../../src/emulators/buckets/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import '../../src/providers/builtin.js';
import { freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN } from '../helpers/shard.js';

const SCRIPT = ['if test -f vendor/dep.txt; then echo "cache-hit: $(cat vendor/dep.txt)"; else echo cache-miss; mkdir -p vendor; echo "dep-from-$CI_JOB_ID" > vendor/dep.txt; fi'];

describe.each(['gcs', 's3'] as const)('distributed cache on %s', (type) => {
  let gitlab: GitLabEmulator;
  let buckets: BucketEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;
  const logLines: string[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), `rf-cache-${type}-`));
    buckets = await startBucketEmulator();
    writeFileSync(join(dataDir, 'sa.json'), JSON.stringify(buckets.gcsKey));
    db = await freshDatabase(process.env['DATABASE_URL'] ? 'postgres' : 'pglite');
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const cache =
      type === 'gcs'
        ? `cache: { type: gcs, bucket: rf-cache, prefix: shard-a, credentialsFile: "${join(dataDir, 'sa.json')}", endpoint: "${buckets.url}" }\n`
        : `cache: { type: s3, bucket: rf-cache, prefix: shard-a, region: us-east-1, endpoint: "${buckets.url}", forcePathStyle: true, accessKeyId: "${buckets.s3.accessKeyId}", secretAccessKey: "${buckets.s3.secretAccessKey}" }\n`;
    const config = parseConfig(shardYaml({ shard: `e2e-cache-${type}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 2, max: 6 }) + cache);
    shard = await startShard({ config, log: createLogger({ level: 'debug', destination: { write: (l: string) => void logLines.push(l) } }), tickMs: 100, defaultMetrics: false });
  }, 60_000);

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await buckets?.close();
    await db?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const run = async (spec: Partial<Parameters<GitLabEmulator['enqueue']>[0]>) => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, git: false, script: SCRIPT, ...spec });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect(final.state, final.trace).toBe('success');
    return final;
  };

  it('misses, saves under <prefix>/project/<id>/<key>, then a later job restores it; URLs never reach the trace or the log', async () => {
    const first = await run({ cache: [{ key: 'deps-1-non_protected', paths: ['vendor/'], policy: 'pull-push', when: 'on_success' }] });
    expect(first.runnerInfo?.features).toMatchObject({ cache: true, fallback_cache_keys: true });
    expect(first.trace).toContain('cache-miss');
    expect(first.trace).toMatch(/section_start:\d+:restore_cache/);
    expect(first.trace).toMatch(/section_start:\d+:archive_cache/);
    expect(first.trace).toContain(`Uploading cache.zip to ${buckets.url}/rf-cache/shard-a/project/42/deps-1-non_protected`);
    expect(first.trace).toContain('Created cache');
    expect([...buckets.objects('rf-cache').keys()]).toContain('shard-a/project/42/deps-1-non_protected');
    const second = await run({ cache: [{ key: 'deps-1-non_protected', paths: ['vendor/'] }] });
    expect(second.trace).toContain('Successfully extracted cache');
    expect(second.trace).toContain(`cache-hit: dep-from-${first.id}`);
    for (const text of [first.trace, second.trace, logLines.join('\n')]) expect(text).not.toMatch(/X-(Goog|Amz)-Signature/);
    expect(buckets.requests.every((r) => r.api === type)).toBe(true);
  });

  it('falls back to fallback_keys, pulls without pushing (policy pull), pushes without pulling (policy push)', async () => {
    const fb = await run({ cache: [{ key: 'feature-1-non_protected', paths: ['vendor/'], policy: 'pull', fallback_keys: ['deps-1-non_protected'] }] });
    expect(fb.trace).toContain('Checking cache for feature-1-non_protected...');
    expect(fb.trace).toContain('Checking cache for deps-1-non_protected...');
    expect(fb.trace).toContain('cache-hit');
    expect([...buckets.objects('rf-cache').keys()]).not.toContain('shard-a/project/42/feature-1-non_protected');
    const push = await run({ cache: [{ key: 'deps-1-non_protected', paths: ['vendor/'], policy: 'push' }] });
    expect(push.trace).toContain('cache-miss'); // nothing restored
    expect(push.trace).not.toMatch(/section_start:\d+:restore_cache/);
  });

  it('never lets a job on an unprotected ref read a protected ref\'s cache through a fallback key', async () => {
    const seed = mkdtempSync(join(tmpdir(), 'rf-seed-'));
    mkdirSync(join(seed, 'vendor'));
    writeFileSync(join(seed, 'vendor/dep.txt'), 'protected-secret');
    execFileSync('zip', ['-q', '-r', join(seed, 'c.zip'), 'vendor'], { cwd: seed });
    buckets.objects('rf-cache').set('shard-a/project/42/main-1-protected', execFileSync('cat', [join(seed, 'c.zip')]));
    rmSync(seed, { recursive: true, force: true });
    const cache = [{ key: 'mr-1-non_protected', paths: ['vendor/'], policy: 'pull', fallback_keys: ['main-1-protected'] }];
    const unprotected = await run({ cache });
    expect(unprotected.trace).toContain(`WARNING: cache[0]: fallback key "main-1-protected" names a protected ref's cache; not used on an unprotected ref`);
    expect(unprotected.trace).toContain('cache-miss');
    expect(unprotected.trace).not.toContain('protected-secret');
    const prot = await run({ cache, protectedRef: true });
    expect(prot.trace).toContain('cache-hit: protected-secret');
  });

  it('saves a cache by its when: on_failure and always after a failed script, never on_success', async () => {
    const id = gitlab.enqueue({
      runnerToken: TOKEN,
      git: false,
      script: ['mkdir -p vendor && echo from-failed > vendor/dep.txt', 'exit 2'],
      cache: [
        { key: 'fail-1-non_protected', paths: ['vendor/'], policy: 'push', when: 'on_failure' },
        { key: 'always-1-non_protected', paths: ['vendor/'], policy: 'push', when: 'always' },
        { key: 'success-1-non_protected', paths: ['vendor/'], policy: 'push', when: 'on_success' },
      ],
    });
    const final = await gitlab.waitForFinal(id, 60_000);
    expect([final.state, final.exitCode], final.trace).toEqual(['failed', 2]);
    expect(final.trace).toMatch(/section_start:\d+:archive_cache_on_failure/);
    const keys = [...buckets.objects('rf-cache').keys()];
    expect(keys).toEqual(expect.arrayContaining(['shard-a/project/42/fail-1-non_protected', 'shard-a/project/42/always-1-non_protected']));
    expect(keys).not.toContain('shard-a/project/42/success-1-non_protected');
  });

  it('caches untracked: true (git\'s untracked files, not the tracked ones) and a later job restores them', async () => {
    const first = await run({
      git: true,
      script: ['test -f README.md && echo tracked-present', 'mkdir -p build && echo "made-by-$CI_JOB_ID" > build/out.txt && echo gen > gen.txt'],
      cache: [{ key: 'untracked-1-non_protected', untracked: true, policy: 'push' }],
    });
    expect(first.trace).toContain('tracked-present');
    expect(first.trace).toContain('Created cache');
    const zip = join(dataDir, `untracked-${type}.zip`);
    writeFileSync(zip, buckets.objects('rf-cache').get('shard-a/project/42/untracked-1-non_protected')!);
    const entries = execFileSync('unzip', ['-Z1', zip], { encoding: 'utf8' }).split('\n').filter((e) => e && !e.endsWith('/')).sort();
    expect(entries).toEqual(['build/out.txt', 'gen.txt']); // README.md is tracked: not in the cache
    const second = await run({ script: ['cat build/out.txt gen.txt'], cache: [{ key: 'untracked-1-non_protected', untracked: true, policy: 'pull' }] });
    expect(second.trace).toContain('Successfully extracted cache');
    expect(second.trace).toMatch(new RegExp(`^made-by-${first.id}\\r?\\ngen$`, 'm'));
  });

  it('rides out a bucket answering 503, and a failed save does not fail the job', async () => {
    buckets.faults.failNext = { status: 503, times: 1 };
    const ok = await run({ cache: [{ key: 'deps-1-non_protected', paths: ['vendor/'], policy: 'pull' }] });
    expect(ok.trace).toMatch(/WARNING: Downloading cache deps-1-non_protected\.\.\. 503/);
    expect(ok.trace).toContain('cache-hit');
    buckets.faults.failNext = { status: 403, times: 99 }; // not retried: a refusal
    try {
      const saved = await run({ cache: [{ key: 'other-1-non_protected', paths: ['vendor/'], policy: 'push' }] });
      expect(saved.trace).toContain('WARNING: Failed to create cache other-1-non_protected: 403');
    } finally {
      buckets.faults.failNext = undefined;
    }
  });
});
