// `runner-fleet start [--handover]`: one shard's manager until a signal drains it (or hands it over).
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/types.js';
import { createLogger } from '../isolation/redact.js';
import { tuneHeap } from './heap.js';
import { startShard, type Shard } from '../manager/shard.js';
import { UsageError, loadOrExplain } from './args.js';
import { untilSignal } from './signals.js';

export async function start(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, handover: { type: 'boolean', default: false } }, strict: true });
  if (!values.config) throw new UsageError('--config FILE is required');
  const path = values.config;
  const config = loadOrExplain(path);
  if (!config) return 1;
  const log = createLogger({ level: config.log.level, shard: config.shard });
  // A second manager with the same config waits as standby, serving /readyz (503) and /metrics.
  let shard: Shard;
  try {
    tuneHeap();
    shard = await startShard({ config, log, waitActive: false });
  } catch (err) {
    // What start-up checks of the config found (no secrets key, an unreadable key file).
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${path}: cannot start\n${err.errors.map((e) => `  ${e}`).join('\n')}\n`);
    return 1;
  }
  return untilSignal(shard, log, undefined, values.handover ? 'handover' : 'drain');
}
