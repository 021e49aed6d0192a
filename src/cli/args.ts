// What every command shares: usage errors and reading the shard config with its errors explained.
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.js';
import { ConfigError, type ShardConfig } from '../config/types.js';

/** A command line the command cannot run: printed with the usage, exit code 2. */
export class UsageError extends Error {}

export function configArg(args: string[]): string {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  if (!values.config) throw new UsageError('--config FILE is required');
  return values.config;
}

/** The shard config, or null once its errors are printed. */
export function loadOrExplain(path: string): ShardConfig | null {
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
