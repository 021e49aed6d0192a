// Chaos benchmark (issue 11's proof): two managers on one PostgreSQL shard, the active one
// SIGKILLed at random moments, its sessions cut once, cloud faults; prints the report as a table.
//   npm run bench:chaos -- [--jobs 300] [--kills 12] [--arrival 480] [--seed 11] [--keep]
// Needs PostgreSQL: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) names a
// server where it may create (and then drop) a database of its own.
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { runChaos } from './chaos-harness.js';

const { values } = parseArgs({
  options: {
    jobs: { type: 'string', default: '300' },
    kills: { type: 'string', default: '12' },
    arrival: { type: 'string', default: '480' },
    seed: { type: 'string', default: '11' },
    keep: { type: 'boolean', default: false },
  },
});
const admin = process.env['DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const name = `rf_chaos_${randomBytes(4).toString('hex')}`;
const client = new pg.Client({ connectionString: admin });
await client.connect();
await client.query(`CREATE DATABASE ${name}`);
await client.end();
const url = new URL(admin);
url.pathname = `/${name}`;

try {
  const r = await runChaos({
    databaseUrl: url.toString(),
    jobs: Number(values.jobs),
    arrivalS: Number(values.arrival),
    linesPerJob: [10, 40],
    lineS: 1,
    kills: Number(values.kills),
    cutConnections: true,
    cloudErrorRate: 0.1,
    stockoutZone: 'us-central1-b',
    unreachableZone: 'us-central1-c',
    unreachableForS: 60,
    seed: Number(values.seed),
    ...(values.keep ? { dir: `/tmp/${name}` } : {}),
    progress: (l) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${l}\n`),
  });
  const q = (xs: number[], p: number) => {
    const s = [...xs].filter(Number.isFinite).sort((a, b) => a - b);
    return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : NaN;
  };
  const rows: [string, string, string][] = [
    ['jobs final in GitLab', `${r.finalInGitLab} / ${r.jobs} (${((100 * r.finalInGitLab) / r.jobs).toFixed(1)}%)`, '100%'],
    ['jobs lost while GitLab\'s answer was on the wire at a kill', String(r.lostInFlight), '0'],
    ['jobs succeeded / system failures / other failures', `${r.succeeded} / ${r.systemFailures} / ${r.otherFailures}`, ''],
    ['jobs run twice', String(r.runTwice), '0'],
    ['VMs that ran two jobs', String(r.vmsWithTwoJobs), '0'],
    ['billing events: exactly one / missing / doubled', `${r.billing.exactlyOne} / ${r.billing.missing} / ${r.billing.doubled}`, `${r.jobs} / 0 / 0`],
    ['billable system failures', String(r.billing.billableSystemFailures), '0'],
    ['VMs left after the drain', String(r.vmsLeft), '0'],
    ['healthy VMs deleted', String(r.healthyVmsDeleted), '0'],
    ['running jobs that survived a kill', `${r.survivedKills} / ${r.runningAtKills} (${r.runningAtKills ? ((100 * r.survivedKills) / r.runningAtKills).toFixed(1) : '-'}%)`, '>= 95%'],
    ['complete, in-order traces', `${r.completeTraces} / ${r.jobs}`, ''],
    ['failover p50 / max (s)', `${q(r.failoverS, 0.5).toFixed(1)} / ${Math.max(...r.failoverS).toFixed(1)} (${r.failoverS.length} failovers)`, '<= 15'],
    ['kills', String(r.kills), '>= 12'],
    ['duration (s)', String(r.durationS), ''],
  ];
  process.stdout.write(`| figure | measured | target |\n|---|---|---|\n${rows.map((x) => `| ${x.join(' | ')} |`).join('\n')}\n`);
  if (r.problems.length) process.stdout.write(`\nproblems:\n${r.problems.slice(0, 40).map((p) => `- ${p}`).join('\n')}\n`);
} finally {
  if (!values.keep) {
    const c = new pg.Client({ connectionString: admin });
    await c.connect();
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await c.end();
  }
}
