// Command line: start, demo, migrate, config check, simulate, billing export, network check/allocate.
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { checkConfigFile, loadConfigFile } from './config/load.js';
import { ConfigError, type ShardConfig } from './config/types.js';
import { openDatabase } from './db/connect.js';
import { migrateToLatest } from './db/migrate.js';
import { createLogger } from './isolation/redact.js';
import { exportEvents, parseExportTime } from './manager/billing-export.js';
import { startShard, type Shard } from './manager/shard.js';

const USAGE = `runner-fleet: a fresh VM for every GitLab CI job

Usage:
  runner-fleet start --config SHARD.yaml      run one shard's manager
  runner-fleet demo [--listen HOST:PORT]      GitLab emulator + sample jobs + a manager on PGlite
  runner-fleet migrate --config SHARD.yaml    apply database migrations and exit
  runner-fleet config check --config SHARD.yaml
                                              validate a shard config; exit 1 on any error
  runner-fleet simulate --config SHARD.yaml --trace TRACE.csv [--policy static|predictive]
                       [--boot CLASS=MEDIAN_S:P95_S ...] [--seed N] --report OUT.json
                                              run the pool policy on a job trace, on a virtual clock
  runner-fleet billing export --config SHARD.yaml [--since TIME] [--until TIME] [--format csv|jsonl]
                                              compute-minute events of jobs finished in [since, until)
                                              to stdout (default: all of them, csv)
  runner-fleet network check --registry CIDRS.csv
                                              find overlapping subnets in a CIDR registry; exit 1 on any
  runner-fleet network allocate --registry CIDRS.csv --environment ENV --network NET
                       [--within 10.0.0.0/8] [--prefix 21] [--write]
                                              the subnet CIDR of a shard network: its registered one, else
                                              the lowest free block (--write appends it to the registry)
`;

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'start':
      return start(rest);
    case 'demo': {
      const { runDemo } = await import('./demo.js');
      return runDemo(rest);
    }
    case 'migrate':
      return migrate(rest);
    case 'config':
      if (rest[0] === 'check') return configCheck(rest.slice(1));
      process.stderr.write(`unknown config subcommand ${JSON.stringify(rest[0] ?? '')}\n\n${USAGE}`);
      return 2;
    case 'simulate':
      return simulateCommand(rest);
    case 'billing':
      if (rest[0] === 'export') return billingExport(rest.slice(1));
      process.stderr.write(`unknown billing subcommand ${JSON.stringify(rest[0] ?? '')}\n\n${USAGE}`);
      return 2;
    case 'network':
      if (rest[0] === 'check' || rest[0] === 'allocate') {
        const { networkCommand } = await import('./network-cli.js');
        return networkCommand(rest[0], rest.slice(1), (m) => new UsageError(m));
      }
      process.stderr.write(`unknown network subcommand ${JSON.stringify(rest[0] ?? '')}\n\n${USAGE}`);
      return 2;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`);
      return 2;
  }
}

function configArg(args: string[]): string {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  if (!values.config) throw new UsageError('--config FILE is required');
  return values.config;
}

class UsageError extends Error {}

function loadOrExplain(path: string): ShardConfig | null {
  try {
    return loadConfigFile(path);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${path}: invalid config\n${err.errors.map((e) => `  ${e}`).join('\n')}\n`);
      return null;
    }
    throw err;
  }
}

async function configCheck(args: string[]): Promise<number> {
  const path = configArg(args);
  const res = checkConfigFile(path);
  if (res.ok) {
    const classes = Object.keys(res.config.classes);
    process.stdout.write(`${path}: ok (shard ${res.config.shard}, ${classes.length} class${classes.length === 1 ? '' : 'es'}: ${classes.join(', ')})\n`);
    return 0;
  }
  process.stderr.write(`${path}: ${res.errors.length} error${res.errors.length === 1 ? '' : 's'}\n${res.errors.map((e) => `  ${e}`).join('\n')}\n`);
  return 1;
}

async function migrate(args: string[]): Promise<number> {
  const config = loadOrExplain(configArg(args));
  if (!config) return 1;
  const log = createLogger({ level: config.log.level, shard: config.shard });
  const database = await openDatabase(config.database.url, { log });
  try {
    await migrateToLatest(database.db, log);
  } finally {
    await database.close();
  }
  return 0;
}

async function simulateCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string', short: 'c' }, trace: { type: 'string' }, policy: { type: 'string' },
      boot: { type: 'string', multiple: true }, seed: { type: 'string' }, report: { type: 'string' },
    },
    strict: true,
  });
  if (!values.config) throw new UsageError('--config FILE is required');
  if (!values.trace) throw new UsageError('--trace FILE is required');
  if (!values.report) throw new UsageError('--report FILE is required');
  if (values.policy !== undefined && values.policy !== 'static' && values.policy !== 'predictive') throw new UsageError(`--policy: expected static or predictive, got ${JSON.stringify(values.policy)}`);
  if (values.seed !== undefined && !/^\d{1,10}$/.test(values.seed)) throw new UsageError(`--seed: expected a non-negative integer, got ${JSON.stringify(values.seed)}`);
  const config = loadOrExplain(values.config);
  if (!config) return 1;
  const boot: Record<string, { medianS: number; p95S: number }> = {};
  for (const b of values.boot ?? []) {
    const m = /^([a-z0-9][a-z0-9-]*)=(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$/.exec(b);
    if (!m || Number(m[2]) <= 0 || Number(m[3]) < Number(m[2])) throw new UsageError(`--boot: expected CLASS=MEDIAN_S:P95_S with 0 < median <= p95, got ${JSON.stringify(b)}`);
    if (!config.classes[m[1]!]) throw new UsageError(`--boot: ${m[1]} is not a class of ${values.config} (${Object.keys(config.classes).join(', ')})`);
    boot[m[1]!] = { medianS: Number(m[2]), p95S: Number(m[3]) };
  }
  const { parseTrace, TraceError } = await import('./sim/trace.js');
  const { simulate } = await import('./sim/simulator.js');
  let jobs;
  try {
    jobs = parseTrace(readFileSync(values.trace, 'utf8'), new Set(Object.keys(config.classes)));
  } catch (err) {
    if (err instanceof TraceError) {
      process.stderr.write(`${values.trace}: invalid trace\n${err.message.split('\n').map((l) => `  ${l}`).join('\n')}\n`);
      return 1;
    }
    throw err;
  }
  const started = performance.now();
  const report = simulate({ config, jobs, ...(values.policy ? { policy: values.policy as 'static' | 'predictive' } : {}), boot, seed: Number(values.seed ?? 1) });
  writeFileSync(values.report, `${JSON.stringify(report, null, 2)}\n`);
  process.stderr.write(
    `simulated ${report.jobs} jobs in ${((performance.now() - started) / 1000).toFixed(1)} s: ${(report.startedWithin120s * 100).toFixed(2)}% started within 120 s, p50 ${report.startLatency.p50} s, p90 ${report.startLatency.p90} s, p99 ${report.startLatency.p99} s; report in ${values.report}\n`,
  );
  return 0;
}

async function billingExport(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, since: { type: 'string' }, until: { type: 'string' }, format: { type: 'string', default: 'csv' } }, strict: true });
  if (!values.config) throw new UsageError('--config FILE is required');
  if (values.format !== 'csv' && values.format !== 'jsonl') throw new UsageError(`--format: expected csv or jsonl, got ${JSON.stringify(values.format)}`);
  let since: Date;
  let until: Date;
  try {
    since = values.since ? parseExportTime('--since', values.since) : new Date(0);
    until = values.until ? parseExportTime('--until', values.until) : new Date(Date.now() + 1000);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (until <= since) throw new UsageError('--until: must be after --since');
  const config = loadOrExplain(values.config);
  if (!config) return 1;
  const log = createLogger({ level: 'warn', shard: config.shard });
  const database = await openDatabase(config.database.url, { log });
  try {
    await migrateToLatest(database.db, log);
    const n = await exportEvents(database.db, config.shard, { since, until, format: values.format }, (chunk) =>
      process.stdout.write(chunk) ? undefined : new Promise<void>((ok) => process.stdout.once('drain', () => ok())),
    );
    process.stderr.write(`exported ${n} event${n === 1 ? '' : 's'} of shard ${config.shard} finished in [${since.toISOString()}, ${until.toISOString()})\n`);
  } finally {
    await database.close();
  }
  return 0;
}

async function start(args: string[]): Promise<number> {
  const path = configArg(args);
  const config = loadOrExplain(path);
  if (!config) return 1;
  const log = createLogger({ level: config.log.level, shard: config.shard });
  // A second manager with the same config waits as standby, serving /readyz (503) and /metrics.
  let shard: Shard;
  try {
    shard = await startShard({ config, log, waitActive: false });
  } catch (err) {
    // What start-up checks of the config found (no secrets key, an unreadable key file).
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${path}: cannot start\n${err.errors.map((e) => `  ${e}`).join('\n')}\n`);
    return 1;
  }
  return untilSignal(shard, log);
}

/** SIGTERM/SIGINT drain the shard; a second signal exits at once (VMs stay for the next start). */
export function untilSignal(shard: Shard, log: Logger, before?: () => Promise<void>): Promise<number> {
  return new Promise((resolve) => {
    let draining = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (draining) {
        log.warn({ signal: sig }, 'second signal: exiting without finishing the drain');
        resolve(130);
        return;
      }
      draining = true;
      log.info({ signal: sig }, 'draining');
      void (async () => {
        await before?.();
        await shard.drain();
        resolve(0);
      })().catch((err) => {
        log.error({ err }, 'drain failed');
        resolve(1);
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

export async function runCli(): Promise<void> {
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`runner-fleet: ${(err as Error).stack ?? err}\n`);
      process.exitCode = 1;
    }
  }
  // Sandboxes and sockets must not keep a finished command alive.
  setTimeout(() => process.exit(), 200).unref();
}
