// The issue's scale figures (one manager, many concurrent jobs, bursts onto warm VMs) measured on
// the project's own emulators with real SSH peers: the GCE emulator's VMs are the local provider's
// sandboxes (one SSH server process per VM on its own loopback address), jobs come from the GitLab
// emulator. The manager under test is a separate process from compiled JS; its RSS and CPU come
// from /proc/<pid>. Beside it, a bare ssh2 client in its own process does the same execs against
// the same kind of peers: the physical limit of this machine.
//   npm run bench:scale -- [--jobs 200] [--warm N] [--burst 200] [--run-s 60] [--request-concurrency 16] [--json] [--profile]
//   (--dist <dir>: an already compiled .bench-dist/ (tsconfig.bench.json) instead of building one; --db <postgres admin URL>)
// Phases: idle RSS with 2 warm VMs (PGlite in memory as the demo, PGlite on disk as the default,
// PostgreSQL); warm-up of W VMs on PostgreSQL; a burst of B jobs released at once; the rest
// released; all N running (a line every 5 s) while /metrics is scraped every 200 ms; the baseline.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { freePort } from './free-port.js';
import { setPriority, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startGitLabEmulator, type GitLabEmulator } from '../src/emulators/gitlab/server.js';
import { histogramBuckets, markdownTable, parseStatTicks, quantileBetween, parseStatus, summarize, topSelfTime, type FigureRow, type Summary } from './scale-stats.js';

type GceModule = typeof import('../emulators/gce/server.js');
type LocalModule = typeof import('../src/providers/local/provider.js');
type KeysModule = typeof import('../src/isolation/keys.js');

const { values } = parseArgs({
  options: {
    jobs: { type: 'string', default: '200' },
    warm: { type: 'string' },
    burst: { type: 'string' },
    'run-s': { type: 'string', default: '60' },
    'line-every-s': { type: 'string', default: '5' },
    'boot-ms': { type: 'string', default: '500' },
    'phase-timeout-s': { type: 'string', default: '300' },
    rps: { type: 'string', default: '20' },
    'trace-interval-s': { type: 'string', default: '3' },
    'request-concurrency': { type: 'string', default: '16' },
    db: { type: 'string' },
    dist: { type: 'string' },
    json: { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    'heap-snapshot': { type: 'boolean', default: false },
    /** Extra node/V8 flags for the manager under test, space-separated (e.g. "--max-semi-space-size=8"). */
    'node-flags': { type: 'string', default: '' },
    'skip-idle': { type: 'boolean', default: false },
    'skip-baseline': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    /** What the GCE emulator's VMs are: `sshd` (real OpenSSH, a few ms of CPU to boot) or `sandbox` (Node ssh2, ~0.25 s); default sshd when /usr/sbin/sshd exists. */
    peers: { type: 'string' },
    /** With --peers sshd and no /usr/sbin/sshd: apt-get install -y openssh-server first. */
    'install-sshd': { type: 'boolean', default: false },
  },
});

function intFlag(name: string, raw: string | undefined, min: number): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name}: expected an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}
const JOBS = intFlag('jobs', values.jobs, 1);
const WARM = intFlag('warm', values.warm ?? String(JOBS), JOBS);
const BURST = intFlag('burst', values.burst ?? String(Math.min(200, JOBS)), 1);
if (BURST > JOBS) throw new Error(`--burst: ${BURST} is more than --jobs ${JOBS}`);
const RUN_S = intFlag('run-s', values['run-s'], 5);
const LINE_S = intFlag('line-every-s', values['line-every-s'], 1);
const BOOT_MS = intFlag('boot-ms', values['boot-ms'], 0);
const RPS = intFlag('rps', values.rps, 1);
/** X-GitLab-Trace-Update-Interval the GitLab emulator asks for (GitLab's default is 3 s). */
const TRACE_S = intFlag('trace-interval-s', values['trace-interval-s'], 1);
/** classes.<name>.requestConcurrency of the manager under test. */
const REQ_CONC = intFlag('request-concurrency', values['request-concurrency'], 1);
/** How long the burst (and the release of the rest) may take before the bench measures what started. */
const PHASE_MS = intFlag('phase-timeout-s', values['phase-timeout-s'], 10) * 1000;
/**
 * The class's boot timeout: these peers boot on the bench's own 2 cores (~0.45 s of CPU each), so
 * 1,000 at once take minutes; 300 s failed every VM of a 1,000-VM warm-up as stuck mid-creation.
 */
const BOOT_TIMEOUT_S = Math.max(300, Math.ceil(WARM * 0.9));
const ADMIN_DB = values.db ?? process.env['DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
if (!/^postgres(ql)?:\/\//.test(ADMIN_DB)) throw new Error(`--db: expected a postgres:// URL, got ${JSON.stringify(ADMIN_DB)}`);

const root = resolve(import.meta.dirname, '..');
const work = mkdtempSync(join(tmpdir(), 'rf-scale-'));
const say = (s: string) => process.stderr.write(`[scale ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/**
 * The bench's own event-loop lag (it hosts the GitLab and GCE emulators): the latencies it
 * measures (pick-up, first trace) are stamped on this loop, so a late loop inflates them.
 */
const benchLag = (() => {
  const lags: number[] = [];
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    lags.push(Math.max(0, now - last - 50));
    last = now;
  }, 50).unref();
  return { snapshot: () => lags.length, since: (i: number) => summarize(lags.slice(i)) };
})();
const TICK_HZ = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
const MiB = (kib: number) => kib / 1024;
const FINAL = new Set(['success', 'failed', 'canceled']);

// ---- compiled code: the manager and the sandboxes run as in production, without tsx ----------
// src/ and the (test-only) emulators compiled together into .bench-dist/ of this checkout, so
// the compiled code resolves node_modules; the manager's modules are under src/ there.
const dist = values.dist ? resolve(values.dist) : join(root, '.bench-dist');
if (!values.dist) {
  say('compiling src/ and emulators/ to .bench-dist/ (tsconfig.bench.json)');
  execFileSync(join(root, 'node_modules/.bin/tsc'), ['-p', join(root, 'tsconfig.bench.json')], { stdio: 'inherit' });
  // The migrations and package.json are found two levels above src/db/ and src/api/, as from
  // dist/db/ and dist/api/ in production.
  for (const f of ['sql', 'package.json']) if (!existsSync(join(dist, f))) symlinkSync(join(root, f), join(dist, f));
}
const load = <T>(m: string): Promise<T> => import(pathToFileURL(join(dist, m)).href) as Promise<T>;
const { startGceEmulator } = await load<GceModule>('emulators/gce/server.js');
type SshdPeersModule = typeof import('../emulators/gce/sshd-peers.js');
const { SSHD, ensurePeerUser } = await load<SshdPeersModule>('emulators/gce/sshd-peers.js');

// The GCE emulator's VMs: 1,000 Node sandboxes (~0.25 s of CPU each to start) on the manager's
// 2 cores made the warm-up measure the peers (~130 s); real sshd peers boot in a few ms.
if (values.peers !== undefined && values.peers !== 'sshd' && values.peers !== 'sandbox') throw new Error(`--peers: expected sshd or sandbox, got ${JSON.stringify(values.peers)}`);
if (values.peers === 'sshd' && !existsSync(SSHD)) {
  if (!values['install-sshd']) throw new Error(`--peers sshd: ${SSHD} not found; install it (apt-get install -y openssh-server) or add --install-sshd`);
  say('installing openssh-server (--install-sshd)');
  execFileSync('apt-get', ['install', '-y', 'openssh-server'], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}
const PEERS: 'sshd' | 'sandbox' = (values.peers as 'sshd' | 'sandbox' | undefined) ?? (existsSync(SSHD) ? 'sshd' : 'sandbox');
if (PEERS === 'sshd') {
  ensurePeerUser('runner');
  // The jobs run as that user and look for the stop file in this directory: traversable, not listable.
  chmodSync(work, 0o711);
  // Interrupted: exit handlers kill the sshd peers (unlike sandboxes, they have no backstop of their own).
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));
}
say(PEERS === 'sshd'
  ? `VM peers: OpenSSH ${SSHD}, one per VM, user runner (--peers sandbox for Node sandboxes)`
  : `VM peers: Node sandboxes${values.peers ? '' : ` (no ${SSHD}: apt-get install -y openssh-server, or --peers sshd --install-sshd, for sshd peers)`}`);

async function adminQuery(text: string): Promise<void> {
  const c = new pg.Client({ connectionString: ADMIN_DB, connectionTimeoutMillis: 10_000 });
  await c.connect();
  try {
    await c.query(text);
  } finally {
    await c.end();
  }
}
async function freshPostgres(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `rf_scale_${randomBytes(5).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name}`);
  const url = new URL(ADMIN_DB);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

// ---- the manager process and its /proc figures ------------------------------------------------
interface ProcSample { t: number; rssKiB: number; hwmKiB: number; cpuMs: number }
interface Manager {
  proc: ChildProcess;
  port: number;
  exited: Promise<number | null>;
  sample(): ProcSample;
  metrics(): Promise<{ ms: number; text: string }>;
  stop(): Promise<void>;
}

function startManager(o: { name: string; dbUrl: string | undefined; gitlab: string; gce: string; gceDir: string; idle: number; max: number; port: number; profileDir?: string; snapshotDir?: string }): Manager {
  const dir = join(work, o.name);
  mkdirSync(dir, { recursive: true });
  const cfg = join(dir, 'config.yaml');
  writeFileSync(
    cfg,
    `shard: ${o.name}
${o.dbUrl ? `database: { url: "${o.dbUrl}" }\n` : ''}http: { listen: "127.0.0.1:${o.port}" }
gitlab: { url: "${o.gitlab}", pollInterval: 200ms, requestTimeout: 10s }
classes:
  linux-small:
    runnerToken: "${o.name}-token"
    provider: gcp
    requestConcurrency: ${REQ_CONC}
    pool: { idle: ${o.idle}, max: ${o.max} }
    bootTimeout: ${BOOT_TIMEOUT_S}s
    jobTimeout: 1h
    machine: { machineType: n2d-standard-2, image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64, zones: [us-central1-a, us-central1-b] }
providers:
  gcp: { project: scale-project, endpoint: "${o.gce}", requestsPerSecond: ${RPS}, callTimeout: 30s }
dataDir: "${join(dir, 'data')}"
secrets: { key: "scale-bench-secret-key-0123456789abcdef" }
log: { level: warn }
`,
  );
  const prof = o.profileDir ? ['--cpu-prof', '--cpu-prof-dir', o.profileDir, '--heap-prof', '--heap-prof-dir', o.profileDir] : [];
  // SIGUSR2 writes a heap snapshot of the steady state (the heap profile is written at exit).
  if (o.snapshotDir) prof.push('--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${o.snapshotDir}`);
  const out = createWriteStream(join(dir, 'manager.log'));
  const extra = values['node-flags'].split(/\s+/).filter(Boolean);
  const proc = spawn(process.execPath, [...extra, ...prof, join(root, 'bench/scale-manager.mjs'), dist, cfg, o.gceDir], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout!.pipe(out);
  proc.stderr!.pipe(out);
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  // A bench that dies must not leave a manager behind to skew the next run.
  const reap = () => proc.kill('SIGKILL');
  process.once('exit', reap);
  void exited.then(() => process.off('exit', reap));
  const sample = (): ProcSample => {
    const st = parseStatus(readFileSync(`/proc/${proc.pid}/status`, 'utf8'));
    const ticks = parseStatTicks(readFileSync(`/proc/${proc.pid}/stat`, 'utf8'));
    return { t: Date.now(), rssKiB: st.rssKiB, hwmKiB: st.hwmKiB, cpuMs: (ticks * 1000) / TICK_HZ };
  };
  const metrics = async () => {
    const t0 = performance.now();
    const res = await fetch(`http://127.0.0.1:${o.port}/metrics`, { signal: AbortSignal.timeout(10_000) });
    const text = await res.text();
    if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
    return { ms: performance.now() - t0, text };
  };
  const stop = async () => {
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 120_000);
    await exited;
    clearTimeout(t);
  };
  return { proc, port: o.port, exited, sample, metrics, stop };
}

/** Signals the manager to write a heap snapshot and waits until it answers again (it blocks while writing). */
async function heapSnapshot(m: Manager, dir: string): Promise<string | undefined> {
  m.proc.kill('SIGUSR2');
  const end = Date.now() + 300_000;
  while (Date.now() < end) {
    await sleep(1000);
    const file = readdirSync(dir).find((f) => f.endsWith('.heapsnapshot'));
    if (file && (await m.metrics().then(() => true, () => false))) {
      say(`heap snapshot of the steady state: ${join(dir, file)}`);
      return join(dir, file);
    }
  }
  say('no heap snapshot within 300 s');
  return undefined;
}

/** Sum of runner_fleet_vms over classes for one state. */
function vmsInState(text: string, state: string): number {
  let n = 0;
  for (const m of text.matchAll(/^runner_fleet_vms\{([^}]*)\} (\S+)$/gm)) if (m[1]!.includes(`state="${state}"`)) n += Number(m[2]);
  return n;
}

async function waitReady(m: Manager, n: number, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  let lastSay = t0;
  while (Date.now() - t0 < timeoutMs) {
    if (m.proc.exitCode !== null) throw new Error(`manager exited (${m.proc.exitCode}); log in ${work}`);
    let ready = 0;
    try {
      ready = vmsInState((await m.metrics()).text, 'ready');
      if (ready >= n) return Date.now() - t0;
    } catch {
      // not listening yet
    }
    if (n > 10 && Date.now() - lastSay >= 10_000) {
      // Where a slow warm-up waits: the cloud calls, the VMs' boots, or the manager's probes.
      lastSay = Date.now();
      const status: Record<string, number> = {};
      for (const i of gce.instances()) status[String(i['status'])] = (status[String(i['status'])] ?? 0) + 1;
      say(`  warm-up ${((lastSay - t0) / 1000).toFixed(0)} s: ${ready} ready; instances ${JSON.stringify(status)}; bulkInsert ${gce.calls.bulkInsert}, setMetadata ${gce.calls.setMetadata}`);
    }
    await sleep(250);
  }
  throw new Error(`${n} warm VMs not ready within ${timeoutMs / 1000} s (log in ${work})`);
}

/** Samples the manager's /proc figures every 200 ms. */
function sampler(m: Manager) {
  const samples: ProcSample[] = [];
  const timer = setInterval(() => {
    try {
      samples.push(m.sample());
    } catch {
      // exited
    }
  }, 200);
  return { samples, stop: () => clearInterval(timer), between: (a: number, b: number) => samples.filter((s) => s.t >= a && s.t <= b) };
}

// ---- phase 1: idle RSS with 2 warm VMs -------------------------------------------------------
const report: Record<string, unknown> = { params: { jobs: JOBS, warm: WARM, burst: BURST, runS: RUN_S, lineEveryS: LINE_S, bootMs: BOOT_MS, rps: RPS, traceIntervalS: TRACE_S, peers: PEERS, node: process.version } };
const gitlab: GitLabEmulator = await startGitLabEmulator({ traceUpdateIntervalS: TRACE_S });
const gceDir = join(work, 'gce');
const peersCgroup = makePeersCgroup();
const gce = await startGceEmulator({ dataDir: gceDir, bootDelayMs: BOOT_MS, bootTimeoutMs: (BOOT_TIMEOUT_S + 60) * 1000, operationRetentionMs: 60_000, sandboxNice: 19, vmPeers: PEERS,
  // 1,000 Node sandboxes starting together thrashed 2 cores; an sshd starts in a few ms.
  ...(PEERS === 'sandbox' ? { maxConcurrentBoots: 8 } : {}), ...(peersCgroup ? { sandboxCgroupProcs: peersCgroup } : {}) });
const cleanups: (() => Promise<void>)[] = [];

// The peers stand for other machines: on this one they share the manager's 2 cores, and 200
// sandboxes with their jobs' shells keep the run queue 30-60 deep, so a manager at the same
// priority gets a few percent of a core and measures the scheduler, not itself. Every sandbox
// (and what it spawns, which inherits it) runs at nice 19 from its spawn (a bench loop that
// reniced them later was itself starved by 400 booting sandboxes), the baseline's peers alike. Nice
// weighs only inside one autogroup, and every sandbox and job starts its own session (one
// autogroup each): a nice-0 busy loop got 6% of a core. So autogroup is off for the run.
const AUTOGROUP = '/proc/sys/kernel/sched_autogroup_enabled';
let autogroupWas: string | null = null;
try {
  autogroupWas = readFileSync(AUTOGROUP, 'utf8').trim();
  if (autogroupWas !== '0') {
    writeFileSync(AUTOGROUP, '0');
    process.once('exit', () => writeFileSync(AUTOGROUP, autogroupWas!));
    say('scheduler autogroup off for the run (restored at exit)');
  }
} catch (err) {
  if (autogroupWas === '1') say(`WARNING: cannot turn scheduler autogroup off (${(err as Error).message}): the peers' nice does not shield the manager`);
}

/**
 * The peers stand for other machines, so they also share one low-weight CPU cgroup: nice alone
 * fails at scale (CFS weighs each runnable task: 500 runnable nice-19 sandboxes and job shells,
 * weight 15 each, outweigh the nice-0 manager's 1024 about 7:1, and at 500 running jobs the
 * manager's event loop lagged 2.5 s at 23% CPU). As one group of weight 2 they get only what the
 * manager and the emulators leave. cgroup v1 `cpu.shares` or v2 `cpu.weight`; none: a warning.
 * Returns the group's cgroup.procs path.
 */
function makePeersCgroup(): string | undefined {
  const v1 = '/sys/fs/cgroup/cpu';
  const v2 = '/sys/fs/cgroup';
  const name = `rf-scale-peers-${process.pid}`;
  try {
    let dir: string;
    if (existsSync(join(v1, 'cpu.shares'))) {
      dir = join(v1, name);
      mkdirSync(dir);
      writeFileSync(join(dir, 'cpu.shares'), '2');
    } else if (readFileSync(join(v2, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('cpu')) {
      dir = join(v2, name);
      mkdirSync(dir);
      writeFileSync(join(dir, 'cpu.weight'), '1');
    } else {
      throw new Error('no cpu controller');
    }
    process.once('exit', () => {
      try {
        rmdirSync(dir);
      } catch {
        // Still holds a process (a peer the exit did not reap): the directory stays, harmless.
      }
    });
    say(`peers in CPU cgroup ${dir} (lowest weight)`);
    return join(dir, 'cgroup.procs');
  } catch (err) {
    say(`WARNING: no CPU cgroup for the peers (${(err as Error).message}): only their nice shields the manager`);
    return undefined;
  }
}

async function idleRss(kind: string, dbUrl: string | undefined): Promise<{ rssMiB: number; hwmMiB: number }> {
  const m = startManager({ name: `idle-${kind}`, dbUrl, gitlab: gitlab.url, gce: gce.url, gceDir, idle: 2, max: 2, port: await freePort() });
  try {
    await waitReady(m, 2, 120_000);
    await sleep(10_000); // settle: a few ticks, a few /jobs/request polls
    const s = m.sample();
    return { rssMiB: MiB(s.rssKiB), hwmMiB: MiB(s.hwmKiB) };
  } finally {
    await m.stop();
  }
}

try {
  if (!values['skip-idle']) {
    const idle: Record<string, { rssMiB: number; hwmMiB: number }> = {};
    idle['pglite:memory (demo)'] = await idleRss('pglite-memory', 'pglite:memory');
    idle['pglite on disk (default)'] = await idleRss('pglite-disk', undefined);
    const db = await freshPostgres();
    try {
      idle['postgresql'] = await idleRss('postgres', db.url);
    } finally {
      await db.drop();
    }
    report['idleRss'] = idle;
    say(`idle RSS with 2 warm VMs: ${Object.entries(idle).map(([k, v]) => `${k} ${v.rssMiB.toFixed(0)} MiB`).join(', ')}`);
  }

  // ---- phase 2: warm-up, burst, all running ---------------------------------------------------
  const db = await freshPostgres();
  cleanups.push(db.drop);
  const profileDir = values.profile ? join(work, 'profile') : undefined;
  const snapshotDir = values['heap-snapshot'] ? join(work, 'snapshot') : undefined;
  if (snapshotDir) mkdirSync(snapshotDir, { recursive: true });
  const m = startManager({ name: 'scale', dbUrl: db.url, gitlab: gitlab.url, gce: gce.url, gceDir, idle: WARM, max: WARM, port: await freePort(), ...(profileDir ? { profileDir } : {}), ...(snapshotDir ? { snapshotDir } : {}) });
  const samp = sampler(m);
  const warmMs = await waitReady(m, WARM, 30 * 60_000);
  say(`${WARM} warm VMs ready ${(warmMs / 1000).toFixed(1)} s after the manager started`);
  report['warmUp'] = { vms: WARM, readyS: warmMs / 1000 };
  await sleep(3000);

  const stopFile = join(work, 'stop-jobs');
  // Prints a line every LINE_S seconds until the bench touches stopFile (at most an hour).
  const script = [`echo "scale job $SCALE_JOB started"`, `for i in $(seq 1 ${Math.ceil(3600 / LINE_S)}); do [ -e "${stopFile}" ] && break; sleep ${LINE_S}; echo "scale job $SCALE_JOB line $i"; done`];
  const enqueue = (n: number) => gitlab.enqueue({ runnerToken: 'scale-token', git: false, variables: [{ key: 'SCALE_JOB', value: String(n), public: true }], script });
  const ids: number[] = [];

  const lagAtBurst = benchLag.snapshot();
  const cpu0 = m.sample().cpuMs;
  const released = Date.now();
  for (let i = 0; i < BURST; i++) ids.push(enqueue(i));
  const firstLines = async (which: number[], timeoutMs: number) => {
    const end = Date.now() + timeoutMs;
    // A job failed back before it printed anything never will.
    const waiting = (id: number) => gitlab.job(id).firstTraceAt === undefined && !FINAL.has(gitlab.job(id).state);
    while (Date.now() < end && which.some(waiting)) await sleep(50);
  };
  await firstLines(ids, PHASE_MS);
  const burstEnd = Math.max(...ids.map((id) => gitlab.job(id).firstTraceAt ?? Date.now()));
  const cpu1 = m.sample().cpuMs;
  const burstJobs = ids.map((id) => gitlab.job(id));
  const started = burstJobs.filter((j) => j.firstTraceAt !== undefined && j.pickedAt !== undefined);
  const pickupToFirst = summarize(started.map((j) => j.firstTraceAt! - j.pickedAt!));
  const handoutSpanS = (Math.max(...started.map((j) => j.pickedAt!)) - released) / 1000;
  const burst = {
    jobs: BURST,
    started: started.length,
    startsPerS: started.length / ((burstEnd - released) / 1000),
    handoutsPerS: started.length / Math.max(0.001, handoutSpanS),
    releaseToLastFirstLineS: (burstEnd - released) / 1000,
    pickupToFirstTraceMs: pickupToFirst,
    cpuMsPerStart: (cpu1 - cpu0) / Math.max(1, started.length),
    benchEventLoopLagMs: benchLag.since(lagAtBurst),
  };
  report['burst'] = burst;
  say(`burst of ${BURST}: ${burst.startsPerS.toFixed(1)} starts/s, pick-up -> first trace p50 ${pickupToFirst.p50} ms p99 ${pickupToFirst.p99} ms, ${burst.cpuMsPerStart.toFixed(1)} ms CPU per start (bench loop lag p99 ${burst.benchEventLoopLagMs.p99.toFixed(0)} ms)`);

  const rest: number[] = [];
  for (let i = BURST; i < JOBS; i++) rest.push(enqueue(i));
  ids.push(...rest);
  if (rest.length) await firstLines(rest, PHASE_MS);
  const running = ids.filter((id) => gitlab.job(id).state === 'running').length;
  say(`${running} of ${JOBS} jobs running; measuring for ${RUN_S} s`);
  const runFrom = Date.now();
  const lagAtRun = benchLag.snapshot();
  const LAG = 'runner_fleet_event_loop_lag_seconds';
  const managerLagBefore = histogramBuckets(await m.metrics().then((r) => r.text, () => ''), LAG);
  if (process.env['RF_ALLOC_PROFILE']) m.proc.kill('SIGWINCH');
  const scraped = await new Promise<{ ms: number[]; errors: string[]; bytes: number }>((res, rej) => {
    execFile(process.execPath, [join(root, 'bench/scale-scraper.mjs'), `http://127.0.0.1:${m.port}/metrics`, String(RUN_S), '200'], { encoding: 'utf8', timeout: (RUN_S + 60) * 1000 }, (err, out) => (err ? rej(err) : res(JSON.parse(out))));
  });
  if (process.env['RF_ALLOC_PROFILE']) m.proc.kill('SIGWINCH');
  const scrapes = scraped.ms;
  const scrapeErrors = scraped.errors;
  const runTo = Date.now();
  const runSamples = samp.between(runFrom, runTo);
  const steady = {
    jobsRunning: running,
    rssMiB: { mean: MiB(runSamples.reduce((a, s) => a + s.rssKiB, 0) / Math.max(1, runSamples.length)), max: MiB(Math.max(...runSamples.map((s) => s.rssKiB))), hwm: MiB(runSamples.at(-1)?.hwmKiB ?? NaN) },
    cpuPercent: runSamples.length > 1 ? ((runSamples.at(-1)!.cpuMs - runSamples[0]!.cpuMs) / (runSamples.at(-1)!.t - runSamples[0]!.t)) * 100 : NaN,
    metricsMs: summarize(scrapes),
    metricsErrors: scrapeErrors.length,
    metricsBytes: scraped.bytes,
    benchEventLoopLagMs: benchLag.since(lagAtRun),
    /** Bucket bounds (s) holding the p50 / p99 of the manager's own event-loop lag over the run. */
    managerEventLoopLagS: await m.metrics().then((r) => {
      const after = histogramBuckets(r.text, LAG);
      return { p50: quantileBetween(managerLagBefore, after, 0.5), p99: quantileBetween(managerLagBefore, after, 0.99) };
    }, () => ({ p50: NaN, p99: NaN })),
  };
  report['running'] = steady;
  say(`${running} running: RSS ${steady.rssMiB.mean.toFixed(0)} MiB (max ${steady.rssMiB.max.toFixed(0)}), /metrics p50 ${steady.metricsMs.p50.toFixed(1)} ms p99 ${steady.metricsMs.p99.toFixed(1)} ms (from its own process), its event-loop lag p50 <= ${steady.managerEventLoopLagS.p50} s p99 <= ${steady.managerEventLoopLagS.p99} s, CPU ${steady.cpuPercent.toFixed(0)}%`);

  // Trouble the figures would hide: lease step-downs, jobs failed back, errors in the log.
  const counters = await m.metrics().then((r) => r.text, () => m.metrics().then((r) => r.text, () => ''));
  const sumOf = (name: string) => [...counters.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))].reduce((a, x) => a + Number(x[1]), 0);
  // Where the RSS is: V8's heap (used of committed), buffers outside it, the rest native (malloc, code).
  const gauge = (name: string) => sumOf(`runner_fleet_${name}`) / 1048576;
  report['memory'] = {
    rssMiB: gauge('process_resident_memory_bytes'),
    heapUsedMiB: gauge('nodejs_heap_size_used_bytes'),
    heapTotalMiB: gauge('nodejs_heap_size_total_bytes'),
    externalMiB: gauge('nodejs_external_memory_bytes'),
    /** V8's spaces, committed / used (MiB): where heapTotal exceeds heapUsed. */
    spaces: Object.fromEntries(
      [...counters.matchAll(/^runner_fleet_nodejs_heap_space_size_total_bytes\{[^}]*space="([^"]+)"[^}]*\} (\S+)$/gm)].map((x) => {
        const used = new RegExp(`^runner_fleet_nodejs_heap_space_size_used_bytes\\{[^}]*space="${x[1]}"[^}]*\\} (\\S+)$`, 'm').exec(counters);
        return [x[1], `${(Number(x[2]) / 1048576).toFixed(0)}/${(Number(used?.[1] ?? NaN) / 1048576).toFixed(0)}`];
      }),
    ),
  };
  say(`memory with ${running} running: ${JSON.stringify(report['memory'])}`);
  report['trouble'] = {
    stepDowns: sumOf('runner_fleet_shard_step_downs_total'),
    takeovers: sumOf('runner_fleet_shard_takeovers_total'),
    jobsFailedBack: sumOf('runner_fleet_jobs_failed_back_total'),
    vmFailures: sumOf('runner_fleet_vm_failures_total'),
    logErrors: logProblems(join(work, 'scale', 'manager.log')),
  };
  if (snapshotDir) report['heapSnapshot'] = await heapSnapshot(m, snapshotDir);
  writeFileSync(stopFile, '');
  const end = Date.now() + 180_000;
  while (Date.now() < end && ids.some((id) => !FINAL.has(gitlab.job(id).state))) await sleep(500);
  const outcomes: Record<string, number> = {};
  for (const id of ids) outcomes[gitlab.job(id).state] = (outcomes[gitlab.job(id).state] ?? 0) + 1;
  report['outcomes'] = outcomes;
  say(`job outcomes: ${JSON.stringify(outcomes)}`);
  samp.stop();
  await m.stop();
  if (profileDir) report['profile'] = summarizeProfile(profileDir);

  // ---- phase 3: the bare ssh2 baseline --------------------------------------------------------
  if (!values['skip-baseline']) report['baseline'] = await baseline(BURST);
} finally {
  await gitlab.close();
  await gce.close();
  for (const c of cleanups) await c().catch(() => {});
}

/** Distinct warn/error messages of a pino log with their counts. */
function logProblems(path: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const r = JSON.parse(line) as { level: number; msg?: string };
      if (r.level >= 40) out[r.msg ?? '?'] = (out[r.msg ?? '?'] ?? 0) + 1;
    } catch {
      // a line cut by the kill
    }
  }
  return out;
}

function summarizeProfile(dir: string) {
  if (!existsSync(dir)) return undefined;
  const cpu = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  const heap = readdirSync(dir).find((f) => f.endsWith('.heapprofile'));
  const top = cpu ? topSelfTime(JSON.parse(readFileSync(join(dir, cpu), 'utf8')), 25) : [];
  return { dir, cpuProfile: cpu, heapProfile: heap, topSelf: top.map((t) => ({ ...t, selfMs: Math.round(t.selfMs), share: Number((t.share * 100).toFixed(1)) })) };
}

async function baseline(n: number) {
  const { LocalProvider } = await load<LocalModule>('src/providers/local/provider.js');
  const { generateVmKeyPair } = await load<KeysModule>('src/isolation/keys.js');
  const { pino } = await import('pino');
  const dir = join(work, 'baseline');
  mkdirSync(dir, { recursive: true });
  const local = new LocalProvider({ bootDelayMs: 0, dir: join(dir, 'vms'), nice: 19, ...(peersCgroup ? { cgroupProcs: peersCgroup } : {}) }, { shard: 'baseline', dataDir: dir, log: pino({ level: 'silent' }) } as never);
  const key = generateVmKeyPair('baseline');
  writeFileSync(join(dir, 'id'), key.privateKey, { mode: 0o600 });
  const names = Array.from({ length: n }, (_, i) => `bl-${i}`);
  for (const name of names) await local.create({ vmId: name, name, shard: 'baseline', className: 'baseline', labels: {}, publicKey: key.publicKey, machine: {}, maxRunSeconds: 3600 });
  const state = (name: string) => {
    try {
      return JSON.parse(readFileSync(join(dir, 'vms', name, 'state.json'), 'utf8')) as { host: string; port: number };
    } catch {
      return undefined;
    }
  };
  // Sandboxes boot in parallel: a node process each.
  const until = Date.now() + 300_000;
  while (Date.now() < until && names.some((nm) => !state(nm))) await sleep(200);
  const targets = names.map(state).filter((s): s is { host: string; port: number } => s !== undefined);
  writeFileSync(join(dir, 'plan.json'), JSON.stringify({ targets, username: 'runner', privateKeyPath: join(dir, 'id'), command: 'echo "baseline started"; sleep 2', holdMs: 1000 }));
  try {
    const out = execFileSync(process.execPath, [join(root, 'bench/scale-baseline.mjs'), join(dir, 'plan.json')], { encoding: 'utf8', timeout: 300_000 });
    type Phase = { wallMs: number; cpuMs: number; results: { ok: boolean; ms?: number; error?: string }[] };
    const r = JSON.parse(out) as Phase & { hwmKiB: number; connect: Phase };
    const phase = (p: Phase) => {
      const ok = p.results.filter((x) => x.ok);
      return { ok: ok.length, errors: [...new Set(p.results.filter((x) => !x.ok).map((x) => x.error))], perS: ok.length / (Math.max(...ok.map((x) => x.ms!)) / 1000), ms: summarize(ok.map((x) => x.ms!)), cpuMsEach: p.cpuMs / Math.max(1, ok.length) };
    };
    const ex = phase(r);
    const co = phase(r.connect);
    const b = { execs: n, execs_ok: ex.ok, execErrors: ex.errors, startsPerS: ex.perS, execToFirstLineMs: ex.ms, cpuMsPerExec: ex.cpuMsEach, connectsOk: co.ok, connectErrors: co.errors, connectsPerS: co.perS, connectMs: co.ms, cpuMsPerConnect: co.cpuMsEach, hwmMiB: MiB(r.hwmKiB) };
    say(`baseline: ${n} connects at once ${co.perS.toFixed(1)}/s (p99 ${co.ms.p99.toFixed(0)} ms, ${co.cpuMsEach.toFixed(1)} ms CPU each); then ${n} execs at once ${ex.perS.toFixed(1)}/s, exec -> first line p50 ${ex.ms.p50.toFixed(0)} ms p99 ${ex.ms.p99.toFixed(0)} ms, ${ex.cpuMsEach.toFixed(1)} ms CPU each; RSS ${b.hwmMiB.toFixed(0)} MiB`);
    return b;
  } finally {
    await local.delete(names.map((name) => ({ vmId: name, name, cloudId: name })));
  }
}

// ---- the table -------------------------------------------------------------------------------
const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : 'n/a');
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
const idle = report['idleRss'] as Record<string, { rssMiB: number }> | undefined;
const run = report['running'] as { jobsRunning: number; rssMiB: { mean: number; max: number }; metricsMs: Summary } | undefined;
const bu = report['burst'] as { startsPerS: number; pickupToFirstTraceMs: Summary; cpuMsPerStart: number } | undefined;
const bl = report['baseline'] as { startsPerS: number; execToFirstLineMs: Summary; cpuMsPerExec: number; connectsPerS: number; cpuMsPerConnect: number; hwmMiB: number } | undefined;
const wu = report['warmUp'] as { vms: number; readyS: number } | undefined;
const rows: FigureRow[] = [
  { figure: `RSS with ${run?.jobsRunning ?? JOBS} jobs running (a line every ${LINE_S} s)`, measured: run ? `${f0(run.rssMiB.mean)} MiB (peak ${f0(run.rssMiB.max)})` : 'n/a', goal: '<= 512 MiB (1,000 jobs)', ...(bl ? { baseline: `${f0(bl.hwmMiB)} MiB (${BURST} sessions)` } : {}) },
  { figure: '`GET /metrics` latency while they run, p50 / p99', measured: run ? `${f1(run.metricsMs.p50)} ms / ${f1(run.metricsMs.p99)} ms` : 'n/a', goal: 'p99 <= 100 ms' },
  { figure: `job starts per second, ${BURST} jobs released at once onto ${WARM} warm VMs`, measured: bu ? `${f1(bu.startsPerS)}/s` : 'n/a', goal: '>= 50/s', ...(bl ? { baseline: `${f1(bl.startsPerS)}/s on open connections (connects: ${f1(bl.connectsPerS)}/s)` } : {}) },
  { figure: 'pick-up -> first trace byte during that burst, p50 / p99', measured: bu ? `${f0(bu.pickupToFirstTraceMs.p50)} ms / ${f0(bu.pickupToFirstTraceMs.p99)} ms` : 'n/a', goal: 'p99 <= 250 ms', ...(bl ? { baseline: `exec -> first line ${f0(bl.execToFirstLineMs.p50)} / ${f0(bl.execToFirstLineMs.p99)} ms` } : {}) },
  { figure: 'manager CPU during the burst', measured: bu ? `${f1(bu.cpuMsPerStart)} ms per job start` : 'n/a', goal: '<= 10 ms', ...(bl ? { baseline: `${f1(bl.cpuMsPerExec)} ms per exec (+${f1(bl.cpuMsPerConnect)} ms per connect)` } : {}) },
  { figure: 'idle RSS, 2 warm VMs: PGlite memory / PGlite disk / PostgreSQL', measured: idle ? Object.values(idle).map((v) => f0(v.rssMiB)).join(' / ') + ' MiB' : 'n/a', goal: '<= 300 / 300 / 150 MiB' },
  { figure: `time until ${wu?.vms ?? WARM} warm VMs were ready (VM boot ${BOOT_MS} ms, ${RPS} cloud calls/s)`, measured: wu ? `${f1(wu.readyS)} s` : 'n/a', goal: '<= 60 s (1,000 VMs)' },
];
report['table'] = rows;
process.stdout.write(`\n${markdownTable(rows)}\n`);
const trouble = report['trouble'] as { stepDowns: number; jobsFailedBack: number; vmFailures: number; logErrors: Record<string, number> } | undefined;
if (trouble && (trouble.stepDowns || trouble.jobsFailedBack || trouble.vmFailures)) {
  process.stdout.write(`\nWARNING during the run: ${trouble.stepDowns} lease step-downs, ${trouble.jobsFailedBack} jobs failed back, ${trouble.vmFailures} VM failures; outcomes ${JSON.stringify(report['outcomes'])}\n`);
}
if (trouble && Object.keys(trouble.logErrors).length) process.stdout.write(`manager log warnings/errors: ${JSON.stringify(trouble.logErrors)}\n`);
const prof = report['profile'] as ReturnType<typeof summarizeProfile>;
if (prof) {
  process.stdout.write(`\nmanager CPU profile (${prof.cpuProfile}), top self time over the whole run:\n`);
  for (const t of prof.topSelf) process.stdout.write(`  ${String(t.selfMs).padStart(7)} ms ${String(t.share).padStart(5)}%  ${t.fn}\n`);
  process.stdout.write(`profiles kept in ${prof.dir}\n`);
}
if (values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
if (!values.keep && !prof && !report['heapSnapshot']) rmSync(work, { recursive: true, force: true });
else say(`work directory kept: ${work}`);
process.exit(0);
