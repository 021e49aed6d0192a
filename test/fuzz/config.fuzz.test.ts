// Seeded fuzzing of the shard config loader: bad configs made by mutating the valid examples
// (deploy/examples, test/fixtures/config and one seed with every section). Each must be refused by
// parseConfig and by checkConfigFile (what `runner-fleet config check` runs) with a ConfigError
// only, never a TypeError, RangeError or a stack, whose errors name the mutated field (or, for
// YAML syntax, a line), in bounded time. Same seed, same inputs: a failure names its case.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { formatPath } from '../../src/config/format.js';
import { checkConfigFile, parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/config/types.js';
import { rng } from '../../src/sim/random.js';

/** How many bad configs the suite generates (README "Tests" reports it). */
export const CONFIG_FUZZ_CASES = 500;
const SEED = 20261203;
/** Per input, parse and file check together (about 20 ms each on a 2-core CI machine). */
const MAX_MS_PER_CASE = 2000;

type Path = (string | number)[];
type Tree = Record<string, unknown>;
interface Case {
  kind: string;
  /** The YAML text, or raw bytes (invalid UTF-8). */
  input: string | Buffer;
  /** An error must start with this path (then `:`, `.` or `[`), or match this pattern. */
  names: string | RegExp;
  /** Strings that must not appear in any error (a URL's password, say). */
  secret?: string;
}

// ---- seeds -------------------------------------------------------------------------------------

const ROOT = resolve(import.meta.dirname, '../..');
const FULL = `
shard: full-1
database: { url: "postgres://rf@127.0.0.1:5432/rf" }
http: { listen: "127.0.0.1:8080", adminToken: "admin-token-123" }
gitlab: { url: "https://gitlab.example.com", pollInterval: 3s, requestTimeout: 30s }
jobs: { unreachableTimeout: 2m }
classes:
  small:
    runnerToken: tok-small
    provider: local
    costFactor: 1.5
    pool:
      idle: 1
      max: 8
      idleTime: 5m
      scaleFactor: 0.5
      scaleFactorLimit: 4
      standby: 0
      standbyMode: stop
      policy: static
      target: 10s
      bound: 0.05
      idleBudget: 6
      intake: auto
      periods:
        - { cron: "* 8-18 * * mon-fri", timezone: Europe/Berlin, idle: 3, idleTime: 10m }
    jobTimeout: 1h
    bootTimeout: 2m
    machine: { vcpus: 2 }
providers: { local: {} }
dataDir: ./data
secrets: { key: "a-secret-key-of-some-length" }
billing:
  token: billing-token-0123456789
  webhooks:
    - { url: "https://billing.example.com/hook?sig=abc", secret: "0123456789abcdef0123", batchSize: 100, deadLetterAfter: 24h }
isolation: { managerRanges: ["10.0.0.5/32"], audit: warn, auditInterval: 10m }
log: { level: info }
`;

function seeds(): { name: string; text: string }[] {
  const files = [
    ...readdirSync(join(ROOT, 'deploy/examples')).filter((f) => f.endsWith('.yaml')).map((f) => join(ROOT, 'deploy/examples', f)),
    ...['valid-shard.yaml', 'minimal-shard.yaml', 'env-shard.yaml'].map((f) => join(ROOT, 'test/fixtures/config', f)),
  ];
  return [...files.map((f) => ({ name: f.slice(ROOT.length + 1), text: readFileSync(f, 'utf8') })), { name: 'full', text: FULL }];
}

/** Every ${VAR} the seeds use, set, so a seed is valid as it stands. */
function envFor(texts: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const t of texts) for (const m of t.matchAll(/\$\{([A-Z0-9_]+)/g)) env[m[1]!] = `value-of-${m[1]}`;
  return { ...env, GCP_PROJECT: 'my-project-1', DATABASE_URL: 'postgres://u@127.0.0.1:5432/x', GITLAB_URL: 'https://gitlab.example.com', IDLE: '1' };
}

// ---- generator ---------------------------------------------------------------------------------

const HOSTILE = [
  '',
  ' ',
  '\u0000',
  'a\nb: c',
  '\u202e\u0041dmin',
  '\u001b[31mred\u001b[0m',
  '💥'.repeat(50),
  'x'.repeat(100_000),
  "'; DROP TABLE jobs; --",
  '$(rm -rf /)',
  '`id`',
  '../../../../etc/passwd',
  '${UNSET_FUZZ_VARIABLE}',
  '$${',
  '%s%s%s%n',
  '<script>alert(1)</script>',
  '\ud800',
  'NaN',
  '-0.0.0',
  '1e400 x',
];
const FORBIDDEN = ['__proto__', 'constructor', 'prototype'];

/** Fields with a format (so any hostile string is wrong), by path pattern; '*' is any key. */
const FORMATTED: Path[] = [
  ['shard'], ['http', 'listen'], ['gitlab', 'url'], ['gitlab', 'pollInterval'], ['gitlab', 'requestTimeout'], ['database', 'url'],
  ['jobs', 'unreachableTimeout'], ['classes', '*', 'provider'], ['classes', '*', 'jobTimeout'], ['classes', '*', 'bootTimeout'],
  ['classes', '*', 'pool', 'idleTime'], ['classes', '*', 'pool', 'standbyMode'], ['classes', '*', 'pool', 'policy'], ['classes', '*', 'pool', 'intake'],
  ['classes', '*', 'pool', 'target'], ['classes', '*', 'pool', 'periods', '*', 'cron'], ['classes', '*', 'pool', 'periods', '*', 'timezone'],
  ['billing', 'webhooks', '*', 'url'], ['billing', 'webhooks', '*', 'deadLetterAfter'], ['isolation', 'managerRanges', '*'], ['isolation', 'audit'],
  ['isolation', 'auditInterval'], ['log', 'level'],
];
const NUMERIC: { path: Path; bad: unknown[] }[] = [
  { path: ['classes', '*', 'pool', 'idle'], bad: [-1, 1.5, 1e308, '.nan', -1e308] },
  { path: ['classes', '*', 'pool', 'max'], bad: [0, -5, 2.5, 1e308, 2 ** 53 + 2] },
  { path: ['classes', '*', 'costFactor'], bad: [0, -1, -1e-9, '.nan', '-.inf'] },
  { path: ['classes', '*', 'pool', 'scaleFactor'], bad: [-0.1, '-.inf', '.nan'] },
  { path: ['classes', '*', 'pool', 'bound'], bad: [0, 0.51, 1e308, -1] },
  { path: ['classes', '*', 'pool', 'standby'], bad: [-1, 0.5, 1e300] },
  { path: ['classes', '*', 'pool', 'idleBudget'], bad: [-3, 1.25] },
  { path: ['billing', 'webhooks', '*', 'batchSize'], bad: [0, 1001, 1e12, -1, 3.5] },
];
const DURATIONS: Path[] = FORMATTED.filter((p) => /Timeout|Interval|idleTime|target|deadLetterAfter/.test(String(p[p.length - 1])));
const BAD_DURATIONS = ['-5s', '-1h', '0.5.5s', '1h1h', '5 s', '1e3s', '99999999999h', '3s2m', '10', 'forever', '-0ms', '1y'];
/** Fields that must be present. */
const REQUIRED: Path[] = [['shard'], ['gitlab'], ['gitlab', 'url'], ['classes', '*', 'runnerToken'], ['classes', '*', 'provider'], ['classes', '*', 'pool'], ['classes', '*', 'pool', 'idle'], ['classes', '*', 'pool', 'max'], ['billing', 'webhooks', '*', 'url'], ['billing', 'webhooks', '*', 'secret'], ['classes', '*', 'pool', 'periods', '*', 'cron']];
/** Mappings that refuse unknown keys. */
const STRICT: Path[] = [[], ['http'], ['gitlab'], ['database'], ['jobs'], ['secrets'], ['billing'], ['isolation'], ['log'], ['classes', '*'], ['classes', '*', 'pool'], ['billing', 'webhooks', '*'], ['classes', '*', 'pool', 'periods', '*']];
/** Values of the wrong type for any schema field (none is a list of lists or takes a bare true everywhere). */
const WRONG_TYPES: unknown[] = [[[1]], { fuzz: { nested: [true] } }, true];

function leaves(tree: unknown, path: Path = []): Path[] {
  if (Array.isArray(tree)) return [path, ...tree.flatMap((v, i) => leaves(v, [...path, i]))];
  if (tree !== null && typeof tree === 'object') return [path, ...Object.entries(tree).flatMap(([k, v]) => leaves(v, [...path, k]))];
  return [path];
}

const escapeRe = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const matches = (path: Path, pattern: Path) => path.length === pattern.length && pattern.every((p, i) => p === '*' || p === path[i]);

function get(tree: unknown, path: Path): unknown {
  return path.reduce<unknown>((node, k) => (node as Record<string | number, unknown>)?.[k], tree);
}

function set(tree: unknown, path: Path, value: unknown): void {
  const parent = get(tree, path.slice(0, -1)) as Record<string | number, unknown>;
  Object.defineProperty(parent, path[path.length - 1]!, { value, enumerable: true, configurable: true, writable: true });
}

function remove(tree: unknown, path: Path): void {
  const parent = get(tree, path.slice(0, -1)) as Record<string | number, unknown>;
  delete parent[path[path.length - 1]!];
}

/** YAML for a tree; `.nan`/`.inf` strings become the YAML special floats. */
const dump = (tree: unknown) => stringify(tree, { lineWidth: 0 }).replace(/'(-?\.(?:nan|inf))'/g, '$1');

function generate(count: number, seed: number): Case[] {
  const random = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const all = seeds();
  const trees = all.map((s) => ({ ...s, tree: parse(s.text) as Tree }));
  const fresh = () => {
    const s = pick(trees);
    return { ...s, tree: structuredClone(s.tree) };
  };
  const pathsIn = (tree: Tree, patterns: Path[]) => leaves(tree).filter((p) => patterns.some((pat) => matches(p, pat)));

  const kinds: Record<string, () => Case | null> = {
    wrongType: () => {
      const { tree } = fresh();
      const schemaPaths = leaves(tree).filter((p) => p.length > 0 && p[0] !== 'providers' && !p.includes('machine') && !(p[0] === 'classes' && p.length === 1));
      const path = pick(schemaPaths);
      set(tree, path, structuredClone(pick(WRONG_TYPES)));
      return { kind: 'wrongType', input: dump(tree), names: formatPath(path) };
    },
    // Provider settings and machine profiles are checked by each provider's own validator; a
    // nested value may be reported at its field (subnets, hosts) rather than its leaf.
    providerWrongType: () => {
      const { tree } = fresh();
      // The local provider takes any machine profile (a sandbox has no machine type).
      const checked = (p: Path) => p[0] === 'classes' && get(tree, [...p.slice(0, 2), 'provider']) !== 'local';
      const paths = leaves(tree).filter((p) => (p[0] === 'providers' && p.length >= 3) || (checked(p) && p.includes('machine') && p.length > p.indexOf('machine') + 1));
      if (paths.length === 0) return null;
      const path = pick(paths);
      set(tree, path, structuredClone(pick(WRONG_TYPES)));
      const field = path[0] === 'providers' ? 3 : path.indexOf('machine') + 2;
      const prefixes = Array.from({ length: path.length - field + 1 }, (_, k) => formatPath(path.slice(0, field + k)));
      return { kind: 'providerWrongType', input: dump(tree), names: new RegExp(`^(${prefixes.map(escapeRe).join('|')})[:.[ ]`) };
    },
    missingKey: () => {
      const { tree } = fresh();
      const paths = pathsIn(tree, REQUIRED);
      if (paths.length === 0) return null;
      const path = pick(paths);
      remove(tree, path);
      return { kind: 'missingKey', input: dump(tree), names: formatPath(path) };
    },
    extraKey: () => {
      const { tree } = fresh();
      const path = pick(pathsIn(tree, STRICT));
      const key = pick(['lisen', 'Shard', 'max ', 'ünïcode', 'x'.repeat(300), '1', 'null', '💥', 'toString', 'hasOwnProperty', 'valueOf']);
      (get(tree, path) as Tree)[key] = pick(HOSTILE.slice(0, 6));
      return { kind: 'extraKey', input: dump(tree), names: formatPath([...path, key]) };
    },
    forbiddenKey: () => {
      const { tree } = fresh();
      const mappings = leaves(tree).filter((p) => {
        const v = get(tree, p);
        return v !== null && typeof v === 'object' && !Array.isArray(v);
      });
      const path = pick(mappings);
      const key = pick(FORBIDDEN);
      set(tree, [...path, key], pick([{ adminToken: 'hijacked-admin-token' }, { polluted: true }, 'x', null]));
      return { kind: 'forbiddenKey', input: dump(tree), names: formatPath([...path, key]) };
    },
    hugeOrWrongNumber: () => {
      const { tree } = fresh();
      const options = NUMERIC.flatMap((n) => pathsIn(tree, [n.path]).map((p) => ({ p, bad: n.bad })));
      if (options.length === 0) return null;
      const { p, bad } = pick(options);
      set(tree, p, pick(bad));
      return { kind: 'hugeOrWrongNumber', input: dump(tree), names: formatPath(p) };
    },
    badDuration: () => {
      const { tree } = fresh();
      const paths = pathsIn(tree, DURATIONS);
      if (paths.length === 0) return null;
      const path = pick(paths);
      set(tree, path, pick(BAD_DURATIONS));
      return { kind: 'badDuration', input: dump(tree), names: formatPath(path) };
    },
    hostileString: () => {
      const { tree } = fresh();
      const path = pick(pathsIn(tree, FORMATTED));
      const s = pick(HOSTILE);
      set(tree, path, s);
      return { kind: 'hostileString', input: dump(tree), names: formatPath(path) };
    },
    urlCredentials: () => {
      const { tree } = fresh();
      const hooks = pathsIn(tree, [['billing', 'webhooks', '*', 'url']]);
      const path = hooks.length > 0 && random() < 0.5 ? pick(hooks) : (['gitlab', 'url'] as Path);
      const password = `pw-${Math.floor(random() * 1e9)}-SECRET`;
      set(tree, path, `https://${pick(['ci', 'x-access-token', 'deploy%20bot'])}:${password}@${pick(['gitlab.example.com', '127.0.0.1:9000', '[::1]:8443'])}/${pick(['', 'hooks/T0/B1', 'api'])}?token=${password}`);
      return { kind: 'urlCredentials', input: dump(tree), names: formatPath(path), secret: password };
    },
    aliasBomb: () => {
      const { text } = fresh();
      const width = 9 + Math.floor(random() * 6);
      const depth = 4 + Math.floor(random() * 4);
      const lines = [`fuzzA0: &a0 [${Array(width).fill('"lol"').join(', ')}]`];
      for (let i = 1; i <= depth; i++) lines.push(`fuzzA${i}: &a${i} [${Array(width).fill(`*a${i - 1}`).join(', ')}]`);
      return { kind: 'aliasBomb', input: `${text}\n${lines.join('\n')}\n`, names: /^yaml: line \d+/ };
    },
    selfAlias: () => {
      const { text } = fresh();
      return { kind: 'selfAlias', input: `${text}\nfuzz: &loop { inner: [*loop] }\n`, names: /^yaml: line \d+, column \d+: alias \*loop refers to a value that contains it$/ };
    },
    truncated: () => {
      const { tree } = fresh();
      // Flow style: cut inside a { or [ or a quoted string, so the text cannot be complete YAML.
      const text = stringify(tree, { collectionStyle: 'flow', defaultStringType: 'QUOTE_DOUBLE', lineWidth: 60 });
      const opens = [...text.matchAll(/[{["]/g)].map((m) => m.index!).filter((i) => i < text.length - 2);
      const at = pick(opens) + 1 + Math.floor(random() * 3);
      return { kind: 'truncated', input: text.slice(0, at), names: /^yaml: line \d+/ };
    },
    syntax: () => {
      const { text } = fresh();
      const bad = pick([
        'shard: again-1\n', // duplicate key (every seed has shard)
        'fuzz: !!binary aGVsbG8=\n',
        'fuzz: !custom tag\n',
        '\tfuzz: tab\n',
        'fuzz: [1, 2\n',
        'fuzz: "unclosed\n',
        '---\nshard: second-document\n',
        'fuzz: *undefined_anchor\n',
        '? [complex, key]\n: value\n',
        `fuzz: ${'['.repeat(200)}${']'.repeat(200)}\n`,
        '%YAML 9.9\n---\nshard: x\n',
      ]);
      return { kind: 'syntax', input: `${text}\n${bad}`, names: /^(yaml: (line \d+|the file)|fuzz(\[0\])+: expected at most)/ };
    },
    notAMapping: () => {
      const input = pick(['', '~', '42', '"just a string"', '- a\n- b\n', '[[[]]]', 'true', `${'x'.repeat(2000)}`, '{}']);
      return { kind: 'notAMapping', input, names: /^(\(root\)|shard|gitlab|classes): expected/ };
    },
    invalidUtf8: () => {
      const { text } = fresh();
      const bytes = Buffer.from(text);
      const at = Math.floor(random() * bytes.length);
      const bad = pick([[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80, 0x80], [0x80]]);
      const line = text.slice(0, Buffer.from(text).subarray(0, at).toString('utf8').length).split('\n').length;
      return { kind: 'invalidUtf8', input: Buffer.concat([bytes.subarray(0, at), Buffer.from(bad), bytes.subarray(at)]), names: new RegExp(`^yaml: line (${line}|${line + 1}): invalid UTF-8`) };
    },
    oversized: () => {
      const { text } = fresh();
      return { kind: 'oversized', input: `${text}\n# ${'z'.repeat(1024 * 1024)}\n`, names: /^yaml: the file is \d+ bytes; a shard config is at most/ };
    },
  };

  const order = Object.keys(kinds);
  const cases: Case[] = [];
  let tries = 0;
  while (cases.length < count && tries++ < count * 10) {
    const kind = order[cases.length % order.length]!;
    const c = kinds[kind]!();
    if (c) cases.push(c);
  }
  return cases;
}

// ---- the suite -----------------------------------------------------------------------------------

const allSeeds = seeds();
const ENV = envFor(allSeeds.map((s) => s.text));
const cases = generate(CONFIG_FUZZ_CASES, SEED);
const dir = mkdtempSync(join(tmpdir(), 'rf-config-fuzz-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The errors of one input through parseConfig (text) and checkConfigFile (bytes on disk). */
function errorsOf(c: Case, i: number): { viaParse: string[] | null; viaFile: string[] | null; thrown: unknown[] } {
  const thrown: unknown[] = [];
  let viaParse: string[] | null = null;
  if (typeof c.input === 'string') {
    try {
      parseConfig(c.input, { env: ENV, baseDir: dir });
    } catch (err) {
      if (err instanceof ConfigError) viaParse = err.errors;
      else thrown.push(err);
    }
  }
  const file = join(dir, `case-${i}.yaml`);
  writeFileSync(file, c.input);
  let viaFile: string[] | null = null;
  try {
    const res = checkConfigFile(file, { env: ENV });
    viaFile = res.ok ? null : res.errors;
  } catch (err) {
    thrown.push(err);
  }
  return { viaParse, viaFile, thrown };
}

describe('config fuzz', () => {
  it('the seeds are valid as they stand', () => {
    for (const s of allSeeds) expect(() => parseConfig(s.text, { env: ENV, baseDir: dir }), s.name).not.toThrow();
  });

  it(`${CONFIG_FUZZ_CASES} generated bad configs: each refused with a ConfigError naming the field or line, no crash, in bounded time`, () => {
    expect(cases).toHaveLength(CONFIG_FUZZ_CASES);
    const failures: string[] = [];
    cases.forEach((c, i) => {
      const t0 = performance.now();
      const { viaParse, viaFile, thrown } = errorsOf(c, i);
      const ms = performance.now() - t0;
      const label = `case ${i} (${c.kind}, seed ${SEED})`;
      const preview = typeof c.input === 'string' ? c.input.slice(0, 300) : `<${c.input.length} bytes>`;
      for (const err of thrown) failures.push(`${label}: threw ${(err as Error)?.name}: ${(err as Error)?.message?.slice(0, 200)}\n${preview}`);
      if (ms > MAX_MS_PER_CASE) failures.push(`${label}: took ${Math.round(ms)} ms`);
      const lists = typeof c.input === 'string' ? [viaParse, viaFile] : [viaFile];
      for (const errors of lists) {
        if (errors === null) {
          if (thrown.length === 0) failures.push(`${label}: accepted, expected an error naming ${String(c.names)}\n${preview}`);
          continue;
        }
        const named = errors.some((e) => (typeof c.names === 'string' ? e.startsWith(`${c.names}:`) || e.startsWith(`${c.names}.`) || e.startsWith(`${c.names}[`) : c.names.test(e)));
        if (!named) failures.push(`${label}: no error names ${String(c.names)}: ${JSON.stringify(errors).slice(0, 400)}`);
        for (const e of errors) {
          // A clear line: short, printable, no stack frames, no secret echoed.
          if (e.length > 1000 || /[\u0000-\u0008\u000b-\u001f]/.test(e) || /\n\s+at /.test(e)) failures.push(`${label}: unclear error ${JSON.stringify(e.slice(0, 200))}`);
          if (c.secret && e.includes(c.secret)) failures.push(`${label}: error echoes the secret: ${e}`);
        }
      }
    });
    expect(failures.slice(0, 20).join('\n\n')).toBe('');
  });

  it('covers every kind of bad input', () => {
    const byKind = new Map<string, number>();
    for (const c of cases) byKind.set(c.kind, (byKind.get(c.kind) ?? 0) + 1);
    expect([...byKind.keys()].sort()).toEqual(
      ['aliasBomb', 'badDuration', 'extraKey', 'forbiddenKey', 'hostileString', 'hugeOrWrongNumber', 'invalidUtf8', 'missingKey', 'notAMapping', 'oversized', 'providerWrongType', 'selfAlias', 'syntax', 'truncated', 'urlCredentials', 'wrongType'].sort(),
    );
    for (const [kind, n] of byKind) expect(n, kind).toBeGreaterThanOrEqual(30);
  });

  it('generates the same inputs from the same seed', () => {
    const again = generate(50, SEED).map((c) => c.input.toString());
    expect(again).toEqual(cases.slice(0, 50).map((c) => c.input.toString()));
  });
});
