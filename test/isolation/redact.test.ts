import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, REDACT_PATHS, scrubUrls } from '../../src/isolation/redact.js';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { lines, stream };
}

describe('createLogger', () => {
  it('never writes tokens, keys or auth headers', () => {
    const { lines, stream } = capture();
    const log = createLogger({ level: 'info', shard: 's1', destination: stream });
    log.info(
      {
        cls: { runnerToken: 'RT-SECRET', name: 'small' },
        job: { token: 'JOB-SECRET', id: 7, variables: [{ key: 'A', value: 'VAR-SECRET' }] },
        vm: { privateKey: '-----BEGIN OPENSSH PRIVATE KEY-----' },
        spec: { hostKey: 'HOST-KEY-SECRET' },
        req: { headers: { authorization: 'Bearer X', 'job-token': 'JT-SECRET', accept: 'json' } },
        config: { http: { adminToken: 'ADMIN' } },
        password: 'PW',
      },
      'hello',
    );
    const text = JSON.stringify(lines);
    for (const s of ['RT-SECRET', 'JOB-SECRET', 'VAR-SECRET', 'BEGIN OPENSSH', 'Bearer X', 'JT-SECRET', 'ADMIN', 'PW', 'HOST-KEY-SECRET']) expect(text).not.toContain(s);
    expect(lines[0]).toMatchObject({ shard: 's1', msg: 'hello', job: { id: 7 }, cls: { name: 'small' }, req: { headers: { accept: 'json' } } });
  });

  it('child loggers keep redacting', () => {
    const { lines, stream } = capture();
    createLogger({ level: 'info', destination: stream }).child({ vm: 'v1' }).warn({ err: { token: 'T' } }, 'x');
    expect(JSON.stringify(lines)).not.toContain('"T"');
    expect(REDACT_PATHS).toContain('*.privateKey');
  });
});

describe('scrubUrls', () => {
  it('cuts every URL in a text to scheme, host and port', () => {
    expect(scrubUrls('HTTP 503 from https://alice:hunter2@hooks.example.com:8443/hooks/T0/B1/XyZ?token=abc#f: down.')).toBe(
      'HTTP 503 from https://***@hooks.example.com:8443/…: down.',
    );
    expect(scrubUrls('see http://127.0.0.1:9000/ and (postgres://rf:pw@db:5432/rf), or gitlab.example.com')).toBe(
      'see http://127.0.0.1:9000/ and (postgres://***@db:5432/…), or gitlab.example.com',
    );
    // A password holding '?' or '#' (not percent-encoded) is still userinfo.
    expect(scrubUrls('"https://u:p?a#ss@host/x"')).toBe('"https://***@host/…"');
    expect(scrubUrls('https://host?token=SECRET')).toBe('https://host/…');
  });

  it('also removes the secret parts of known URLs where they appear without one, e.g. echoed back', () => {
    const url = 'https://hooks.example.com/hooks/SECRETPATH?token=QUERYTOKEN';
    expect(scrubUrls('404: no route POST /hooks/SECRETPATH (token QUERYTOKEN)', [url])).toBe('404: no route POST [redacted] (token [redacted])');
  });
});

describe('createLogger with URLs in errors', () => {
  it('writes no userinfo, path or query of a URL in err (Error or string), its cause, or the message', async () => {
    const { lines, stream } = capture();
    const log = createLogger({ level: 'info', destination: stream }).child({ sink: 0 });
    const url = 'https://alice:PASSWORD1@hooks.example.com/hooks/PATHSECRET?token=QUERYSECRET';
    // What undici throws for a URL with credentials, with the URL in its message.
    const thrown = await fetch(url).catch((e: unknown) => e as Error);
    log.error({ err: thrown }, 'delivery failed');
    log.warn({ err: `HTTP 503 from ${url}` }, 'string err');
    log.warn({ err: new Error('outer', { cause: new Error(`inner ${url}`) }) }, 'with a cause');
    log.error(new Error(`first argument ${url}`));
    log.info('message naming %s', url);
    const text = JSON.stringify(lines);
    expect(lines).toHaveLength(5);
    expect(text).toContain('Request cannot be constructed from a URL that includes credentials: https://***@hooks.example.com/…');
    for (const s of ['alice', 'PASSWORD1', 'PATHSECRET', 'QUERYSECRET']) expect(text).not.toContain(s);
    expect(lines[0]).toMatchObject({ sink: 0, err: { type: 'TypeError' } });
  });
});
