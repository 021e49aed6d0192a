// The command line as an operator uses it: a real process, exit codes and messages.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

describe('runner-fleet billing export', () => {
  it('writes the events of jobs finished in [since, until) as csv or jsonl', async () => {
    const { pino } = await import('pino');
    const { openDatabase } = await import('../../src/db/connect.js');
    const { migrateToLatest } = await import('../../src/db/migrate.js');
    const { insertEvents } = await import('../helpers/billing.js');
    const config = file('export.yaml', valid.replace('pglite:./db', 'pglite:./export-db'));
    const database = await openDatabase(`pglite:${join(dir, 'export-db')}`, { log: pino({ level: 'silent' }) });
    await migrateToLatest(database.db, pino({ level: 'silent' }));
    // Jobs 1..20 finish one second apart from 2026-11-24T12:00:01Z (sampleEvent).
    const ids = await insertEvents(database.db, 'cli-1', 1, 20);
    await insertEvents(database.db, 'other-shard', 1, 5);
    await database.close();

    const csv = cli(['billing', 'export', '--config', config, '--since', '2026-11-24T12:00:05Z', '--until', '2026-11-24T12:00:10Z'], { SMALL_TOKEN: 'x' });
    expect(csv.code).toBe(0);
    const lines = csv.stdout.trimEnd().split('\r\n');
    expect(lines[0]).toBe('id,type,shard,jobId,pipelineId,projectId,namespaceId,rootNamespaceId,runnerClass,costFactor,provider,machineType,startedAt,finishedAt,durationSeconds,computeMinutes,outcome,billable');
    expect(lines.slice(1).map((l) => l.split(',')[0])).toEqual(ids.slice(4, 9)); // jobs 5..9: until is exclusive
    expect(lines[1]).toContain(',cli-1,5,');
    expect(lines[1]).toMatch(/,90,1\.500000,success,true$/);
    expect(csv.stderr).toContain('exported 5 events');

    const jsonl = cli(['billing', 'export', '--config', config, '--format', 'jsonl'], { SMALL_TOKEN: 'x' });
    expect(jsonl.code).toBe(0);
    const events = jsonl.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as { id: string; shard: string });
    expect(events.map((e) => e.id)).toEqual(ids);

    const bad = cli(['billing', 'export', '--config', config, '--since', 'yesterday'], { SMALL_TOKEN: 'x' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--since: expected an ISO 8601 date or date-time');
    expect(cli(['billing', 'export', '--config', config, '--format', 'xml'], { SMALL_TOKEN: 'x' }).stderr).toContain('--format: expected csv or jsonl, got "xml"');
  }, 180_000);
});

describe('runner-fleet network', () => {
  const registryText = readFileSync('deploy/network/cidr-registry.csv', 'utf8');

  it('checks a registry: ok, or every overlap named with exit 1', () => {
    const ok = cli(['network', 'check', '--registry', file('cidrs.csv', registryText)]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/ok \(\d+ subnets, no overlaps\)/);
    const bad = cli(['network', 'check', '--registry', file('bad-cidrs.csv', `${registryText.trimEnd()}\nGCP/dup,gitlab-ci/dup/p1,10.14.100.0/22\n`)]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('1 overlapping subnet pair');
    expect(bad.stderr).toMatch(/line \d+ \(GCP\/gitlab-r-saas-l-s-amd64-5 gitlab-ci\/saas-l-s-amd64\/p5 10\.14\.96\.0\/21\) overlaps line \d+ \(GCP\/dup gitlab-ci\/dup\/p1 10\.14\.100\.0\/22\)/);
  });

  it('allocates a free subnet, writes it with --write, and answers the same one after', () => {
    const path = file('alloc.csv', registryText);
    const args = ['network', 'allocate', '--registry', path, '--environment', 'GCP/gitlab-r-saas-l-s-amd64-7', '--network', 'gitlab-ci/saas-l-s-amd64/p7', '--within', '10.14.0.0/16'];
    const dry = cli(args);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toBe('GCP/gitlab-r-saas-l-s-amd64-7,gitlab-ci/saas-l-s-amd64/p7,10.14.112.0/21\n');
    expect(readFileSync(path, 'utf8')).toBe(registryText);
    expect(cli([...args, '--write']).code).toBe(0);
    expect(readFileSync(path, 'utf8')).toBe(`${registryText}GCP/gitlab-r-saas-l-s-amd64-7,gitlab-ci/saas-l-s-amd64/p7,10.14.112.0/21\n`);
    const again = cli([...args, '--write']);
    expect(again.stdout).toBe(dry.stdout);
    expect(again.stderr).toContain('already has 10.14.112.0/21');
    expect(readFileSync(path, 'utf8').split('\n').filter((l) => l.includes('saas-l-s-amd64-7'))).toHaveLength(1);
    expect(cli(['network', 'check', '--registry', path]).code).toBe(0);
  });

  it('rejects bad flags by name', () => {
    const path = file('flags.csv', registryText);
    const base = ['network', 'allocate', '--registry', path, '--environment', 'GCP/x', '--network', 'net/x'];
    expect(cli([...base, '--within', '10.14.1.0/16']).stderr).toContain('--within: 10.14.1.0/16: host bits are set; the network is 10.14.0.0/16');
    expect(cli([...base, '--within', '8.8.0.0/16']).stderr).toContain('--within: 8.8.0.0/16 is not inside a private range');
    expect(cli([...base, '--prefix', '30']).stderr).toContain('--prefix: expected an integer from 8 (the --within range) to 29, got "30"');
    expect(cli(['network', 'allocate', '--registry', path, '--environment', 'a,b', '--network', 'n']).stderr).toContain('--environment: expected letters, digits and . _ / -, got "a,b"');
    expect(cli(['network', 'check']).code).toBe(2);
  });
});
