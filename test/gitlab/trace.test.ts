// The trace uploader's memory bound, against the GitLab emulator through the real client: a
// producer that waits when write() says so keeps at most about one buffer unacknowledged; when
// GitLab loses bytes already dropped (416 below them), the producer is asked to start over and
// the trace GitLab ends with is complete, in order, with a matching checksum; a re-attaching
// uploader that starts at 0 skips what GitLab already holds.
import { crc32 } from 'node:zlib';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { GitLabClient } from '../../src/gitlab/client.js';
import { parseJobPayload } from '../../src/gitlab/job-payload.js';
import { Masker } from '../../src/gitlab/mask.js';
import { TraceUploader } from '../../src/gitlab/trace.js';

let gitlab: GitLabEmulator;
let client: GitLabClient;
const log = pino({ level: 'silent' });

beforeAll(async () => {
  gitlab = await startGitLabEmulator({ runnerTokens: ['t'], traceUpdateIntervalS: 1 });
  client = new GitLabClient({ url: gitlab.url, timeoutMs: 5000, log, systemId: 's_trace', retries: 2, minRetryMs: 10 });
});
afterAll(() => gitlab.close());

async function running() {
  gitlab.enqueue({ runnerToken: 't', script: ['true'], git: false });
  const res = await client.requestJob('t');
  if (res.kind !== 'job') throw new Error(res.kind);
  const p = parseJobPayload(res.raw);
  if (!p.ok) throw new Error(p.error);
  return p.job;
}

/** A job's output as a VM file would hold it: numbered lines with a secret in some. */
function output(lines: number): Buffer {
  return Buffer.from(Array.from({ length: lines }, (_, i) => `line ${String(i).padStart(7, '0')} ${i % 97 === 0 ? 'hunter2' : 'xxxxxxxxxxxxxxxx'}\n`).join(''));
}

/** Feeds `out` in 16 KiB chunks honouring backpressure; restarts from byte 0 when asked (rewind). */
async function produce(up: TraceUploader, out: Buffer, prefix: string, rewinds: { n: number; asked: boolean }): Promise<void> {
  for (;;) {
    rewinds.asked = false;
    up.append(prefix);
    let i = 0;
    for (; i < out.length && !rewinds.asked; i += 16 * 1024) {
      if (!up.write(out.subarray(i, i + 16 * 1024))) await up.drained();
    }
    if (!rewinds.asked) {
      up.append('\nJob succeeded\n');
      await up.finish();
      if (!up.needsRewind) return;
    }
    rewinds.n++;
    up.restart(new Masker(['hunter2']));
  }
}

describe('TraceUploader memory bound', () => {
  it('holds at most about one buffer of unacknowledged trace however much the job prints', async () => {
    const job = await running();
    const out = output(200_000); // ~6.4 MB
    const rewinds = { n: 0, asked: false };
    const up = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker(['hunter2']), onCancel: () => {}, onRewind: () => (rewinds.asked = true), log, intervalMs: 20, minIntervalMs: 10, bufferBytes: 128 * 1024 });
    await produce(up, out, 'Running with runner-fleet\n', rewinds);
    up.close();
    const want = Buffer.concat([Buffer.from('Running with runner-fleet\n'), Buffer.from(out.toString().replaceAll('hunter2', '[MASKED]')), Buffer.from('\nJob succeeded\n')]);
    expect(Buffer.from(gitlab.job(job.id).trace).equals(want)).toBe(true);
    expect(up.highWater).toBeGreaterThan(64 * 1024); // it did fill up
    expect(up.highWater).toBeLessThanOrEqual(128 * 1024 + 16 * 1024); // one buffer + one chunk
    expect(rewinds.n).toBe(0);
  });

  it('when GitLab loses bytes already dropped (416), produces the trace again from the start and GitLab ends with it whole', async () => {
    const job = await running();
    const out = output(100_000); // ~3.2 MB
    const rewinds = { n: 0, asked: false };
    const up = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker(['hunter2']), onCancel: () => {}, onRewind: () => (rewinds.asked = true), log, intervalMs: 20, minIntervalMs: 10, bufferBytes: 128 * 1024 });
    // Once GitLab holds 1 MB, it loses everything past 300 KB.
    const arm = setInterval(() => {
      if (gitlab.job(job.id).trace.length > 1024 * 1024) {
        gitlab.faults.traceTruncateOnce = 300 * 1024;
        clearInterval(arm);
      }
    }, 5);
    await produce(up, out, 'prefix\n', rewinds);
    clearInterval(arm);
    const t = await up.finish();
    up.close();
    expect(rewinds.n).toBe(1);
    const want = Buffer.concat([Buffer.from('prefix\n'), Buffer.from(out.toString().replaceAll('hunter2', '[MASKED]')), Buffer.from('\nJob succeeded\n')]);
    const held = Buffer.from(gitlab.job(job.id).trace);
    expect(held.length).toBe(want.length);
    expect(held.equals(want)).toBe(true);
    expect(t).toEqual({ bytesize: want.length, checksum: `crc32:${crc32(want).toString(16).padStart(8, '0')}` });
    expect(up.highWater).toBeLessThanOrEqual(128 * 1024 + 16 * 1024);
  });

  it('a re-attaching uploader starts at 0, learns from the 416 what GitLab holds and sends only the rest', async () => {
    const job = await running();
    const out = output(20_000);
    const first = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker(['hunter2']), onCancel: () => {}, log, intervalMs: 20, minIntervalMs: 10 });
    first.append('prefix\n');
    first.write(out.subarray(0, 250_000)); // the first manager got this far, then died
    await first.finish();
    first.close();
    const sentBefore = gitlab.job(job.id).trace.length;
    const second = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker(['hunter2']), onCancel: () => {}, log, intervalMs: 20, minIntervalMs: 10 });
    second.append('prefix\n');
    for (let i = 0; i < out.length; i += 4096) second.write(out.subarray(i, i + 4096));
    const t = await second.finish();
    second.close();
    const want = Buffer.concat([Buffer.from('prefix\n'), Buffer.from(out.toString().replaceAll('hunter2', '[MASKED]'))]);
    expect(sentBefore).toBeGreaterThan(200_000);
    expect(Buffer.from(gitlab.job(job.id).trace).equals(want)).toBe(true);
    expect(t.checksum).toBe(`crc32:${crc32(want).toString(16).padStart(8, '0')}`);
  });
});

describe('TraceUploader masking', () => {
  it("masks the runner's own lines too, in one stream with the job's output", async () => {
    const job = await running();
    const secret = 'vm-error-s3cret-9f8e';
    const up = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker: new Masker([secret]), onCancel: () => {}, log, intervalMs: 20, minIntervalMs: 10 });
    up.append(`Running on VM ${secret}\n`);
    up.write(Buffer.from('job says vm-error-'));
    up.append(`s3cret-9f8e\nERROR: Job failed (system failure): ssh: ${secret}\n`);
    await up.finish();
    up.close();
    expect(gitlab.job(job.id).trace).toBe('Running on VM [MASKED]\njob says [MASKED]\nERROR: Job failed (system failure): ssh: [MASKED]\n');
  });

  it('stops masking once the trace is truncated: output past the cap costs no masking work', async () => {
    const job = await running();
    class Counting extends Masker {
      pushed = 0;
      override push(chunk: Buffer): Buffer {
        this.pushed += chunk.length;
        return super.push(chunk);
      }
    }
    const masker = new Counting(['hunter2-hunter2']);
    const up = new TraceUploader({ client, jobId: job.id, jobToken: job.token, masker, onCancel: () => {}, log, intervalMs: 20, minIntervalMs: 10, maxBytes: 64 * 1024 });
    const chunk = Buffer.from('x'.repeat(4000) + ' hunter2-hunter2\n');
    for (let i = 0; i < 1000; i++) up.write(chunk); // ~4 MB
    up.append('\nJob succeeded\n');
    await up.finish();
    up.close();
    expect(masker.pushed).toBeLessThan(64 * 1024 + 2 * chunk.length);
    const trace = gitlab.job(job.id).trace;
    expect(trace).toContain('job log size limit exceeded');
    expect(trace).not.toContain('hunter2');
    expect(trace.length).toBeLessThan(64 * 1024 + 200);
  });
});
