import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, REDACT_PATHS } from '../../src/isolation/redact.js';

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
