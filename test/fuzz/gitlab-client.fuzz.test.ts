// Fuzz of the GitLab coordinator's answers to the manager's client: a loopback server answers job
// requests, trace PATCHes and job updates with odd statuses, cut-off or huge bodies, hostile and
// huge headers, dropped connections and silence. Every call settles in bounded time with a
// well-formed result or an Error naming the call; no unhandled rejection.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GitLabClient } from '../../src/gitlab/client.js';
import { parseJobPayload } from '../../src/gitlab/job-payload.js';
import { createLogger } from '../../src/isolation/redact.js';
import { Gen } from './gen.js';

export const CLIENT_CASES = 150;
const TIMEOUT_MS = 300;

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string | Buffer;
  mode: 'normal' | 'destroy' | 'destroyMidBody' | 'silent';
}

const headerSafe = (s: string) => s.replace(/[^\t\x20-\x7e\x80-\xff]/g, '?');

function makeAnswer(g: Gen): Answer {
  // Mostly what the calls expect (so their parsing of headers and bodies is reached), then the odd.
  const status = g.chance(0.6)
    ? g.pick([200, 201, 202, 204, 403, 404, 409, 412, 416])
    : g.pick([206, 301, 302, 303, 307, 308, 304, 400, 401, 410, 413, 418, 422, 429, 500, 502, 503, 599, 999]);
  const headers: Record<string, string> = {};
  if (status >= 300 && status < 400 && g.chance(0.7)) headers['Location'] = g.pick(['http://127.0.0.2:9/steal', '/api/v4/jobs/request', 'https://example.invalid/']);
  for (let i = g.int(0, 3); i > 0; i--) {
    const name = g.pick(['X-GitLab-Last-Update', 'Job-Status', 'X-GitLab-Trace-Update-Interval', 'Range', 'Content-Type', 'Retry-After', 'Location']);
    const value = g.pick([
      () => headerSafe(g.hostileString().slice(0, 4000)),
      () => String(g.pick([0, -1, 1e308, Number.NaN, 2 ** 53 + 2, 1.5])),
      () => g.pick(['0-99999999999999999999', '0--5', '5-0', '0-', 'bytes 0-10/20', '0-12', 'canceling', 'canceled', 'running', 'text/html']),
    ])();
    headers[name] = g.chance(0.1) ? 'x'.repeat(g.int(20_000, 200_000)) : value; // past the client's header limit
  }
  const valid = JSON.stringify({ id: 77, token: 'glcbt-x', steps: [{ name: 'script', script: ['true'] }] });
  const body = g.pick([
    () => '',
    () => g.truncate(valid),
    () => valid,
    () => JSON.stringify(g.hostileValue()) ?? '',
    () => g.hostileString(),
    () => '<html><body>502 Bad Gateway</body></html>',
    () => Buffer.alloc(g.int(1, 3) * 1024 * 1024, 0x7b), // megabytes of `{`
    () => Buffer.from([0xff, 0xfe, 0x00, 0xd8]),
  ])();
  const mode = g.chance(0.8) ? 'normal' : g.pick(['destroy', 'destroy', 'destroyMidBody', 'destroyMidBody', 'silent'] as const);
  return { status, headers, body, mode };
}

describe('GitLab client fuzz', () => {
  let server: Server;
  let url: string;
  let answer: Answer;
  const open = new Set<ServerResponse>();
  const received: string[] = [];
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      received.push(`${req.method} ${req.url}`);
      req.resume();
      req.on('end', () => {
        const a = answer;
        if (a.mode === 'destroy') return void req.socket.destroy();
        if (a.mode === 'silent') {
          open.add(res); // never answered; closed with the server
          return;
        }
        try {
          res.writeHead(a.status, a.headers);
        } catch {
          res.writeHead(a.status); // a header Node itself will not send
        }
        if (a.status === 204 || a.status === 304) return void res.end();
        if (a.mode === 'destroyMidBody') {
          res.write(Buffer.from(a.body).subarray(0, Math.max(1, Math.floor(a.body.length / 2))));
          return void setTimeout(() => res.socket?.destroy(), 5);
        }
        res.end(a.body);
      });
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    for (const r of open) r.socket?.destroy();
    server.closeAllConnections();
    await new Promise((ok) => server.close(ok));
    process.off('unhandledRejection', onUnhandled);
  });

  it(`${CLIENT_CASES} generated coordinator answers: a well-formed result or an Error naming the call, in bounded time`, async () => {
    const g = new Gen();
    const client = new GitLabClient({ url, timeoutMs: TIMEOUT_MS, log: createLogger({ level: 'silent' }), systemId: 's_fuzz', retries: 1, minRetryMs: 1, maxPayloadBytes: 1024 * 1024 });
    const tally = { resolved: 0, rejected: 0 };
    for (let i = 0; i < CLIENT_CASES; i++) {
      answer = makeAnswer(g);
      const call = i % 3;
      const where = `case ${i} (seed ${g.seed}) call ${call}: ${answer.status} ${answer.mode} ${JSON.stringify(Object.keys(answer.headers))}`;
      const started = Date.now();
      received.length = 0;
      let result: unknown;
      let error: unknown;
      try {
        const pending =
          call === 0
            ? client.requestJob('runner-token')
            : call === 1
              ? client.patchTrace(77, 'glcbt-x', Buffer.from('hello\n'), g.pick([0, 6, 1000]))
              : client.updateJob(77, 'glcbt-x', { state: g.pick(['running', 'success', 'failed'] as const), exitCode: 1 });
        // A call that never settles fails here, naming its case, instead of timing the test out.
        let timer: NodeJS.Timeout | undefined;
        const hung = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`HUNG: ${where}`)), 2 * TIMEOUT_MS + 8000)));
        try {
          result = await Promise.race([pending, hung]);
        } finally {
          clearTimeout(timer);
        }
      } catch (err) {
        error = err;
      }
      // Two attempts at most, each bounded by the timeout (slack for a loaded CI machine).
      expect(Date.now() - started, where).toBeLessThan(2 * TIMEOUT_MS + 8000);
      // A redirect is never followed: the job token must not travel to wherever Location points.
      const path = ['POST /api/v4/jobs/request', 'PATCH /api/v4/jobs/77/trace', 'PUT /api/v4/jobs/77'][call];
      expect(received.every((r) => r === path), `${where}: ${received.join(', ')}`).toBe(true);
      if (error !== undefined) {
        expect(String((error as Error).message), where).not.toMatch(/^HUNG/);
        tally.rejected++;
        expect(error, where).toBeInstanceOf(Error);
        expect((error as Error).message, where).toMatch(/^(job request|trace of job 77|update of job 77): /);
        expect((error as Error).message, where).not.toContain('glcbt-x');
        expect((error as Error).message, where).not.toContain('runner-token');
        continue;
      }
      tally.resolved++;
      const r = result as Record<string, unknown>;
      if (call === 0) {
        expect(['job', 'none', 'forbidden'], where).toContain(r['kind']);
        if (r['kind'] === 'job') {
          expect(answer.status, where).toBe(201);
          // What intake does next: a parsed job, or an error naming the field (the body never quoted).
          const parsed = parseJobPayload(r['raw']);
          if (!parsed.ok) {
            expect(parsed.error, where).toMatch(/^(\(payload\)|[A-Za-z_]\w*(\[\d+\]|\.\w+)*): /);
            expect(parsed.error.length, where).toBeLessThan(2000);
          }
          if (Buffer.byteLength(answer.body) > 1024 * 1024 && answer.mode === 'normal') expect(parsed.ok || parsed.error, where).toMatch(/^\(payload\): larger than 1048576 bytes/);
        }
      } else if (call === 1) {
        expect(typeof r['ok'], where).toBe('boolean');
        expect(Number.isSafeInteger(r['nextOffset']) && (r['nextOffset'] as number) >= 0, where).toBe(true);
        expect(typeof r['canceled'], where).toBe('boolean');
      } else {
        expect(['ok', 'accepted', 'abort', 'notFound', 'traceMismatch'], where).toContain(r['result']);
      }
      if (r['updateIntervalMs'] !== undefined) {
        const ms = r['updateIntervalMs'] as number;
        expect(Number.isFinite(ms) && ms > 0 && ms <= 3_600_000, where).toBe(true);
      }
    }
    // A payload past the cap is not held in memory; its start still names the job to fail back.
    answer = { status: 201, headers: {}, body: `{"id":77,"token":"glcbt-x","variables":[{"key":"K","value":"${'v'.repeat(2 * 1024 * 1024)}"}]}`, mode: 'normal' };
    const big = await client.requestJob('runner-token');
    expect(big.kind).toBe('job');
    expect(parseJobPayload(big.kind === 'job' ? big.raw : null)).toEqual({ ok: false, error: '(payload): larger than 1048576 bytes', jobId: 77, token: 'glcbt-x' });
    expect(tally.resolved).toBeGreaterThan(20);
    expect(tally.rejected).toBeGreaterThan(20);
    expect(unhandled).toEqual([]);
  }, 180_000); // 150 calls in sequence, some waiting out the timeout: slow on a loaded machine
});
