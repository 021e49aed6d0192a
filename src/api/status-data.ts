// The status page's numbers, read from the database and the status source: aggregates anyone
// on the network may see (status summary), and the per-VM and per-job detail behind the admin
// token (status detail). Both are plain data; status.ts serves them as JSON, HTML and text.
import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { FINDING_KINDS, type FindingKind } from '../isolation/firewall-audit.js';
import { tiersOfStates, type ManagerRole, type PoolTiers, type StatusSource } from './status-source.js';

/** The start-latency SLO: a job's first line within 120 s of entering GitLab's queue (deploy/prometheus/slo-rules.yml). */
export const SLO_SECONDS = 120;
/** Its objective: 90% of jobs within SLO_SECONDS (below it the page shows the share in red). */
export const SLO_OBJECTIVE = 0.9;
/** The window of the latency figures, as the SLO's 1 h burn-rate window. */
export const LATENCY_WINDOW_MS = 3600_000;
/** Failures older than this are not "recent". */
export const FAILURE_WINDOW_MS = 24 * 3600_000;
export const MAX_FAILURES = 20;
export const MAX_VMS = 1000;

export interface ClassStatus {
  name: string;
  /** `pool`: the pool's last tick (active manager); `database`: VM rows' states (no pool here). */
  poolFrom: 'pool' | 'database';
  pool: PoolTiers;
  /** Jobs taken from GitLab: running (first line seen) and waiting (for their VM or first line). */
  jobs: { running: number; waiting: number };
  /** Jobs that started in the last hour: their start latency (queue + pick-up to first line). */
  startLatency: { jobs: number; p50: number | null; p90: number | null; withinSlo: number | null };
}

export interface StatusSummary {
  shard: string;
  role: ManagerRole | 'unknown';
  generatedAt: Date;
  classes: ClassStatus[];
  isolation: { mode: 'off' | 'warn' | 'enforce' | 'unknown'; lastRunAt: Date | null; findings: number; byKind: Record<FindingKind, number>; failedProviders: number };
}

export interface StatusDetail {
  vms: { id: string; name: string; class: string; state: string; zone: string | null; job_id: string | null; created_at: Date; age_seconds: number }[];
  failures: { what: 'vm' | 'job'; id: string; class: string; reason: string; at: Date }[];
  isolation: { findings: { provider: string; kind: string; rule: string | null; message: string; classes: string[] }[]; failed: string[] };
}

export async function statusSummary(db: Kysely<Database>, shard: string, source: StatusSource | undefined, now: Date): Promise<StatusSummary> {
  const [vmCounts, jobCounts, latency] = await Promise.all([
    db.selectFrom('vms').select(['class', 'state', (eb) => eb.fn.countAll<string>().as('n')])
      .where('shard', '=', shard).where('state', '<>', 'deleted').groupBy(['class', 'state']).execute(),
    db.selectFrom('jobs')
      .select(['class', sql<string>`count(*) filter (where started_at is not null)`.as('running'), sql<string>`count(*) filter (where started_at is null)`.as('waiting')])
      .where('shard', '=', shard).where('state', '=', 'running').groupBy('class').execute(),
    // Latency as the executor observes it into runner_fleet_job_start_latency_seconds.
    sql<{ class: string; n: string; p50: number | null; p90: number | null; within: string }>`
      select class, count(*) as n,
        percentile_cont(0.5) within group (order by latency) as p50,
        percentile_cont(0.9) within group (order by latency) as p90,
        count(*) filter (where latency <= ${SLO_SECONDS}) as within
      from (select class, (coalesce(queued_seconds, 0) + extract(epoch from started_at - picked_at))::float8 as latency
            from jobs where shard = ${shard} and started_at >= ${new Date(now.getTime() - LATENCY_WINDOW_MS)}) s
      group by class`.execute(db).then((r) => r.rows),
  ]);

  const names = [...(source?.classes() ?? [])];
  for (const r of [...vmCounts, ...jobCounts, ...latency]) if (!names.includes(r.class)) names.push(r.class);
  const classes = names.map((name): ClassStatus => {
    const live = source?.pool(name) ?? null;
    const jobs = jobCounts.find((j) => j.class === name);
    const lat = latency.find((l) => l.class === name);
    const n = Number(lat?.n ?? 0);
    return {
      name,
      poolFrom: live ? 'pool' : 'database',
      pool: live ?? tiersOfStates(vmCounts.filter((c) => c.class === name).map((c) => ({ state: c.state, n: Number(c.n) }))),
      jobs: { running: Number(jobs?.running ?? 0), waiting: Number(jobs?.waiting ?? 0) },
      startLatency: { jobs: n, p50: n ? round(Number(lat!.p50)) : null, p90: n ? round(Number(lat!.p90)) : null, withinSlo: n ? Number(lat!.within) / n : null },
    };
  });

  const audit = source?.isolation();
  const findings = audit?.last.findings ?? [];
  return {
    shard,
    role: source?.role() ?? 'unknown',
    generatedAt: now,
    classes,
    isolation: {
      mode: audit?.mode ?? 'unknown',
      lastRunAt: audit?.last.at ?? null,
      findings: findings.length,
      byKind: Object.fromEntries(FINDING_KINDS.map((k) => [k, findings.filter((f) => f.kind === k).length])) as Record<FindingKind, number>,
      failedProviders: audit?.last.failed.length ?? 0,
    },
  };
}

export async function statusDetail(db: Kysely<Database>, shard: string, source: StatusSource | undefined, now: Date): Promise<StatusDetail> {
  const since = new Date(now.getTime() - FAILURE_WINDOW_MS);
  const [vms, vmFailures, jobFailures] = await Promise.all([
    db.selectFrom('vms').select(['id', 'name', 'class', 'state', 'zone', 'job_id', 'created_at'])
      .where('shard', '=', shard).where('state', '<>', 'deleted').orderBy('created_at', 'desc').orderBy('id').limit(MAX_VMS).execute(),
    db.selectFrom('vms').select(['id', 'class', 'failure', 'updated_at'])
      .where('shard', '=', shard).where('failure', 'is not', null).where('updated_at', '>=', since).orderBy('updated_at', 'desc').limit(MAX_FAILURES).execute(),
    // A script's own failure is the job author's business, not the fleet's: left out.
    db.selectFrom('jobs').select(['id', 'class', 'failure_reason', 'finished_at'])
      .where('shard', '=', shard).where('result', '=', 'failed').where('failure_reason', 'is not', null).where('failure_reason', '<>', 'script_failure')
      .where('finished_at', '>=', since).orderBy('finished_at', 'desc').limit(MAX_FAILURES).execute(),
  ]);
  const failures: StatusDetail['failures'] = [
    ...vmFailures.map((v) => ({ what: 'vm' as const, id: v.id, class: v.class, reason: v.failure!, at: v.updated_at })),
    ...jobFailures.map((j) => ({ what: 'job' as const, id: String(j.id), class: j.class, reason: j.failure_reason!, at: j.finished_at! })),
  ].sort((a, b) => b.at.getTime() - a.at.getTime()).slice(0, MAX_FAILURES);
  const last = source?.isolation().last;
  return {
    vms: vms.map((v) => ({ ...v, job_id: v.job_id === null ? null : String(v.job_id), age_seconds: Math.max(0, Math.round((now.getTime() - v.created_at.getTime()) / 1000)) })),
    failures,
    isolation: {
      findings: (last?.findings ?? []).map((f) => ({ provider: f.provider, kind: f.kind, rule: f.rule ?? null, message: f.message, classes: f.classes })),
      failed: last?.failed ?? [],
    },
  };
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
