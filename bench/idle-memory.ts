// Idle memory of a manager (issue: "idle RSS, 2 warm VMs: PGlite 985 / PostgreSQL 312 MiB").
// Runs the compiled CLI (what operators run: bin/runner-fleet.js, no tsx) in a child process:
//   start: `runner-fleet start` with one local class of 2 warm VMs; GitLab emulator in this process
//   demo:  `runner-fleet demo --jobs 0` as shipped (PGlite, its own emulator, 3 warm VMs)
// on PGlite and on PostgreSQL, waits until the warm VMs are ready, lets it settle, then reads
// VmRSS/VmHWM from /proc/<pid>/status and times a few idle scrapes of /metrics.
//   npm run bench:idle-memory -- [--settle 30] [--runs start-pglite,start-postgres,demo]
//     [--pg postgres://postgres@127.0.0.1:5432/postgres] [--root OTHER_CHECKOUT]
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { freePort } from './free-port.js';
import { parseStatus } from './scale-stats.js';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startGitLabEmulator } from '../src/emulators/gitlab/server.js';

const { values } = parseArgs({
  options: {
    settle: { type: 'string', default: '30' },
    runs: { type: 'string', default: 'start-pglite,start-postgres,demo' },
    pg: { type: 'string', default: process.env['BENCH_PG_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres' },
    // Another checkout's compiled tree (bin/ and dist/), to measure an older commit the same way.
    root: { type: 'string' },
  },
});
const settleMs = Number(values.settle) * 1000;
const root = resolve(values.root ?? resolve(import.meta.dirname, '..'));
const bin = join(root, 'bin/runner-fleet.js');
if (!existsSync(join(root, 'dist/main.js'))) throw new Error('dist/ is missing: run `npm run build` first (npm run bench:idle-memory does)');

interface Result { run: string; warmVms: number; rssMiB: number; hwmMiB: number; scrapeMs: { p50: number; max: number }; metricsBytes: number }

function status(pid: number): { rss: number; hwm: number } {
  const { rssKiB, hwmKiB } = parseStatus(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { rss: rssKiB / 1024, hwm: hwmKiB / 1024 };
}

async function get(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  return res.text();
}

async function readyVms(base: string): Promise<number> {
  const text = await get(`${base}/metrics`).catch(() => '');
  let n = 0;
  for (const m of text.matchAll(/^runner_fleet_vms\{[^}]*state="ready"[^}]*\} (\d+)/gm)) n += Number(m[1]);
  return n;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  child.kill('SIGTERM'); // drain: warm VMs are deleted
  const t = setTimeout(() => child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(t);
}

async function measure(run: string, args: string[], env: NodeJS.ProcessEnv, base: string, warm: number): Promise<Result> {
  const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  try {
    const end = Date.now() + 120_000;
    while ((await readyVms(base)) < warm) {
      if (child.exitCode !== null) throw new Error(`${run}: manager exited ${child.exitCode}: ${stderr}`);
      if (Date.now() > end) throw new Error(`${run}: ${warm} warm VMs not ready within 120 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    await new Promise((r) => setTimeout(r, settleMs));
    const { rss, hwm } = status(child.pid!);
    const times: number[] = [];
    let bytes = 0;
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      bytes = (await get(`${base}/metrics`)).length;
      times.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 50));
    }
    times.sort((a, b) => a - b);
    return { run, warmVms: await readyVms(base), rssMiB: Math.round(rss), hwmMiB: Math.round(hwm), scrapeMs: { p50: +times[10]!.toFixed(1), max: +times[19]!.toFixed(1) }, metricsBytes: bytes };
  } finally {
    await stop(child);
  }
}

async function startRun(db: 'pglite' | 'postgres'): Promise<Result> {
  const dir = mkdtempSync(join(tmpdir(), 'rf-idle-mem-'));
  const gitlab = await startGitLabEmulator({});
  let dbName: string | null = null;
  const admin = db === 'postgres' ? new pg.Client({ connectionString: values.pg, connectionTimeoutMillis: 5_000 }) : null;
  try {
    // PGlite: no database.url, the default (on disk in dataDir), as an operator's first start has.
    let url: string | null = null;
    if (admin) {
      await admin.connect();
      dbName = `idle_mem_${process.pid}`;
      await admin.query(`CREATE DATABASE ${dbName}`);
      const u = new URL(values.pg!);
      u.pathname = `/${dbName}`;
      url = u.toString();
    }
    const port = await freePort();
    const file = join(dir, 'shard.yaml');
    writeFileSync(file, `
shard: idle-mem
${url ? `database: { url: "${url}" }\n` : ''}http: { listen: "127.0.0.1:${port}", adminToken: "idle-admin" }
gitlab: { url: "${gitlab.url}", pollInterval: 1s }
classes:
  saas-linux-small-amd64:
    runnerToken: idle-token
    provider: local
    pool: { idle: 2, max: 2 }
providers:
  local: {}
dataDir: "${join(dir, 'data')}"
secrets: { key: "idle-memory-secret-key-0123456789abcdef" }
log: { level: warn }
`);
    return await measure(`start-${db}`, ['start', '--config', file], {}, `http://127.0.0.1:${port}`, 2);
  } finally {
    await gitlab.close();
    if (admin) {
      if (dbName) await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => {});
      await admin.end();
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

async function demoRun(): Promise<Result> {
  const port = await freePort();
  return measure('demo', ['demo', '--jobs', '0', '--listen', `127.0.0.1:${port}`], { LOG_LEVEL: 'warn' }, `http://127.0.0.1:${port}`, 3);
}

const results: Result[] = [];
for (const run of values.runs!.split(',')) {
  if (run === 'start-pglite') results.push(await startRun('pglite'));
  else if (run === 'start-postgres') results.push(await startRun('postgres'));
  else if (run === 'demo') results.push(await demoRun());
  else throw new Error(`--runs: unknown run "${run}" (known: start-pglite, start-postgres, demo)`);
  process.stderr.write(`${JSON.stringify(results.at(-1))}\n`);
}
console.table(results.map((r) => ({ run: r.run, 'warm VMs': r.warmVms, 'RSS MiB': r.rssMiB, 'peak RSS MiB': r.hwmMiB, 'scrape p50 ms': r.scrapeMs.p50, 'scrape max ms': r.scrapeMs.max })));
