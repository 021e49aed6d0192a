import { poolConfig } from '../../src/config/pool-defaults.js';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkConfigFile, loadConfigFile, parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/types.js';

const FIXTURES = resolve(import.meta.dirname, '../fixtures/config');
const fixture = (name: string) => join(FIXTURES, name);
const ENV = {
  SMALL_TOKEN: 'small-runner-token',
  RUNNER_FLEET_ADMIN_TOKEN: 'admin-token-123',
  RUNNER_FLEET_SECRET_KEY: 'a-secret-key-of-some-length',
};

function errorsOf(yamlOrFile: { file: string } | string, env: Record<string, string | undefined> = ENV): string[] {
  const res = typeof yamlOrFile === 'string' ? checkYaml(yamlOrFile, env) : checkConfigFile(fixture(yamlOrFile.file), { env });
  if (res.ok) throw new Error('expected the config to be rejected');
  return res.errors;
}

function checkYaml(text: string, env: Record<string, string | undefined>) {
  try {
    return { ok: true as const, config: parseConfig(text, { env }) };
  } catch (err) {
    if (err instanceof ConfigError) return { ok: false as const, errors: err.errors };
    throw err;
  }
}

const MINIMAL = `
shard: s1
gitlab: { url: "http://127.0.0.1:9000" }
classes:
  small: { runnerToken: tok, provider: local, pool: { idle: 1, max: 2 } }
providers: { local: {} }
`;

describe('loading a shard config', () => {
  it('parses a complete file: durations in ms, env expanded, paths resolved against the file', () => {
    const config = loadConfigFile(fixture('valid-shard.yaml'), { env: ENV });
    expect(config.shard).toBe('demo-1');
    expect(config.database.url).toBe(`pglite:${join(FIXTURES, 'state/db')}`);
    expect(config.http).toEqual({ listen: { host: '127.0.0.1', port: 8080 }, adminToken: 'admin-token-123' });
    expect(config.gitlab).toEqual({ url: 'http://127.0.0.1:9000', pollIntervalMs: 500, requestTimeoutMs: 120_000, tlsCaFile: null });
    expect(Object.keys(config.classes)).toEqual(['saas-linux-small-amd64', 'saas-linux-medium-amd64']);
    expect(config.classes['saas-linux-small-amd64']).toEqual({
      name: 'saas-linux-small-amd64',
      runnerToken: 'small-runner-token',
      provider: 'local',
      costFactor: 1,
      pool: poolConfig({ idle: 2, max: 20 }),
      jobTimeoutMs: 5_400_000,
      bootTimeoutMs: 45_000,
      machine: { vcpus: 2, memoryGb: 8 },
      requestConcurrency: 1,
      executor: 'shell',
      defaultImage: null,
      pullPolicy: ['always'],
    });
    expect(config.classes['saas-linux-medium-amd64']).toMatchObject({
      runnerToken: 'medium-default-token',
      costFactor: 2,
      jobTimeoutMs: 3 * 3600_000,
      bootTimeoutMs: 600_000,
      machine: {},
    });
    expect(config.providers).toEqual({ local: {} });
    expect(config.dataDir).toBe(join(FIXTURES, 'data'));
    expect(config.secrets.key).toBe('a-secret-key-of-some-length');
    expect(config.log.level).toBe('debug');
  });

  it('applies defaults to a minimal file', () => {
    const config = loadConfigFile(fixture('minimal-shard.yaml'), { env: {} });
    expect(config.database.url).toBe(`pglite:${join(FIXTURES, 'data', 'db')}`);
    expect(config.http).toEqual({ listen: { host: '127.0.0.1', port: 8080 }, adminToken: null });
    expect(config.gitlab.pollIntervalMs).toBe(3000);
    expect(config.gitlab.requestTimeoutMs).toBe(30_000);
    expect(config.classes['small']).toMatchObject({ costFactor: 1, jobTimeoutMs: 10_800_000, bootTimeoutMs: 600_000, machine: {} });
    expect(config.providers).toEqual({ local: {} });
    expect(config.secrets.key).toBeNull();
    expect(config.log.level).toBe('info');
  });

  it('resolves relative paths against baseDir and keeps postgres URLs and pglite:memory as they are', () => {
    const text = `${MINIMAL}dataDir: ./state\n`;
    expect(parseConfig(text, { env: {}, baseDir: '/srv/rf' }).dataDir).toBe('/srv/rf/state');
    expect(parseConfig(`${text}database: { url: "pglite:./db" }`, { env: {}, baseDir: '/srv/rf' }).database.url).toBe('pglite:/srv/rf/db');
    expect(parseConfig(`${text}database: { url: "pglite:memory" }`, { env: {} }).database.url).toBe('pglite:memory');
    const pgUrl = 'postgres://rf@127.0.0.1:5432/rf';
    expect(parseConfig(`${text}database: { url: "${pgUrl}" }`, { env: {} }).database.url).toBe(pgUrl);
  });

  it('reads listen addresses including port 0 and IPv6', () => {
    expect(parseConfig(`${MINIMAL}http: { listen: "127.0.0.1:0" }`, { env: {} }).http.listen).toEqual({ host: '127.0.0.1', port: 0 });
    expect(parseConfig(`${MINIMAL}http: { listen: "[::1]:9090" }`, { env: {} }).http.listen).toEqual({ host: '::1', port: 9090 });
  });

  it('expands ${VAR} and ${VAR:-default} in every string, and numbers from the environment', () => {
    const config = loadConfigFile(fixture('env-shard.yaml'), { env: { ...ENV, IDLE: '2', GITLAB_URL: '' } });
    expect(config.http.adminToken).toBe('admin-token-123');
    expect(config.gitlab.url).toBe('http://127.0.0.1:9000');
    expect(config.classes['x']!.runnerToken).toBe('small-runner-token');
    expect(config.classes['x']!.pool.idle).toBe(2);
    expect(parseConfig(MINIMAL.replace('tok', () => '"$${LITERAL}"'), { env: {} }).classes['small']!.runnerToken).toBe('${LITERAL}');
  });

  it('names the field of each unset variable', () => {
    expect(errorsOf({ file: 'env-shard.yaml' }, {})).toEqual([
      'http.adminToken: environment variable RUNNER_FLEET_ADMIN_TOKEN is not set',
      'classes.x.runnerToken: environment variable SMALL_TOKEN is not set',
    ]);
  });

  it('reports every bad value with its path, what was expected and what was found', () => {
    expect(errorsOf({ file: 'invalid-values.yaml' })).toEqual([
      'shard: expected shard name of 1-40 characters [a-z0-9-], got "Demo_1"',
      'http.listen: expected "host:port" with port 0-65535, got "localhost"',
      'http.adminToken: expected string of at least 8 characters, or null, got a string of 5 characters',
      'gitlab.url: expected http(s) URL, got "ftp://gitlab"',
      'gitlab.pollInterval: expected duration from 100ms to 1h like 500ms, 3s, 2m, 1h30m, got "3 seconds"',
      'gitlab.requestTimeout: expected duration from 100ms to 10m like 500ms, 3s, 2m, 1h30m, got "20m"',
      'classes.small.runnerToken: expected non-empty string, got a string of 0 characters',
      'classes.small.costFactor: expected number > 0, got 0',
      'classes.small.pool.idle: expected integer >= 0, got "two"',
      'classes.small.pool.max: expected integer >= 1, got 0',
      'classes.small.jobTimeout: expected duration from 1s to 24h like 500ms, 3s, 2m, 1h30m, got "25h"',
      'classes.small.bootTimeout: expected duration from 1s to 24h like 500ms, 3s, 2m, 1h30m, got 10',
      'log.level: expected one of fatal, error, warn, info, debug, trace, silent, got "loud"',
    ]);
  });

  it('rejects unknown keys at every level', () => {
    expect(errorsOf({ file: 'invalid-unknown-keys.yaml' })).toEqual([
      'http.lisen: unknown key',
      'classes.small.pool.min: unknown key',
      'extra: unknown key',
    ]);
  });

  it('checks class names, that each provider is configured, and idle <= max', () => {
    expect(errorsOf({ file: 'invalid-providers.yaml' })).toEqual([
      'classes: expected class names matching [a-z0-9][a-z0-9-]*, got "Big_Class"',
      'classes.small.provider: expected a provider configured under providers (local), got "gcp"',
      'classes.small.pool.idle: expected integer <= pool.max (3), got 5',
    ]);
  });

  it('requires at least one class and the fields without defaults', () => {
    expect(errorsOf({ file: 'invalid-empty-classes.yaml' })).toEqual(['classes: expected at least one runner class, got {}']);
    expect(errorsOf('classes: { a: { provider: local, pool: {} } }\nproviders: { local: }')).toEqual([
      'shard: expected shard name of 1-40 characters [a-z0-9-], got nothing',
      'gitlab: expected mapping, got nothing',
      'classes.a.runnerToken: expected non-empty string, got nothing',
      'classes.a.pool.idle: expected integer >= 0, got nothing',
      'classes.a.pool.max: expected integer >= 1, got nothing',
    ]);
  });

  it('checks pool policies, periods and billing sinks field by field', () => {
    const head = 'shard: s\ngitlab: { url: "http://127.0.0.1:9" }\nproviders: { local: }\n';
    expect(errorsOf(`${head}classes:\n  a:\n    runnerToken: t\n    provider: local\n    pool: { idle: 1, max: 4, policy: magic, bound: 2, intake: eager, periods: [{ cron: "every day", timezone: Mars/Olympus }] }\n`)).toEqual([
      'classes.a.pool.periods[0].cron: expected five-field cron schedule like "* 8-18 * * mon-fri", got "every day"',
      'classes.a.pool.periods[0].timezone: expected IANA time zone like Europe/Berlin, got "Mars/Olympus"',
      'classes.a.pool.policy: expected static or predictive, got "magic"',
      'classes.a.pool.bound: expected number between 0.0001 and 0.5, got 2',
      'classes.a.pool.intake: expected auto, preemptive or coldStart, got "eager"',
    ]);
    // Suspend needs a provider that can suspend (gcp); local cannot, and a typo is named.
    expect(errorsOf(`${head}classes:\n  a: { runnerToken: t, provider: local, pool: { idle: 1, max: 4, standby: 1, standbyMode: suspend } }\n  b: { runnerToken: t, provider: local, pool: { idle: 1, max: 4, standbyMode: hibernate } }\n`)).toEqual([
      'classes.b.pool.standbyMode: expected stop or suspend, got "hibernate"',
      'classes.a.pool.standbyMode: expected "stop" (provider local cannot suspend VMs), got "suspend"',
    ]);
    const ok = `${head}classes: { a: { runnerToken: t, provider: local, pool: { idle: 1, max: 4 } } }\n`;
    expect(errorsOf(`${ok}billing: { token: short, webhooks: [{ url: "ftp://x", secret: s, batchSize: 5000, deadLetterAfter: 1s }] }\n`)).toEqual([
      'billing.token: expected string of at least 16 characters, or null, got a string of 5 characters',
      'billing.webhooks[0].url: expected http(s) URL, got "ftp://x"',
      'billing.webhooks[0].secret: expected shared secret of at least 16 characters, got a string of 1 characters',
      'billing.webhooks[0].batchSize: expected integer from 1 to 1000, got 5000',
      'billing.webhooks[0].deadLetterAfter: expected duration from 1m to 720h like 500ms, 3s, 2m, 1h30m, got "1s"',
    ]);
    expect(errorsOf(`${ok}isolation: { managerRanges: ["10.0.0.5/24", "10.0.0"], audit: strict, auditInterval: 5s }\n`)).toEqual([
      'isolation.managerRanges[0]: expected IPv4 CIDR like 10.0.0.5/32 (no host bits set), got "10.0.0.5/24"',
      'isolation.managerRanges[1]: expected IPv4 CIDR like 10.0.0.5/32 (no host bits set), got "10.0.0"',
      'isolation.audit: expected off, warn or enforce, got "strict"',
      'isolation.auditInterval: expected duration from 1m to 24h like 500ms, 3s, 2m, 1h30m, got "5s"',
    ]);
    expect(errorsOf(`${ok}isolation: { audit: enforce }\n`)).toEqual(['isolation.managerRanges: expected at least one CIDR (the manager\'s addresses) with isolation.audit: enforce, got []']);
  });

  it('reads classes.<name>.requestConcurrency: 1 by default, 1 to 100, errors name the field', () => {
    const head = 'shard: s\ngitlab: { url: "http://127.0.0.1:9" }\nproviders: { local: }\n';
    const cls = (extra: string) => `${head}classes: { a: { runnerToken: t, provider: local, pool: { idle: 1, max: 4 }${extra} } }\n`;
    expect(parseConfig(cls(''), { env: {} }).classes['a']!.requestConcurrency).toBe(1);
    expect(parseConfig(cls(', requestConcurrency: 8'), { env: {} }).classes['a']!.requestConcurrency).toBe(8);
    expect(parseConfig(cls(', requestConcurrency: "${N}"'), { env: { N: '4' } }).classes['a']!.requestConcurrency).toBe(4);
    for (const [v, got] of [['0', '0'], ['101', '101'], ['2.5', '2.5'], ['many', '"many"']] as const) {
      expect(errorsOf(cls(`, requestConcurrency: ${v}`))).toEqual([`classes.a.requestConcurrency: expected integer from 1 to 100, got ${got}`]);
    }
  });

  it('reads classes.<name>.executor, defaultImage and pullPolicy; docker only on Linux classes', () => {
    const head = 'shard: s\ngitlab: { url: "http://127.0.0.1:9" }\nproviders: { local: }\n';
    const cls = (extra: string) => `${head}classes: { a: { runnerToken: t, provider: local, pool: { idle: 1, max: 4 }${extra} } }\n`;
    const a = parseConfig(cls(', executor: docker, defaultImage: "alpine:3.20", pullPolicy: [if-not-present, always]'), { env: {} }).classes['a']!;
    expect([a.executor, a.defaultImage, a.pullPolicy]).toEqual(['docker', 'alpine:3.20', ['if-not-present', 'always']]);
    expect(parseConfig(cls(', pullPolicy: never'), { env: {} }).classes['a']!.pullPolicy).toEqual(['never']);
    expect(errorsOf(cls(', executor: podman'))).toEqual(['classes.a.executor: expected shell or docker, got "podman"']);
    expect(errorsOf(cls(', pullPolicy: [sometimes]'))).toEqual([expect.stringMatching(/^classes\.a\.pullPolicy(\[0\])?: expected /)]);
    expect(errorsOf(cls(', defaultImage: "--privileged"'))).toEqual(['classes.a.defaultImage: expected image reference like alpine:3.20, got "--privileged"']);
    expect(errorsOf(cls(', executor: docker, machine: { os: windows }'))).toEqual([
      'classes.a.executor: expected "shell" (the docker executor runs on Linux classes; this class runs windows), got "docker"',
    ]);
  });

  it('reads cache: gcs needs a key file, s3 keys come in pairs, errors name the field', () => {
    const head = 'shard: s\ngitlab: { url: "http://127.0.0.1:9" }\nproviders: { local: }\nclasses: { a: { runnerToken: t, provider: local, pool: { idle: 1, max: 4 } } }\n';
    expect(parseConfig(head, { env: {} }).cache).toBeNull();
    const gcs = parseConfig(`${head}cache: { type: gcs, bucket: rf-cache, prefix: /shard-a/, credentialsFile: sa.json }\n`, { env: {}, baseDir: '/etc/rf' }).cache!;
    expect([gcs.type, gcs.bucket, gcs.prefix, gcs.credentialsFile, gcs.urlSlackMs]).toEqual(['gcs', 'rf-cache', 'shard-a', '/etc/rf/sa.json', 3_600_000]);
    const s3 = parseConfig(`${head}cache: { type: s3, bucket: rf-cache, region: eu-west-1, accessKeyId: AK, secretAccessKey: SK, endpoint: "http://127.0.0.1:9000", forcePathStyle: true }\n`, { env: {} }).cache!;
    expect([s3.region, s3.endpoint, s3.forcePathStyle]).toEqual(['eu-west-1', 'http://127.0.0.1:9000', true]);
    expect(errorsOf(`${head}cache: { type: azure, bucket: b0b }\n`)).toEqual(['cache.type: expected gcs or s3, got "azure"']);
    expect(errorsOf(`${head}cache: { type: gcs, bucket: rf-cache }\n`)).toEqual(['cache.credentialsFile: expected the path of a service account key file (gcs signs the cache URLs with it), got nothing']);
    expect(errorsOf(`${head}cache: { type: s3, bucket: rf-cache, accessKeyId: AK }\n`)).toEqual([expect.stringMatching(/^cache\.secretAccessKey: expected accessKeyId and secretAccessKey together/)]);
    expect(errorsOf(`${head}cache: { type: s3, bucket: "Bad_Bucket" }\n`)).toEqual([expect.stringMatching(/^cache\.bucket: expected bucket name/)]);
  });

  it('names line and column of a YAML syntax error', () => {
    expect(errorsOf({ file: 'invalid-yaml.yaml' })).toEqual(['yaml: line 4, column 1: All mapping items must start at the same column']);
    expect(errorsOf('shard: a\nshard: b\n')).toEqual(['yaml: line 2, column 1: Map keys must be unique']);
  });

  it('rejects a document that is not a mapping', () => {
    expect(errorsOf('')).toEqual(['(root): expected mapping, got null']);
    expect(errorsOf('- a\n- b')).toEqual(['(root): expected mapping, got ["a","b"]']);
  });

  it('masks passwords in database URLs it echoes back', () => {
    expect(errorsOf(`${MINIMAL}database: { url: "mysql://rf:hunter2@db/rf" }`)).toEqual([
      'database.url: expected postgres://..., pglite:memory or pglite:<path>, got "mysql://***@db/…"',
    ]);
  });

  it('refuses credentials in the GitLab and webhook URLs, and a query in the GitLab URL, without echoing them', () => {
    const hook = (url: string) => `${MINIMAL}billing: { webhooks: [{ url: "${url}", secret: "0123456789abcdef" }] }\n`;
    const errors = [
      ...errorsOf(MINIMAL.replace('http://127.0.0.1:9000', 'https://ci:PASSWORD1@gitlab.example.com')),
      ...errorsOf(MINIMAL.replace('http://127.0.0.1:9000', 'https://gitlab.example.com/?private_token=QUERYTOKEN')),
      ...errorsOf(hook('https://TOKENUSER@hooks.example.com/billing?sig=QUERYTOKEN')),
    ];
    expect(errors).toEqual([
      'gitlab.url: expected http(s) URL without user:password@ (credentials do not belong in a URL), got "https://***@gitlab.example.com"',
      'gitlab.url: expected http(s) URL without a query string or fragment, got "https://gitlab.example.com/…"',
      'billing.webhooks[0].url: expected http(s) URL without user:password@ (credentials do not belong in a URL), got "https://***@hooks.example.com/…"',
    ]);
    // A webhook may carry a token in its query string (many receivers want one); it is scrubbed wherever it is reported.
    expect(parseConfig(hook('https://hooks.example.com/billing?sig=QUERYTOKEN'), { env: {} }).billing.webhooks[0]!.url).toBe('https://hooks.example.com/billing?sig=QUERYTOKEN');
  });

  it('refuses __proto__, constructor and prototype keys at any depth, naming the path and line', () => {
    // yaml keeps `__proto__` as an own key; copied with obj[k] = v it set http's prototype, so
    // http.adminToken read the attacker's value.
    expect(errorsOf(`${MINIMAL}http:\n  __proto__:\n    adminToken: hello-admin\n`)).toEqual([
      'http.__proto__: key not allowed anywhere (__proto__, constructor, prototype) (yaml line 8, column 3)',
    ]);
    expect(errorsOf(MINIMAL.replace('providers: { local: {} }', 'providers: { local: { constructor: { prototype: 1 } } }'))).toEqual([
      'providers.local.constructor: key not allowed anywhere (__proto__, constructor, prototype) (yaml line 6, column 23)',
    ]);
    expect(errorsOf(MINIMAL.replace('small: {', 'prototype: {'))).toEqual([expect.stringMatching(/^classes\.prototype: key not allowed anywhere/)]);
  });

  it('refuses alias bombs, self-containing aliases, unknown tags and deep nesting as YAML errors with a line', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]', ...'bcdef'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdef'[i]}`).join(',')}]`)].join('\n');
    expect(errorsOf(bomb)).toEqual(['yaml: line 2, column 8: aliases expand to too many nodes (more than 100 per alias); write the values out instead']);
    expect(errorsOf(`${MINIMAL}dataDir: &d [*d]\n`)).toEqual(['yaml: line 7, column 14: alias *d refers to a value that contains it']);
    expect(errorsOf(`${MINIMAL}dataDir: *nowhere\n`)).toEqual(['yaml: line 7, column 10: alias *nowhere has no anchor &nowhere before it']);
    expect(errorsOf(`${MINIMAL}dataDir: !!binary aGVsbG8=\n`)).toEqual(['yaml: line 7, column 10: Unresolved tag: tag:yaml.org,2002:binary']);
    expect(errorsOf(`${MINIMAL}dataDir: ${'['.repeat(40)}${']'.repeat(40)}\n`)).toEqual([expect.stringMatching(/^dataDir(\[0\])+: expected at most 32 levels of nesting \(yaml line 7, column \d+\)$/)]);
    // Aliases within bounds are fine.
    expect(parseConfig(`${MINIMAL}dataDir: &d ./d\nsecrets: { key: null }\n`, { env: {} }).dataDir).toMatch(/\/d$/);
  });

  it('refuses a file that is not UTF-8 or is too big, naming the line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rf-config-'));
    const bad = join(dir, 'latin1.yaml');
    writeFileSync(bad, Buffer.concat([Buffer.from(MINIMAL), Buffer.from('dataDir: "caf'), Buffer.from([0xe9]), Buffer.from('"\n')]));
    expect(checkConfigFile(bad)).toEqual({ ok: false, errors: ['yaml: line 7: invalid UTF-8 (the file must be UTF-8 text)'] });
    const big = join(dir, 'big.yaml');
    writeFileSync(big, `${MINIMAL}# ${'x'.repeat(1024 * 1024)}\n`);
    expect(checkConfigFile(big)).toEqual({ ok: false, errors: [expect.stringMatching(/^yaml: the file is \d+ bytes; a shard config is at most 1048576 bytes$/)] });
    rmSync(dir, { recursive: true });
  });

  it('throws ConfigError with all errors from parseConfig and loadConfigFile', () => {
    expect(() => parseConfig('shard: 1', { env: {} })).toThrow(ConfigError);
    try {
      loadConfigFile(fixture('invalid-values.yaml'), { env: {} });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).errors).toHaveLength(13);
      expect((err as ConfigError).message).toContain('classes.small.pool.idle: expected integer >= 0, got "two"');
    }
  });

  it('reports an unreadable file as an error, not a throw', () => {
    const res = checkConfigFile(fixture('missing.yaml'));
    expect(res.ok).toBe(false);
    if (!res.ok) expect(res.errors[0]).toMatch(/missing\.yaml: cannot read: ENOENT/);
  });

  it('lets each provider check its config and machine profiles at load time', () => {
    const gcp = (machine: string, project = 'my-project-1') => `
shard: s1
gitlab: { url: "http://127.0.0.1:9000" }
classes:
  arm: { runnerToken: tok, provider: gcp, pool: { idle: 0, max: 2 }, machine: ${machine} }
providers: { gcp: { project: "${project}" } }
`;
    const armOnX86 = '{ machineType: t2a-standard-2, image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64, imageArch: x86_64, zones: [us-central1-a] }';
    expect(errorsOf(gcp(armOnX86)).join('\n')).toMatch(/^classes\.arm\.machine\.image(Arch)?: .*arm64/m);
    expect(errorsOf(gcp('{ machineType: n2d-standard-2 }'))).toEqual(
      expect.arrayContaining([expect.stringMatching(/^classes\.arm\.machine\.image: expected/), expect.stringMatching(/^classes\.arm\.machine\.zones: expected/)]),
    );
    expect(errorsOf(gcp('{ machineType: n2d-standard-2, image: projects/debian-cloud/global/images/family/debian-12, zones: [us-central1-a] }', 'X'))).toEqual([
      expect.stringMatching(/^providers\.gcp\.project: expected a project id/),
    ]);
    expect(errorsOf(MINIMAL.replace('provider: local', 'provider: openstack').replace('local: {}', 'openstack: {}'))).toEqual([
      expect.stringMatching(/^classes\.small\.provider: expected one of the providers runner-fleet knows \(.*gcp.*local.*\), got "openstack"/),
    ]);
  });

  it('accepts every example shard config in deploy/examples', () => {
    const dir = resolve(import.meta.dirname, '../../deploy/examples');
    for (const f of readdirSync(dir).filter((n) => n.endsWith('.yaml'))) {
      const text = readFileSync(join(dir, f), 'utf8');
      const env: Record<string, string> = Object.fromEntries([...text.matchAll(/\$\{([A-Z0-9_]+)/g)].map((m) => [m[1]!, `value-of-${m[1]}`]));
      Object.assign(env, { GCP_PROJECT: 'my-project-1', DATABASE_URL: 'postgres://u@127.0.0.1:5432/x', GITLAB_URL: 'https://gitlab.example.com' });
      const res = checkConfigFile(join(dir, f), { env });
      expect(res.ok ? [] : res.errors, f).toEqual([]);
    }
  });

  it('takes secrets.keyFile as a path relative to the config file, and not together with secrets.key', () => {
    expect(parseConfig(`${MINIMAL}secrets: { keyFile: ./keys/shard.key }\n`, { env: {}, baseDir: '/srv/rf' }).secrets).toEqual({ key: null, keyFile: '/srv/rf/keys/shard.key' });
    expect(parseConfig(`${MINIMAL}secrets: { keyFile: /run/secrets/rf-key }\n`, { env: {}, baseDir: '/srv/rf' }).secrets.keyFile).toBe('/run/secrets/rf-key');
    expect(errorsOf(`${MINIMAL}secrets: { key: "a-key-of-sixteen-chars", keyFile: /run/secrets/rf-key }\n`)).toEqual(['secrets.keyFile: expected either secrets.key or secrets.keyFile, not both']);
    expect(errorsOf(`${MINIMAL}secrets: { keyFile: "" }\n`)).toEqual([expect.stringMatching(/^secrets\.keyFile: expected non-empty path of a file holding the key/)]);
  });
});
