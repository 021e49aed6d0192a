// Fuzz of GitLab job payloads: mutations of a payload the GitLab emulator really serves, cut-off
// JSON and values of the wrong kind, through the payload parser and the pure code that consumes a
// parsed job; then a handful of them through a real shard, which must fail each back to GitLab
// with a trace line naming the field, keep running and take the next good job.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { jobTimeoutSeconds, parseJobPayload, UnreadablePayload, type JobPayload } from '../../src/gitlab/job-payload.js';
import { MaskAutomaton, Masker } from '../../src/gitlab/mask.js';
import { ignoredWarning, maskPlan } from '../../src/gitlab/masked-values.js';
import { buildPowerShellScript } from '../../src/gitlab/powershell.js';
import { buildBashScript } from '../../src/gitlab/script.js';
import { createLogger } from '../../src/isolation/redact.js';
import { jobIdentity } from '../../src/manager/executor.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { shardYaml, TOKEN } from '../helpers/shard.js';
import { Gen } from './gen.js';

export const PAYLOAD_CASES = 300;
export const SHARD_CASES = 8;
const FUZZ_SHARD_SEED = 7;

/** What the GitLab client hands the parser: the JSON value, or the text when it is not JSON. */
const asReceived = (text: string): unknown => {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
};

/** The pure code a parsed job flows into before it reaches a VM: none of it may throw. */
function consume(job: JobPayload): void {
  expect(Number.isSafeInteger(job.id) && job.id > 0).toBe(true);
  expect(job.token.length).toBeGreaterThan(0);
  const t = jobTimeoutSeconds(job, 3600);
  expect(Number.isInteger(t) && t >= 1 && t <= 3600).toBe(true);
  for (const v of Object.values(jobIdentity(job))) expect(v === null || Number.isSafeInteger(v)).toBe(true);
  buildBashScript(job);
  buildPowerShellScript(job);
  const plan = maskPlan(job);
  if (!plan.ok) {
    expect(plan.error).toMatch(/mask/); // over a bound: refused with a reason, never run half-masked
    return;
  }
  ignoredWarning(plan.ignored);
  const masker = new Masker(new MaskAutomaton(plan.patterns));
  const out = Buffer.concat([masker.push(Buffer.from(`token ${job.token} end`)), masker.end()]).toString();
  if (job.token.trim().length >= 8) expect(out).not.toContain(job.token);
}

describe('job payload fuzz', () => {
  let gitlab: GitLabEmulator;
  let valid: Record<string, unknown>;

  beforeAll(async () => {
    gitlab = await startGitLabEmulator();
    gitlab.enqueue({ runnerToken: 'fuzz', script: ['echo hi'], afterScript: ['echo bye'], variables: [{ key: 'SECRET', value: 's3cr3t-value', masked: true }] });
    const res = await fetch(`${gitlab.url}/api/v4/jobs/request`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'fuzz' }), signal: AbortSignal.timeout(5000) });
    valid = (await res.json()) as Record<string, unknown>;
  });
  afterAll(async () => {
    await gitlab?.close();
  });

  it(`${PAYLOAD_CASES} generated job payloads: parsed, or refused with an error naming the field; never a throw`, () => {
    const g = new Gen();
    expect(parseJobPayload(valid).ok).toBe(true);
    const tally = { ok: 0, refused: 0, salvaged: 0 };
    for (let i = 0; i < PAYLOAD_CASES; i++) {
      const kind = i % 10;
      let raw: unknown;
      let path: string[] | null = null;
      if (kind < 6) {
        // One mutation: the error must name the field it touched.
        const m = g.mutate(valid);
        raw = asReceived(JSON.stringify(m.value) ?? '');
        path = m.path;
      } else if (kind < 8) {
        // Several mutations at once.
        let v: unknown = valid;
        for (let k = g.int(2, 6); k > 0; k--) v = g.mutate(v).value;
        raw = asReceived(JSON.stringify(v) ?? '');
      } else if (kind === 8) {
        // Cut off: as the parser sees it from the client (UnreadablePayload), or as bare text.
        const text = g.truncate(JSON.stringify(valid));
        raw = g.chance(0.5) ? new UnreadablePayload('not valid JSON', text.slice(0, 512)) : asReceived(text);
      } else {
        raw = g.hostileValue();
      }
      const where = `case ${i} (seed ${g.seed}) path ${JSON.stringify(path)}`;
      let parsed: ReturnType<typeof parseJobPayload>;
      try {
        parsed = parseJobPayload(raw);
      } catch (err) {
        throw new Error(`${where}: the parser threw ${(err as Error).stack}`);
      }
      if (parsed.ok) {
        tally.ok++;
        try {
          consume(parsed.job);
        } catch (err) {
          throw new Error(`${where}: a parsed job broke its consumers: ${(err as Error).stack}`);
        }
        continue;
      }
      tally.refused++;
      expect(parsed.error.length, where).toBeGreaterThan(0);
      expect(parsed.error.length, where).toBeLessThan(2000); // a huge value is never echoed whole
      expect(parsed.error, where).toMatch(/^(\(payload\)|[A-Za-z_]\w*(\[\d+\]|\.\w+)*): /);
      if (path && path.length > 0) expect(parsed.error, where).toContain(path[0]);
      // A replaced whole payload: `(payload): ...`, or the required fields it lacks.
      if (path && path.length === 0) expect(parsed.error, where).toMatch(/^(\(payload\)|id): /);
      if (parsed.jobId !== undefined) {
        tally.salvaged++;
        expect(Number.isSafeInteger(parsed.jobId) && parsed.jobId > 0, where).toBe(true);
      }
      if (parsed.token !== undefined) expect(typeof parsed.token, where).toBe('string');
      // A cut-off body that kept `{"id":N,"token":"..."` can still be failed back.
      const rawText = raw instanceof UnreadablePayload ? raw.prefix : raw;
      if (kind === 8 && typeof rawText === 'string' && /^\{"id":\d+,"token":"[^"]+",/.test(rawText)) {
        expect(parsed.jobId, where).toBe(valid['id']);
        expect(parsed.token, where).toBe(valid['token']);
      }
    }
    expect(tally.refused).toBeGreaterThan(PAYLOAD_CASES / 2);
    expect(tally.ok).toBeGreaterThan(5);
    expect(tally.salvaged).toBeGreaterThan(PAYLOAD_CASES / 3);
  });

  it('reads ids past 2^53 in variables as unknown, and salvages no unsafe job id', () => {
    const vars = ['CI_PROJECT_ID', 'CI_PIPELINE_ID', 'CI_PROJECT_NAMESPACE_ID'].map((key) => ({ key, value: '99999999999999999999' }));
    const parsed = parseJobPayload({ ...valid, job_info: {}, variables: vars });
    expect(parsed.ok && jobIdentity(parsed.job)).toEqual({ projectId: null, pipelineId: null, namespaceId: null, rootNamespaceId: null });
    const huge = parseJobPayload({ ...valid, id: 1e308 });
    expect(huge).toMatchObject({ ok: false, error: expect.stringMatching(/^id: /) });
    expect(huge.ok || huge.jobId).toBeUndefined();
  });
});

describe('bad job payloads through a real shard', () => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let dataDir: string;
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    dataDir = mkdtempSync(join(tmpdir(), 'rf-fuzz-'));
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: 'fuzz-jobs', gitlabUrl: gitlab.url, dbUrl: 'pglite:memory', dataDir, idle: 1, max: 2 }));
    shard = await startShard({ config, log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false, http: false });
  });
  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    rmSync(dataDir, { recursive: true, force: true });
    process.off('unhandledRejection', onUnhandled);
  });

  it(`${SHARD_CASES} generated bad payloads are failed back with the field named; the next good job runs`, async () => {
    const g = new Gen(FUZZ_SHARD_SEED);
    const bad: { id: number; field: string }[] = [];
    // Only payloads the parser refuses: a hostile script that parses would really run.
    for (let tries = 0; bad.length < SHARD_CASES && tries < 1000; tries++) {
      const truncated = bad.length % 4 === 3;
      const probe = { id: 1, token: 't', steps: [{ name: 'script', script: ['true'] }] };
      const m = truncated ? null : g.mutate({ ...probe, steps: [{ name: 'script', script: ['true'] }], variables: [], runner_info: { timeout: 60 }, job_info: { project_id: 1 } });
      if (m && (m.path.length === 0 || m.path[0] === 'id' || m.path[0] === 'token' || parseJobPayload(asReceived(JSON.stringify(m.value) ?? '')).ok)) continue;
      const cut = g.int(60, 400);
      const id = gitlab.enqueue({
        runnerToken: TOKEN, script: ['true'], git: false,
        ...(truncated
          ? { rawText: (p: Record<string, unknown>) => JSON.stringify(p).slice(0, cut) }
          : { mutate: (p: Record<string, unknown>) => ({ ...p, [m!.path[0]!]: (m!.value as Record<string, unknown>)[m!.path[0]!] }) }),
      });
      bad.push({ id, field: truncated ? '(payload)' : m!.path[0]! });
    }
    const good = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo still-alive'], git: false });
    for (const b of bad) {
      const final = await gitlab.waitForFinal(b.id, 20_000);
      expect(final.state, `job ${b.id} (${b.field})`).toBe('failed');
      expect(final.trace, `job ${b.id}`).toContain('ERROR: runner-fleet could not run this job: malformed job payload: ');
      expect(final.trace, `job ${b.id}`).toContain(b.field);
      expect(final.failureReason).toBe('runner_unsupported');
    }
    const ok = await gitlab.waitForFinal(good, 30_000);
    expect(ok.state).toBe('success');
    expect(ok.trace).toContain('still-alive');
    // Each refused job has its row (and its non-billable event): nothing GitLab handed out is lost.
    for (const b of bad) expect((await shard.store.job(b.id))?.state, `job ${b.id}`).toBe('finished');
    expect(unhandled).toEqual([]);
  }, 180_000);
});
