// The command line as an operator uses it: a real process, exit codes and messages.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const dir = mkdtempSync(join(tmpdir(), 'rf-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

const valid = `
shard: cli-1
database: { url: "pglite:./db" }
gitlab: { url: "http://127.0.0.1:9000" }
classes:
  small:
    runnerToken: "\${SMALL_TOKEN}"
    provider: local
    pool: { idle: 1, max: 2 }
providers: { local: {} }
`;

describe('runner-fleet config check', () => {
  it('accepts a valid file and exits 0', () => {
    const r = cli(['config', 'check', '--config', file('ok.yaml', valid)], { SMALL_TOKEN: 'x' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('ok');
  });

  it('prints every error with its field path and exits 1', () => {
    const bad = valid.replace('idle: 1', 'idle: two').replace('provider: local', 'provider: gcp');
    const r = cli(['config', 'check', '--config', file('bad.yaml', bad)], { SMALL_TOKEN: 'x' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('classes.small.pool.idle: expected integer >= 0, got "two"');
    expect(r.stderr).toContain('classes.small.provider');
  });

  it('names an unset environment variable', () => {
    const env = { ...process.env } as Record<string, string>;
    delete env['SMALL_TOKEN'];
    const r = cli(['config', 'check', '--config', file('env.yaml', valid)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('classes.small.runnerToken');
    expect(r.stderr).toContain('SMALL_TOKEN');
  });

  it('rejects an unknown command with usage and exit 2', () => {
    const r = cli(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Usage');
  });
});

describe('runner-fleet migrate', () => {
  it('applies the migrations to an on-disk PGlite database', () => {
    const r = cli(['migrate', '--config', file('m.yaml', valid)], { SMALL_TOKEN: 'x' });
    expect(r.stderr).not.toMatch(/error/i);
    expect(r.code).toBe(0);
  });
});
