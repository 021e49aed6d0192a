// Command line: start, demo, migrate, config check.
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { checkConfigFile, loadConfigFile } from './config/load.js';
import { ConfigError, type ShardConfig } from './config/types.js';
import { openDatabase } from './db/connect.js';
import { migrateToLatest } from './db/migrate.js';
import { createLogger } from './isolation/redact.js';
import { startShard, type Shard } from './manager/shard.js';

const USAGE = `runner-fleet: a fresh VM for every GitLab CI job

Usage:
  runner-fleet start --config SHARD.yaml      run one shard's manager
  runner-fleet demo [--listen HOST:PORT]      GitLab emulator + sample jobs + a manager on PGlite
  runner-fleet migrate --config SHARD.yaml    apply database migrations and exit
  runner-fleet config check --config SHARD.yaml
                                              validate a shard config; exit 1 on any error
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

async function start(args: string[]): Promise<number> {
  const config = loadOrExplain(configArg(args));
  if (!config) return 1;
  const log = createLogger({ level: config.log.level, shard: config.shard });
  const shard = await startShard({ config, log });
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
