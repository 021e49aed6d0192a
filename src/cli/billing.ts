// `runner-fleet billing export`: compute-minute events of finished jobs to stdout.
import { parseArgs } from 'node:util';
import { openDatabase } from '../db/connect.js';
import { migrateToLatest } from '../db/migrate.js';
import { createLogger } from '../isolation/redact.js';
import { exportEvents, parseExportTime } from '../manager/billing-export.js';
import { UsageError, loadOrExplain } from './args.js';

export async function billingExport(args: string[]): Promise<number> {
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
