// `runner-fleet migrate`: apply the database migrations and exit.
import { openDatabase } from '../db/connect.js';
import { migrateToLatest } from '../db/migrate.js';
import { createLogger } from '../isolation/redact.js';
import { configArg, loadOrExplain } from './args.js';

export async function migrate(args: string[]): Promise<number> {
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
