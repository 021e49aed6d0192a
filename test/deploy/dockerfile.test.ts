// deploy/Dockerfile, checked without an image registry (none is reachable here): its stages and
// what the runtime stage holds, read statically; then the runtime stage's files reproduced in a
// temporary directory (production node_modules from the npm cache, offline) to show they run.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const root = resolve(import.meta.dirname, '../..');
const dockerfile = readFileSync(join(root, 'deploy/Dockerfile'), 'utf8');

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  from: string;
  name: string | null;
  steps: Instruction[];
}

/** Stages of a Dockerfile: continuation lines joined, comments dropped. */
function stages(text: string): Stage[] {
  const lines = text.replace(/\\\r?\n/g, ' ').split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const out: Stage[] = [];
  for (const line of lines) {
    const [, op = '', args = ''] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    if (op.toUpperCase() === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?/i.exec(args);
      out.push({ from: m?.[1] ?? '', name: m?.[2] ?? null, steps: [] });
    } else {
      out.at(-1)?.steps.push({ op: op.toUpperCase(), args });
    }
  }
  return out;
}

/** COPY sources of a step (without flags), and the stage it copies from. */
function copySources(step: Instruction): { from: string | null; sources: string[] } {
  const words = step.args.split(/\s+/);
  const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length) ?? null;
  const paths = words.filter((w) => !w.startsWith('--'));
  return { from, sources: paths.slice(0, -1).map((s) => s.replace(/^\.\//, '').replace(/\/$/, '')) };
}

const FORBIDDEN = ['test', 'bench', 'emulators', 'docs', '.git', '.', '*'];
const RUNTIME_FILES = ['node_modules', 'dist', 'package.json', 'bin', 'sql'];

/** What the image rules need, as a list of problems (empty when all hold). */
function problems(text: string): string[] {
  const p: string[] = [];
  const need = (ok: unknown, what: string) => {
    if (!ok) p.push(what);
  };
  const all = stages(text);
  need(all.length >= 2, `multi-stage: expected a build stage and a runtime stage, got ${all.length} stage(s)`);
  const runtime = all.at(-1);
  if (!runtime) return p;
  const byName = new Map(all.filter((s) => s.name).map((s) => [s.name!, s]));
  need(/^node:20[.\w-]*-slim$/.test(runtime.from) || /^node:20[.\w-]*-alpine/.test(runtime.from), `runtime stage: a small Node 20 base image, got ${runtime.from}`);
  const runs = (s: Stage) => s.steps.filter((x) => x.op === 'RUN').map((x) => x.args);
  need(all.some((s) => s !== runtime && runs(s).some((r) => /npm run build|tsc\b/.test(r))), 'a build stage compiles TypeScript (npm run build)');
  need(all.some((s) => runs(s).some((r) => /npm ci\b.*--omit=dev/.test(r))), 'production dependencies installed with npm ci --omit=dev');

  for (const s of all) {
    for (const step of s.steps.filter((x) => x.op === 'COPY' || x.op === 'ADD')) {
      const { from, sources } = copySources(step);
      if (from) continue;
      for (const src of sources) need(!FORBIDDEN.some((f) => src === f || src.startsWith(`${f}/`)), `${s.name ?? 'runtime'} stage: must not copy ${src}`);
    }
  }
  // The runtime stage: exactly the production files, node_modules only from a --omit=dev stage.
  const copied = new Set<string>();
  for (const step of runtime.steps.filter((x) => x.op === 'COPY' || x.op === 'ADD')) {
    const { from, sources } = copySources(step);
    for (const src of sources) {
      const name = src.replace(/^\/app\//, '');
      copied.add(name);
      need(RUNTIME_FILES.includes(name), `runtime stage: copies ${src}, which is not a production file`);
      if (name === 'node_modules') {
        const origin = from ? byName.get(from) : undefined;
        need(origin && runs(origin).some((r) => /npm ci\b.*--omit=dev/.test(r)), 'runtime stage: node_modules must come from a stage that ran npm ci --omit=dev');
      }
    }
  }
  for (const f of RUNTIME_FILES) need(copied.has(f), `runtime stage: must copy ${f}`);
  const users = runtime.steps.filter((x) => x.op === 'USER').map((x) => x.args.split(':')[0]!.trim());
  need(users.length > 0 && !['root', '0'].includes(users.at(-1)!), `runtime stage: USER must be a non-root user, got ${users.at(-1) ?? 'none (root)'}`);
  const health = runtime.steps.find((x) => x.op === 'HEALTHCHECK');
  need(health?.args.includes('/healthz'), 'runtime stage: a HEALTHCHECK on /healthz');
  need(runtime.steps.some((x) => x.op === 'ENTRYPOINT' && x.args.includes('bin/runner-fleet.js')), 'runtime stage: ENTRYPOINT runs bin/runner-fleet.js');
  return p;
}

describe('deploy/Dockerfile', () => {
  it('is a small multi-stage image of production files, run as a non-root user', () => {
    expect(problems(dockerfile)).toEqual([]);
  });

  it('runs the command the Kubernetes Deployment gives it', () => {
    const runtime = stages(dockerfile).at(-1)!;
    const cmd = JSON.parse(runtime.steps.find((x) => x.op === 'CMD')!.args) as string[];
    const dep = parse(readFileSync(join(root, 'deploy/kubernetes/deployment.yaml'), 'utf8')) as { spec: { template: { spec: { containers: { args: string[] }[] } } } };
    expect(dep.spec.template.spec.containers[0]!.args).toEqual(cmd);
  });

  it.each([
    ['a single stage', (t: string) => t.replace(/FROM [^\n]* AS build[\s\S]*?(?=FROM node:20-bookworm-slim\nENV)/, ''), 'multi-stage'],
    ['running as root', (t: string) => t.replace('USER node', 'USER root'), 'USER must be a non-root user'],
    ['no USER at all', (t: string) => t.replace('USER node\n', ''), 'none (root)'],
    ['the tests copied in', (t: string) => t.replace('COPY sql ./sql', 'COPY sql ./sql\nCOPY test ./test'), 'must not copy test'],
    ['the emulators copied into the build', (t: string) => t.replace('COPY src ./src', 'COPY src ./src\nCOPY emulators ./emulators'), 'must not copy emulators'],
    ['the whole context copied', (t: string) => t.replace('COPY bin ./bin', 'COPY . .'), 'must not copy .'],
    ['dev dependencies in the image', (t: string) => t.replace('COPY --from=deps /app/node_modules', 'COPY --from=build /app/node_modules'), 'npm ci --omit=dev'],
    ['sources in the image', (t: string) => t.replace('COPY bin ./bin', 'COPY bin ./bin\nCOPY src ./src'), 'copies src'],
    ['no health check', (t: string) => t.replace(/HEALTHCHECK[^\n]*\\\n[^\n]*\n/, ''), 'HEALTHCHECK'],
  ])('a broken copy fails: %s', (_, mutate, text) => {
    const broken = mutate(dockerfile);
    expect(broken).not.toBe(dockerfile);
    expect(problems(broken).join('\n')).toContain(text);
  });

  it('.dockerignore keeps tests, benches, emulators and local state out of the build context', () => {
    const ignored = readFileSync(join(root, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    for (const p of ['.git', 'node_modules', 'dist', 'data', 'test', 'bench', 'emulators']) expect(ignored, p).toContain(p);
  });

  it('dist/ holds no test infrastructure (the GCE/EC2 emulators live in emulators/)', () => {
    expect(existsSync(join(root, 'dist/main.js')), 'dist/ is built by npm ci (prepare) or npm run build').toBe(true);
    const files = readdirSync(join(root, 'dist'), { recursive: true }).map(String);
    expect(files.filter((f) => /(^|\/)(gce|ec2)(\/|$)|\.test\.js$|(^|\/)bench\//.test(f))).toEqual([]);
  });
});

describe('the runtime stage files run on their own', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rf-image-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // Reproduces the deps stage (its own npm ci command, from the npm cache only: no network) and
  // the runtime stage's COPY list, then runs the CLI from that copy alone.
  it('production node_modules + dist + bin + sql + package.json: every module loads, the CLI runs', () => {
    const deps = stages(dockerfile).find((s) => s.steps.some((x) => x.op === 'RUN' && /npm ci\b.*--omit=dev/.test(x.args)))!;
    const install = deps.steps.find((x) => x.op === 'RUN' && /npm ci\b.*--omit=dev/.test(x.args))!.args.split('&&')[0]!.trim().split(/\s+/);
    for (const f of ['package.json', 'package-lock.json']) cpSync(join(root, f), join(dir, f));
    // Only the npm cache's location passes through: under `npm test`, npm_config_local_prefix
    // names the checkout, and npm ci would then replace its node_modules.
    const cache = process.env['npm_config_cache'] ? { npm_config_cache: process.env['npm_config_cache'] } : {};
    const env = { ...cache, PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? dir, npm_config_update_notifier: 'false' };
    const npm = spawnSync(install[0]!, [...install.slice(1), '--offline'], { cwd: dir, env, encoding: 'utf8', timeout: 240_000 });
    expect(npm.status, `${install.join(' ')} --offline (needs the npm cache of a previous npm ci):\n${npm.stderr}`).toBe(0);
    rmSync(join(dir, 'package-lock.json'));
    for (const f of ['dist', 'bin', 'sql']) cpSync(join(root, f), join(dir, f), { recursive: true });

    // Every compiled module imports with production dependencies only (entry points excluded:
    // main.js runs the CLI, the local sandbox is a process of its own).
    const probe = join(dir, 'import-all.mjs');
    writeFileSync(
      probe,
      `import { readdirSync } from 'node:fs';
const entry = new Set(['main.js', 'providers/local/sandbox.js']);
const failed = [];
for (const f of readdirSync('dist', { recursive: true }).map(String).filter((f) => f.endsWith('.js') && !entry.has(f))) {
  try { await import('./dist/' + f); } catch (err) { failed.push(f + ': ' + err.message); }
}
console.log(JSON.stringify(failed));`,
    );
    const imp = spawnSync(process.execPath, [probe], { cwd: dir, env, encoding: 'utf8', timeout: 60_000 });
    expect(imp.status, imp.stderr).toBe(0);
    expect(JSON.parse(imp.stdout.trim().split('\n').at(-1)!)).toEqual([]);

    const help = spawnSync(process.execPath, ['bin/runner-fleet.js', '--help'], { cwd: dir, env, encoding: 'utf8', timeout: 30_000 });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('runner-fleet start --config SHARD.yaml');

    // The ConfigMap's shard config checks clean with the image's files.
    const cm = parse(readFileSync(join(root, 'deploy/kubernetes/configmap.yaml'), 'utf8')) as { data: Record<string, string> };
    writeFileSync(join(dir, 'shard.yaml'), cm.data['shard.yaml']!);
    const vars = Object.fromEntries([...cm.data['shard.yaml']!.matchAll(/\$\{([A-Z0-9_]+)\}/g)].map(([, n]) => [n!, n === 'DATABASE_URL' ? 'postgres://rf@127.0.0.1:5432/rf' : `sample-${n}-0123456789abcdef`]));
    const check = spawnSync(process.execPath, ['bin/runner-fleet.js', 'config', 'check', '--config', 'shard.yaml'], { cwd: dir, env: { ...env, ...vars }, encoding: 'utf8', timeout: 30_000 });
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout).toContain('ok (shard gcp-us-central1-1');
  }, 300_000);
});
