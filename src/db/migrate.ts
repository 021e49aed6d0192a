// Migrations are the numbered plain-SQL files in the repo's sql/ directory, applied in name
// order by kysely's Migrator (which records them and serialises concurrent runners).
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider, type MigrationResultSet } from 'kysely';
import type { Logger } from 'pino';

/** `sql/` at the repo root: two levels up from both src/db/ (tsx) and dist/db/ (built). */
export const SQL_DIR = fileURLToPath(new URL('../../sql/', import.meta.url));

const MIGRATION_FILE = /^\d+_[\w-]+\.sql$/;

/** The NNN_name.sql files of `dir` in name order, each with its text. */
export async function readMigrationFiles(dir: string = SQL_DIR): Promise<{ name: string; text: string }[]> {
  const files = (await readdir(dir)).filter((f) => MIGRATION_FILE.test(f)).sort();
  return Promise.all(files.map(async (file) => ({ name: file.replace(/\.sql$/, ''), text: await readFile(join(dir, file), 'utf8') })));
}

/** Each NNN_name.sql file is one migration; a file may hold several statements. */
export class SqlFileMigrationProvider implements MigrationProvider {
  constructor(private readonly dir: string = SQL_DIR) {}

  async getMigrations(): Promise<Record<string, Migration>> {
    const out: Record<string, Migration> = {};
    // No parameters, so pg sends it with the simple query protocol: multiple statements are fine.
    for (const { name, text } of await readMigrationFiles(this.dir)) out[name] = { up: async (db) => void (await sql.raw(text).execute(db)) };
    return out;
  }
}

/** Applies every pending migration; throws (naming the failed one) if any fails. */
export async function migrateToLatest(db: Kysely<any>, log: Logger, opts: { dir?: string } = {}): Promise<MigrationResultSet> {
  const migrator = new Migrator({ db, provider: new SqlFileMigrationProvider(opts.dir) });
  const result = await migrator.migrateToLatest();
  for (const r of result.results ?? []) {
    if (r.status === 'Success') log.info({ migration: r.migrationName }, 'migration applied');
    else if (r.status === 'Error') log.error({ migration: r.migrationName }, 'migration failed');
  }
  if (result.error) {
    const failed = result.results?.find((r) => r.status === 'Error')?.migrationName;
    const cause = result.error instanceof Error ? result.error : new Error(String(result.error));
    throw new Error(`database migration ${failed ?? ''} failed: ${cause.message}`, { cause });
  }
  return result;
}
