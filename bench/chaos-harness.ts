// The chaos run behind `npm run bench:chaos` and its short variant in the test suite: two
// managers (separate processes, one config) on one PostgreSQL shard with two gcp classes against
// the GCE emulator, jobs from the GitLab emulator, while the active manager is SIGKILLed at
// random moments (and started again, so two always run), its database sessions are terminated
// once, cloud calls fail (throttling, backend errors, answers lost after the mutation was done),
// one zone is stocked out and one drops out of list answers for a while. Everything is measured
// from outside: GitLab's view of every job, what each job's script saw, the billing table, the
// VM transitions and what the cloud holds after the drain.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { freePort } from './free-port.js';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { sql } from 'kysely';
import { openDatabase } from '../src/db/connect.js';
import { startGceEmulator, type GceEmulator } from '../emulators/gce/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../src/emulators/gitlab/server.js';
import { createLogger } from '../src/isolation/redact.js';
import { rng } from '../src/sim/random.js';

export interface ChaosOptions {
  /** postgres:// URL of an empty database the run may use. */
  databaseUrl: string;
  jobs: number;
  /** How long the jobs arrive over (s). */
  arrivalS: number;
  /** Each job prints this many numbered lines, one every lineS seconds. */
  linesPerJob: [number, number];
  lineS: number;
  kills: number;
  /** Terminate the active manager's database sessions once (pg_terminate_backend). */
  cutConnections: boolean;
  /** Share of cloud calls that fail (throttled or backend errors; some after the mutation was done). */
  cloudErrorRate: number;
  /** A zone out of capacity for the whole run. */
  stockoutZone?: string;
  /** A zone missing from list answers (unreachable) for this long, once. */
  unreachableZone?: string;
  unreachableForS: number;
  seed: number;
  /** Where the managers' logs go (kept when the run fails). */
  dir?: string;
  progress?: (line: string) => void;
}

export interface ChaosReport {
  jobs: number;
  finalInGitLab: number;
  succeeded: number;
  systemFailures: number;
  otherFailures: number;
  /**
   * Jobs GitLab handed out that no manager ever recorded (neither a handout nor a job row): lost
   * to a kill while GitLab's answer was on the wire; GitLab's stuck-job timeout ends them.
   */
  lostInFlight: number;
  /** Jobs whose script started more than once. */
  runTwice: number;
  /** VMs on which more than one job's script ran. */
  vmsWithTwoJobs: number;
  billing: { exactlyOne: number; missing: number; doubled: number; billableSystemFailures: number };
  /** Cloud instances still there after the drain. */
  vmsLeft: number;
  /** ready/assigned/running VMs the manager failed or deleted for a reason other than their job's end or the pool's sizing. */
  healthyVmsDeleted: number;
  kills: number;
  runningAtKills: number;
  survivedKills: number;
  /** Seconds from a kill (or connection cut) to a manager answering /readyz 200 again. */
  failoverS: number[];
  /** Whole traces: every numbered line once and in order. */
  completeTraces: number;
  durationS: number;
  problems: string[];
}

const CLASSES = [
  { name: 'linux-small', token: 'chaos-small' },
  { name: 'linux-medium', token: 'chaos-medium' },
];
const ZONES = ['us-central1-a', 'us-central1-b', 'us-central1-c'];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function configYaml(o: { port: number; gitlab: string; gce: string; db: string; dataDir: string }): string {
  const classes = CLASSES.map(
    (c, i) => `  ${c.name}:
    runnerToken: "${c.token}"
    provider: gcp
    costFactor: ${i + 1}
    pool: { idle: 3, max: 14 }
    bootTimeout: 60s
    jobTimeout: 30m
    machine:
      machineType: ${i === 0 ? 'n2d-standard-2' : 'n2d-standard-4'}
      image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64
      zones: [${ZONES.join(', ')}]`,
  );
  return `shard: chaos
database: { url: "${o.db}" }
http: { listen: "127.0.0.1:${o.port}", adminToken: "chaos-admin" }
gitlab: { url: "${o.gitlab}", pollInterval: 300ms, requestTimeout: 5s }
classes:
${classes.join('\n')}
providers:
  gcp: { project: chaos-project, endpoint: "${o.gce}", requestsPerSecond: 200, callTimeout: 5s, retryBase: 50ms }
dataDir: "${o.dataDir}"
secrets: { key: "chaos-secret-key-0123456789abcdef" }
log: { level: info }
`;
}

interface Manager {
  name: string;
  port: number;
  proc: ChildProcess;
  exited: Promise<number | null>;
}

export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const started = Date.now();
  const say = o.progress ?? (() => {});
  const rand = rng(o.seed);
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), 'rf-chaos-'));
  mkdirSync(dir, { recursive: true });
  const runsFile = join(dir, 'runs.log');
  writeFileSync(runsFile, '');
  const problems: string[] = [];
  const gce: GceEmulator = await startGceEmulator({ dataDir: join(dir, 'gce'), bootDelayMs: 300 });
  const gitlab: GitLabEmulator = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
  const database = await openDatabase(o.databaseUrl, { log: createLogger({ level: 'silent' }) });
  const managers: Manager[] = [];
  const ports = [await freePort(), await freePort()];
  const root = resolve(import.meta.dirname, '..');
  let spawned = 0;

  const spawnManager = (slot: number): Manager => {
    const port = ports[slot]!;
    const cfg = join(dir, `manager-${slot}.yaml`);
    writeFileSync(cfg, configYaml({ port, gitlab: gitlab.url, gce: gce.url, db: o.databaseUrl, dataDir: join(dir, `data-${slot}`) }));
    const name = `m${slot}.${++spawned}`;
    const out = createWriteStream(join(dir, `${name}.log`));
    const proc = spawn(process.execPath, ['--import', 'tsx', join(root, 'bench/chaos-manager.ts'), cfg, join(dir, 'gce')], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout!.pipe(out);
    proc.stderr!.pipe(out);
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    return { name, port, proc, exited };
  };
  const readyz = async (m: Manager): Promise<number> => {
    try {
      const res = await fetch(`http://127.0.0.1:${m.port}/readyz`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return res.status;
    } catch {
      return 0;
    }
  };
  const activeManager = async (): Promise<Manager | undefined> => {
    for (const m of managers) if ((await readyz(m)) === 200) return m;
    return undefined;
  };
  const waitActive = async (timeoutMs: number, not?: Manager): Promise<number> => {
    const t0 = Date.now();
    while (Date.now() - t0 < timeoutMs) {
      for (const m of managers) if (m !== not && (await readyz(m)) === 200) return (Date.now() - t0) / 1000;
      await sleep(100);
    }
    return Infinity;
  };

  const report: ChaosReport = {
    jobs: o.jobs, finalInGitLab: 0, lostInFlight: 0, succeeded: 0, systemFailures: 0, otherFailures: 0, runTwice: 0, vmsWithTwoJobs: 0,
    billing: { exactlyOne: 0, missing: 0, doubled: 0, billableSystemFailures: 0 }, vmsLeft: 0, healthyVmsDeleted: 0,
    kills: 0, runningAtKills: 0, survivedKills: 0, failoverS: [], completeTraces: 0, durationS: 0, problems,
  };
  const ids: number[] = [];
  const linesOf = new Map<number, number>();
  const runningAtKill = new Set<number>();

  try {
    managers.push(spawnManager(0), spawnManager(1));
    if ((await waitActive(60_000)) === Infinity) throw new Error(`no manager became active (logs in ${dir})`);
    say('a manager is active; jobs arrive');
    applyCloudFaults(gce, { errorRate: o.cloudErrorRate, stockoutZone: o.stockoutZone });

    // Arrivals: spread over arrivalS, in small pipeline-like bursts.
    const arrivals = (async () => {
      let n = 0;
      while (n < o.jobs) {
        const burst = Math.min(o.jobs - n, 1 + Math.floor(rand() * 4));
        for (let i = 0; i < burst; i++, n++) {
          const cls = CLASSES[n % CLASSES.length]!;
          const lines = o.linesPerJob[0] + Math.floor(rand() * (o.linesPerJob[1] - o.linesPerJob[0] + 1));
          const id = gitlab.enqueue({
            runnerToken: cls.token,
            git: false,
            variables: [
              { key: 'CHAOS_RUNS', value: runsFile, public: true },
              { key: 'CHAOS_JOB', value: String(n), public: true },
            ],
            script: [`echo "RUN $CHAOS_JOB $HOME" >> "$CHAOS_RUNS"`, `for i in $(seq 1 ${lines}); do echo "chaos line $i of ${lines}"; sleep ${o.lineS}; done`],
          });
          ids.push(id);
          linesOf.set(id, lines);
        }
        await sleep(((o.arrivalS * 1000) / o.jobs) * burst * (0.5 + rand()));
      }
    })();

    const cutActiveSessions = async (): Promise<number | null> => {
      const lease = await database.db.selectFrom('shard_leases').select('holder').where('shard', '=', 'chaos').executeTakeFirst();
      if (!lease) return null;
      for (const j of gitlab.jobs()) if (j.state === 'running' && j.trace.includes('chaos line')) runningAtKill.add(j.id);
      const t0 = Date.now();
      await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${lease.holder}`.execute(database.db);
      // Some manager answers 200 again once the lease is settled (the old one may retake it).
      await sleep(500);
      await waitActive(60_000);
      const t = (Date.now() - t0) / 1000;
      say(`database sessions of the active manager terminated; active again after ${t.toFixed(1)} s`);
      return t;
    };

    // Chaos: kills at random moments over the arrival window, one connection cut, one unreachable zone.
    const chaos = (async () => {
      const window = o.arrivalS * 1000;
      // The first kill comes once the first manager is warm (its pool filled): a kill while
      // GitLab's answer to a job request is still on the wire loses that job whatever we do (the
      // Runner API cannot hand it out again), and start-up is when that window is widest.
      const warmUp = Math.min(5000, window / 4);
      const moments = Array.from({ length: o.kills }, () => warmUp + rand() * (window - warmUp)).sort((a, b) => a - b);
      const cutAt = o.cutConnections ? rand() * window : Infinity;
      const unreachableAt = o.unreachableZone ? rand() * window * 0.5 : Infinity;
      let cutDone = false;
      let unreachableDone = false;
      for (const at of moments) {
        while (Date.now() - started < at) {
          if (!cutDone && Date.now() - started >= cutAt) {
            cutDone = true;
            const t = await cutActiveSessions();
            if (t !== null) report.failoverS.push(t);
          }
          if (!unreachableDone && Date.now() - started >= unreachableAt) {
            unreachableDone = true;
            setZoneUnreachable(gce, o.unreachableZone!, o.unreachableForS * 1000);
            say(`zone ${o.unreachableZone} unreachable in lists for ${o.unreachableForS} s`);
          }
          await sleep(100);
        }
        // Kill while jobs run (up to 5 s more): the kills are there to test re-attaching.
        for (let t = 0; t < 50 && !gitlab.jobs().some((j) => j.state === 'running' && j.trace.includes('chaos line')); t++) await sleep(100);
        const active = await activeManager();
        if (!active) continue;
        for (const j of gitlab.jobs()) if (j.state === 'running' && j.trace.includes('chaos line')) runningAtKill.add(j.id);
        const slot = managers.indexOf(active);
        active.proc.kill('SIGKILL');
        await active.exited;
        report.kills++;
        const failover = await waitActive(60_000, active);
        report.failoverS.push(failover);
        say(`kill ${report.kills}: ${active.name} SIGKILLed; failover in ${failover.toFixed(1)} s`);
        managers[slot] = spawnManager(slot);
      }
      if (!cutDone && o.cutConnections) {
        const t = await cutActiveSessions();
        if (t !== null) report.failoverS.push(t);
      }
    })();

    await arrivals;
    await chaos;
    // Let every job end: generous, the slowest job is linesPerJob[1] x lineS.
    const deadline = Date.now() + Math.max(120_000, o.linesPerJob[1] * o.lineS * 1000 * 4);
    while (Date.now() < deadline && gitlab.jobs().some((j) => !['success', 'failed', 'canceled'].includes(j.state))) await sleep(500);
    clearCloudFaults(gce);
    say('all jobs ended (or the deadline passed); draining');

    // Drain: SIGTERM both; the active one deletes its warm VMs.
    for (const m of managers) m.proc.kill('SIGTERM');
    await Promise.race([Promise.all(managers.map((m) => m.exited)), sleep(120_000)]);
    for (const m of managers) m.proc.kill('SIGKILL');
  } finally {
    for (const m of managers) m.proc.kill('SIGKILL');
  }

  // ---- measure ---------------------------------------------------------------------------
  const final = new Set(['success', 'failed', 'canceled']);
  const jobs = ids.map((id) => gitlab.job(id));
  for (const j of jobs) {
    if (final.has(j.state)) report.finalInGitLab++;
    if (j.state === 'success') report.succeeded++;
    else if (j.failureReason === 'runner_system_failure') report.systemFailures++;
    else if (final.has(j.state)) report.otherFailures++;
    const n = linesOf.get(j.id)!;
    const got = [...j.trace.matchAll(/^chaos line (\d+) of \d+$/gm)].map((m) => Number(m[1]));
    if (got.length === n && got.every((v, i) => v === i + 1)) report.completeTraces++;
  }
  for (const id of runningAtKill) {
    report.runningAtKills++;
    if (gitlab.job(id).state === 'success') report.survivedKills++;
  }
  // What the scripts saw: one `RUN <job> <VM home>` line each time a job's script started.
  const starts = new Map<string, number>();
  const jobsOnVm = new Map<string, Set<string>>();
  for (const line of readFileSync(runsFile, 'utf8').split('\n').filter(Boolean)) {
    const [, job, home] = line.split(' ');
    starts.set(job!, (starts.get(job!) ?? 0) + 1);
    jobsOnVm.set(home!, (jobsOnVm.get(home!) ?? new Set()).add(job!));
  }
  for (const n of starts.values()) if (n > 1) report.runTwice++;
  for (const s of jobsOnVm.values()) if (s.size > 1) report.vmsWithTwoJobs++;

  const events = await database.db.selectFrom('billing_events').select(['job_id', 'billable', 'payload']).where('shard', '=', 'chaos').execute();
  const count = new Map<number, { n: number; billable: boolean }>();
  for (const e of events) {
    const c = count.get(Number(e.job_id)) ?? { n: 0, billable: false };
    c.n++;
    c.billable ||= e.billable;
    count.set(Number(e.job_id), c);
  }
  for (const j of jobs) {
    const c = count.get(j.id);
    if (!c) report.billing.missing++;
    else if (c.n === 1) report.billing.exactlyOne++;
    else report.billing.doubled++;
    if (c && j.failureReason === 'runner_system_failure' && c.billable) report.billing.billableSystemFailures++;
  }
  report.vmsLeft = gce.instances().filter((i) => i['status'] !== 'TERMINATED').length;
  const bad = await database.db
    .selectFrom('vm_events')
    .select(['vm_id', 'from_state', 'to_state', 'detail'])
    .where('from_state', 'in', ['ready', 'assigned', 'running'])
    .where('to_state', 'in', ['failed', 'deleting'])
    .execute();
  report.healthyVmsDeleted = bad.filter((e) => !/^job \d+ (success|failed|canceled)$|pool surplus|warm VM recycled|made for standby|standby/.test(e.detail ?? '')).length;
  for (const e of bad) if (!/^job \d+ (success|failed|canceled)$|pool surplus|warm VM recycled|standby/.test(e.detail ?? '')) problems.push(`VM ${e.vm_id} ${e.from_state} -> ${e.to_state}: ${e.detail ?? ''}`);
  const recorded = new Set([
    ...(await database.db.selectFrom('jobs').select('id').where('shard', '=', 'chaos').execute()).map((r) => Number(r.id)),
    ...(await database.db.selectFrom('job_handouts').select('job_id').where('shard', '=', 'chaos').execute()).map((r) => Number(r.job_id)),
  ]);
  for (const j of jobs) {
    if (final.has(j.state)) continue;
    if (j.state === 'running' && !recorded.has(j.id)) report.lostInFlight++;
    else problems.push(`job ${j.id} never ended (${j.state})`);
  }
  report.durationS = Math.round((Date.now() - started) / 1000);

  await database.close();
  await gitlab.close();
  await gce.close();
  if (!o.dir && report.problems.length === 0) rmSync(dir, { recursive: true, force: true });
  else appendFileSync(join(dir, 'report.json'), JSON.stringify(report, null, 2));
  return report;
}

/**
 * Cloud faults: `errorRate` of all calls answer 429/503 before acting, and half as many
 * mutations again act and then answer 503 (a third of those lose the answer altogether); one
 * zone stocked out for the whole run.
 */
function applyCloudFaults(gce: GceEmulator, f: { errorRate: number; stockoutZone?: string | undefined }): void {
  if (f.stockoutZone) gce.faults.stockoutZones.add(f.stockoutZone);
  gce.faults.errorRate = f.errorRate;
  gce.faults.errorAfterRate = f.errorRate / 2;
  gce.faults.lostShare = 1 / 3;
}

function clearCloudFaults(gce: GceEmulator): void {
  gce.faults.stockoutZones.clear();
  gce.faults.errorRate = 0;
  gce.faults.errorAfterRate = 0;
  gce.faults.unreachableZones.clear();
}

function setZoneUnreachable(gce: GceEmulator, zone: string, forMs: number): void {
  gce.faults.unreachableZones.set(zone, Date.now() + forMs);
}
