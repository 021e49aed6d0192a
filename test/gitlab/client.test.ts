// The Runner API client against the emulator: status codes, headers, resumption and payloads.
import { createServer } from 'node:net';
import { Writable } from 'node:stream';
import { crc32 } from 'node:zlib';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { GitLabClient } from '../../src/gitlab/client.js';
import { Masker } from '../../src/gitlab/mask.js';
import { jobTimeoutSeconds, namespaceIds, parseJobPayload, pipelineId } from '../../src/gitlab/job-payload.js';
import { TraceUploader } from '../../src/gitlab/trace.js';

let gitlab: GitLabEmulator;
let client: GitLabClient;
const log = pino({ level: 'silent' });

beforeAll(async () => {
  gitlab = await startGitLabEmulator({ runnerTokens: ['good-token'], traceUpdateIntervalS: 1 });
  client = new GitLabClient({ url: gitlab.url, timeoutMs: 2000, log, systemId: 's_test', retries: 2, minRetryMs: 10 });
});
afterAll(() => gitlab.close());

async function running(script = ['true']) {
  const id = gitlab.enqueue({ runnerToken: 'good-token', script, git: false });
  const res = await client.requestJob('good-token');
  if (res.kind !== 'job') throw new Error(`expected a job, got ${res.kind}`);
  const p = parseJobPayload(res.raw);
  if (!p.ok) throw new Error(p.error);
  expect(p.job.id).toBe(id);
  return p.job;
}

describe('GitLabClient', () => {
  it('answers none (204) when the queue is empty and forbidden (403) for a bad token', async () => {
    expect(await client.requestJob('good-token')).toEqual({ kind: 'none' });
    expect(await client.requestJob('bad-token')).toEqual({ kind: 'forbidden' });
  });

  it('keeps a job whose answer has begun to arrive when the stop signal fires, and stops a request still waiting', async () => {
    // A GitLab that sends its 201 headers at once and the body a little later.
    const { createServer: http } = await import('node:http');
    let headersSent!: () => void;
    const sent = new Promise<void>((ok) => (headersSent = ok));
    const server = http((req, res) => {
      req.resume();
      if (req.url?.includes('wait')) return; // never answers: a long poll
      res.writeHead(201, { 'content-type': 'application/json' });
      res.flushHeaders();
      headersSent();
      setTimeout(() => res.end(JSON.stringify({ id: 77, token: 'job-token' })), 300);
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const c = new GitLabClient({ url: base, timeoutMs: 5000, log, systemId: 's_test', retries: 2, minRetryMs: 10 });
      const stop = new AbortController();
      const answer = c.requestJob('good-token', stop.signal);
      await sent;
      await new Promise((ok) => setTimeout(ok, 50));
      stop.abort();
      expect(await answer).toEqual({ kind: 'job', raw: { id: 77, token: 'job-token' } });

      const waiting = new GitLabClient({ url: `${base}/wait`, timeoutMs: 5000, log, systemId: 's_test', retries: 2, minRetryMs: 10 });
      const stop2 = new AbortController();
      const started = Date.now();
      const pending = waiting.requestJob('good-token', stop2.signal);
      setTimeout(() => stop2.abort(), 100);
      await expect(pending).rejects.toThrow(/aborted/);
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it('retries 5xx a bounded number of times, then throws', async () => {
    gitlab.faults.requestStatus = 502;
    const before = gitlab.stats().requests;
    await expect(client.requestJob('good-token')).rejects.toThrow(/HTTP 502/);
    expect(gitlab.stats().requests - before).toBe(3); // first try + 2 retries
    gitlab.faults.requestStatus = undefined;
  });

  it('streams a trace, resumes after a 416 from the offset GitLab holds, and finishes with a matching checksum', async () => {
    const job = await running();
    let canceled = false;
    const up = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker(['s3cr3t']), onCancel: () => (canceled = true), log, intervalMs: 50 });
    up.write(Buffer.from('line one\n'));
    await new Promise((r) => setTimeout(r, 100));
    gitlab.faults.traceRangeMismatchOnce = true;
    up.write(Buffer.from('line two with s3cr3t\n'));
    await new Promise((r) => setTimeout(r, 200));
    const t = await up.finish();
    up.close();
    expect(gitlab.job(job.id).trace).toBe('line one\nline two with [MASKED]\n');
    const res = await client.updateJob(job.id, job.token, { state: 'success', exitCode: 0, checksum: t.checksum!, bytesize: t.bytesize });
    expect(res.result).toBe('ok');
    const final = gitlab.job(job.id);
    expect(final.state).toBe('success');
    expect(final.traceValid).toBe(true); // the emulator checks the crc32 and size
    expect(canceled).toBe(false);
  });

  it('learns of a cancel from Job-Status and the job token is checked', async () => {
    const job = await running();
    gitlab.cancel(job.id);
    const r = await client.patchTrace(job.id, job.token, Buffer.from('x'), 0);
    expect(r.canceled).toBe(true);
    expect((await client.patchTrace(job.id, 'wrong-token', Buffer.from('y'), 1)).ok).toBe(false);
    expect((await client.updateJob(job.id, job.token, { state: 'failed' })).result).toBe('ok');
    expect(gitlab.job(job.id).state).toBe('canceled');
  });
});

describe('features offered to GitLab', () => {
  it("claim exactly what the class's job script does: docker adds image and services, a cache adds cache, Windows claims no artifacts", async () => {
    const offered = async (kind: Parameters<GitLabClient['requestJob']>[2]) => {
      const id = gitlab.enqueue({ runnerToken: 'good-token', script: ['true'], git: false });
      expect((await client.requestJob('good-token', undefined, kind)).kind).toBe('job');
      const info = gitlab.job(id).runnerInfo!;
      return { executor: info.executor, ...(info.features as Record<string, boolean>) };
    };
    const shell = await offered({ executor: 'shell' });
    expect(shell).toMatchObject({ executor: 'custom', artifacts: true, upload_multiple_artifacts: true, upload_raw_artifacts: true, artifacts_exclude: true, image: false, services: false, image_executor_opts: false, service_executor_opts: false, cache: false, fallback_cache_keys: false });
    expect(await offered({ executor: 'docker', cache: true })).toMatchObject({ executor: 'docker', image: true, services: true, service_variables: true, service_multiple_aliases: true, image_executor_opts: true, service_executor_opts: true, cache: true, fallback_cache_keys: true });
    // Only names gitlab-runner's FeaturesInfo has (GitLab reads those; trace_sections is GitLab's own flag to the runner).
    const RUNNER_FEATURE_NAMES = ['variables', 'image', 'services', 'artifacts', 'cache', 'fallback_cache_keys', 'shared', 'upload_multiple_artifacts', 'upload_raw_artifacts', 'session', 'terminal', 'refspecs', 'masking', 'proxy', 'raw_variables', 'artifacts_exclude', 'multi_build_steps', 'trace_reset', 'trace_checksum', 'trace_size', 'vault_secrets', 'cancelable', 'return_exit_code', 'service_variables', 'service_multiple_aliases', 'image_executor_opts', 'service_executor_opts', 'cancel_gracefully', 'native_steps_integration', 'two_phase_job_commit', 'job_inputs'];
    expect(Object.keys(shell).filter((k) => k !== 'executor' && !RUNNER_FEATURE_NAMES.includes(k))).toEqual([]);
    expect(shell).toMatchObject({ multi_build_steps: true, return_exit_code: true, refspecs: true, raw_variables: true, masking: true });
    // The PowerShell script runs no release step: a Windows class does not take jobs with one.
    expect(await offered({ executor: 'shell', windows: true, cache: true })).toMatchObject({ artifacts: false, upload_multiple_artifacts: false, cache: false, image: false, multi_build_steps: false });
  });
});

describe('GitLabClient against the emulator, more', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('serves a GitLab-shaped payload: queue time from enqueue, queue size, namespace and pipeline ids', async () => {
    const a = gitlab.enqueue({ runnerToken: 'good-token', script: ['true'], git: false, timeoutS: 900 });
    gitlab.enqueue({ runnerToken: 'good-token', script: ['true'], git: false });
    await sleep(120);
    const res = await client.requestJob('good-token');
    if (res.kind !== 'job') throw new Error(res.kind);
    const p = parseJobPayload(res.raw);
    if (!p.ok) throw new Error(p.error);
    expect(p.job.id).toBe(a);
    expect(p.job.job_info!.time_in_queue_seconds).toBeGreaterThanOrEqual(0.1);
    expect(p.job.job_info!.queue_size).toBe(1);
    expect(jobTimeoutSeconds(p.job, 3 * 3600)).toBe(900);
    expect(namespaceIds(p.job)).toEqual({ namespaceId: 7, rootNamespaceId: 3 });
    expect(pipelineId(p.job)).toBeGreaterThan(0);
    expect(gitlab.job(a).state).toBe('running');
    expect((await client.requestJob('good-token')).kind).toBe('job'); // drain the second
  });

  it('sends X-GitLab-Last-Update back: an up-to-date runner gets 204 at once, a new job changes it', async () => {
    expect((await client.requestJob('good-token')).kind).toBe('none'); // learns the value
    const before = gitlab.stats().upToDate;
    expect((await client.requestJob('good-token')).kind).toBe('none');
    expect(gitlab.stats().upToDate).toBe(before + 1);
    const id = gitlab.enqueue({ runnerToken: 'good-token', script: ['true'], git: false });
    const res = await client.requestJob('good-token');
    expect(res.kind === 'job' && (res.raw as { id: number }).id).toBe(id);
  });

  it('a fresh client (no last_update) is not answered from the cache', async () => {
    const other = new GitLabClient({ url: gitlab.url, timeoutMs: 2000, log, systemId: 's_other' });
    const before = gitlab.stats().upToDate;
    expect((await other.requestJob('good-token')).kind).toBe('none');
    expect(gitlab.stats().upToDate).toBe(before);
  });

  it('patchTrace: 202 with Range and interval, 416 names the held size, 5xx retried, 409 is not a cancel', async () => {
    const job = await running();
    const ok = await client.patchTrace(job.id, job.token, Buffer.from('hello'), 0);
    expect(ok).toMatchObject({ ok: true, nextOffset: 5, jobStatus: 'running', updateIntervalMs: 1000, canceled: false, status: 202 });
    const wrong = await client.patchTrace(job.id, job.token, Buffer.from('xyz'), 2);
    expect(wrong).toMatchObject({ ok: false, nextOffset: 5, canceled: false, status: 416 });
    gitlab.faults.tracePatchStatusOnce = 503;
    expect(await client.patchTrace(job.id, job.token, Buffer.from(' world'), 5)).toMatchObject({ ok: true, nextOffset: 11 });
    gitlab.faults.tracePatchStatusOnce = 409;
    expect(await client.patchTrace(job.id, job.token, Buffer.from('!'), 11)).toMatchObject({ ok: false, nextOffset: 11, canceled: false, status: 409 });
    expect(gitlab.job(job.id).trace).toBe('hello world');
    const empty = await client.patchTrace(job.id, job.token, Buffer.alloc(0), 11); // keep-alive
    expect(empty).toMatchObject({ ok: true, nextOffset: 11 });
  });

  it('updateJob: 202 while GitLab is still taking the trace, then 200; unknown job and wrong token are 403', async () => {
    const job = await running();
    await client.patchTrace(job.id, job.token, Buffer.from('log\n'), 0);
    const checksum = `crc32:${crc32(Buffer.from('log\n')).toString(16).padStart(8, '0')}`;
    gitlab.faults.updateAcceptedTimes = 1;
    const first = await client.updateJob(job.id, job.token, { state: 'failed', exitCode: 3, failureReason: 'script_failure', checksum, bytesize: 4 });
    expect(first).toMatchObject({ result: 'accepted', jobStatus: 'running', updateIntervalMs: 1000 });
    expect(gitlab.job(job.id).state).toBe('running');
    const second = await client.updateJob(job.id, job.token, { state: 'failed', exitCode: 3, failureReason: 'script_failure', checksum, bytesize: 4 });
    expect(second).toMatchObject({ result: 'ok', jobStatus: 'failed', canceled: false });
    expect(gitlab.job(job.id)).toMatchObject({ state: 'failed', exitCode: 3, failureReason: 'script_failure', checksum, bytesize: 4, traceValid: true });
    // Finished: GitLab refuses further updates with 403 and the job's status.
    expect(await client.updateJob(job.id, job.token, { state: 'success' })).toMatchObject({ result: 'abort', jobStatus: 'failed' });
    expect((await client.updateJob(987654, job.token, { state: 'success' })).result).toBe('abort');
    const other = await running();
    expect((await client.updateJob(other.id, 'not-the-token', { state: 'success' })).result).toBe('abort');
    expect(gitlab.job(other.id).state).toBe('running');
  });

  it('a silent job learns of its cancel through the keep-alive update, once', async () => {
    const job = await running();
    let cancels = 0;
    const up = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker([]), onCancel: () => cancels++, log, intervalMs: 50, minIntervalMs: 10 });
    up.startHeartbeat();
    await sleep(100);
    expect(cancels).toBe(0);
    gitlab.cancel(job.id);
    await gitlab.waitFor(job.id, (j) => j.state === 'canceling', 1000);
    const start = Date.now();
    while (cancels === 0 && Date.now() - start < 3000) await sleep(20);
    expect(cancels).toBe(1);
    up.write(Buffer.from('more output\n'));
    await up.finish();
    up.close();
    expect(cancels).toBe(1);
    expect(gitlab.job(job.id).trace).toBe('more output\n'); // canceling still takes the trace
    await client.updateJob(job.id, job.token, { state: 'failed' });
    expect(gitlab.job(job.id).state).toBe('canceled');
  });

  it('uploads a multi-megabyte trace in bounded PATCHes, with characters split across chunks intact', async () => {
    const job = await running();
    const up = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker(['SECRET']), onCancel: () => {}, log, intervalMs: 20, minIntervalMs: 10 });
    const euro = Buffer.from('€'); // 3 bytes
    up.write(Buffer.from('start '));
    up.write(euro.subarray(0, 1));
    await sleep(60); // let a PATCH go out between the character's bytes
    up.write(euro.subarray(1));
    const line = Buffer.from('0123456789abcdef SECRET ü\n');
    const big = Buffer.concat(Array.from({ length: 120_000 }, () => line)); // ~3.2 MB
    for (let i = 0; i < big.length; i += 7919) up.write(big.subarray(i, i + 7919));
    const t = await up.finish();
    up.close();
    const want = Buffer.concat([Buffer.from('start €'), Buffer.from(big.toString().replaceAll('SECRET', '[MASKED]'))]);
    const held = Buffer.from(gitlab.job(job.id).trace);
    expect(held.length).toBe(want.length);
    expect(held.equals(want)).toBe(true);
    expect(t).toEqual({ bytesize: want.length, checksum: `crc32:${crc32(want).toString(16).padStart(8, '0')}` });
  });

  it('serves a raw payload as is; the parser salvages its id and token so the job can be failed back', async () => {
    const id = gitlab.enqueue({ runnerToken: 'good-token', script: [], raw: { id: 424242, token: 'raw-job-token', steps: [{ name: 'script', script: [1, 2] }] } });
    expect(id).toBe(424242);
    const res = await client.requestJob('good-token');
    if (res.kind !== 'job') throw new Error(res.kind);
    const p = parseJobPayload(res.raw);
    expect(p).toMatchObject({ ok: false, jobId: 424242, token: 'raw-job-token' });
    if (!p.ok) expect(p.error).toMatch(/steps\[0\]\.script\[0\]: .*string/);
    expect((await client.updateJob(424242, 'raw-job-token', { state: 'failed', failureReason: 'runner_system_failure' })).result).toBe('ok');
    expect(gitlab.job(424242).state).toBe('failed');
  });

  it('never writes a runner or job token to its log, even while retrying', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) });
    const loud = new GitLabClient({ url: gitlab.url, timeoutMs: 2000, log: pino({ level: 'trace' }, sink), systemId: 's_log', retries: 2, minRetryMs: 5 });
    const job = await running();
    gitlab.faults.requestStatus = 500;
    await expect(loud.requestJob('good-token')).rejects.toThrow(/job request: HTTP 500/);
    gitlab.faults.requestStatus = undefined;
    gitlab.faults.tracePatchStatusOnce = 502;
    await loud.patchTrace(job.id, job.token, Buffer.from('x'), 0);
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    await new Promise((r) => closed.close(r));
    const dead = new GitLabClient({ url: `http://127.0.0.1:${port}`, timeoutMs: 500, log: pino({ level: 'trace' }, sink), systemId: 's_log', retries: 1, minRetryMs: 5 });
    const err = await dead.updateJob(job.id, job.token, { state: 'success' }).catch((e: Error) => e);
    expect(String(err)).toMatch(new RegExp(`update of job ${job.id}: .*ECONNREFUSED`));
    expect(String(err)).not.toContain(job.token);
    expect(lines.length).toBeGreaterThan(0); // the retries were logged
    for (const l of lines) {
      expect(l).not.toContain('good-token');
      expect(l).not.toContain(job.token);
    }
  });
});

describe('GitLabClient with credentials in its URL', () => {
  it('names the failure without the URL\'s user, password or query, in its errors and its log', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) });
    // The config refuses such a URL; a client built another way must not leak it either.
    const url = gitlab.url.replace('http://', 'http://ci-user:PASSWORD123@') + '/?private_token=QUERYSECRET123';
    const leaky = new GitLabClient({ url, timeoutMs: 500, log: pino({ level: 'trace' }, sink), systemId: 's_url', retries: 1, minRetryMs: 5 });
    const err = await leaky.requestJob('good-token').catch((e: Error) => e);
    expect(String(err)).toMatch(/job request: a URL that includes credentials is refused: http:\/\/\*\*\*@127\.0\.0\.1:\d+\/…/);
    for (const text of [String(err), (err as Error).stack ?? '', ...lines]) {
      for (const secret of ['ci-user', 'PASSWORD123', 'QUERYSECRET123']) expect(text).not.toContain(secret);
    }
  });
});

describe('parseJobPayload', () => {
  it('names the field of a malformed payload and salvages id and token', () => {
    const r = parseJobPayload({ id: 7, token: 't', steps: [{ name: 'script', script: 'echo' }] });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error).toContain('steps[0].script');
      expect(r.jobId).toBe(7);
      expect(r.token).toBe('t');
    }
  });

  it('rejects a payload that is not an object without a crash', () => {
    const r = parseJobPayload('<html>');
    expect(r.ok).toBe(false);
  });

  it('takes the smaller of the job timeout and the class cap', () => {
    const r = parseJobPayload({ id: 1, token: 't', steps: [{ name: 'script', script: [] }], runner_info: { timeout: 600 } });
    expect(r.ok && jobTimeoutSeconds(r.job, 3600)).toBe(600);
    expect(r.ok && jobTimeoutSeconds(r.job, 300)).toBe(300);
  });

  it("accepts GitLab's extra fields and names a wrong type in a nested field", () => {
    const ok = parseJobPayload({ id: 1, token: 't', steps: [{ name: 'script', script: ['true'] }], image: { name: 'ruby:3' }, services: [], artifacts: null, cache: [], credentials: [], dependencies: [], features: { trace_sections: true }, something_new: { x: 1 } });
    expect(ok.ok).toBe(true);
    const bad = parseJobPayload({ id: 1, token: 't', steps: [{ name: 'script', script: [] }], variables: [{ key: 'A', value: 5 }] });
    expect(!bad.ok && bad.error).toMatch(/^variables\[0\]\.value: /);
    const noSteps = parseJobPayload({ id: 1, token: 't', steps: [] });
    expect(!noSteps.ok && noSteps.error).toMatch(/^steps: expected at least one step/);
    const badSha = parseJobPayload({ id: 1, token: 't', steps: [{ name: 'script', script: [] }], git_info: { sha: 'not a sha' } });
    expect(!badSha.ok && badSha.error).toMatch(/^git_info\.sha: /);
  });

  it('reads namespace and pipeline ids only when present and numeric', () => {
    const r = parseJobPayload({ id: 1, token: 't', steps: [{ name: 'script', script: [] }], variables: [{ key: 'CI_PIPELINE_ID', value: 'x' }] });
    if (!r.ok) throw new Error(r.error);
    expect(namespaceIds(r.job)).toEqual({ namespaceId: null, rootNamespaceId: null });
    expect(pipelineId(r.job)).toBeNull();
  });
});
