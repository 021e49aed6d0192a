import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest, SQL_DIR, SqlFileMigrationProvider } from '../../src/db/migrate.js';

const log = pino({ level: 'silent' });

describe('SQL file migrations', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rf-migrations-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('finds the repository\'s numbered sql/ files in order', async () => {
    const names = Object.keys(await new SqlFileMigrationProvider().getMigrations());
    expect(names[0]).toBe('001_init');
    expect(names).toEqual([...names].sort());
    expect(SQL_DIR).toMatch(/[/\\]sql[/\\]?$/);
  });

  it('runs a file of several statements as one migration, and names a failing one', async () => {
    writeFileSync(join(dir, '001_two_tables.sql'), 'CREATE TABLE a (x int);\nCREATE TABLE b (y int);\nINSERT INTO a VALUES (1);\n');
    writeFileSync(join(dir, 'README.md'), 'not a migration');
    const database = await openDatabase('pglite:memory', { log });
    try {
      const res = await migrateToLatest(database.db, log, { dir });
      expect(res.results?.map((r) => [r.migrationName, r.status])).toEqual([['001_two_tables', 'Success']]);
      const { rows } = await sql<{ n: number }>`SELECT (SELECT count(*) FROM a)::int + (SELECT count(*) FROM b)::int AS n`.execute(database.db);
      expect(rows[0]!.n).toBe(1);

      writeFileSync(join(dir, '002_broken.sql'), 'CREATE TABLE c (z int);\nSELEC nonsense;\n');
      await expect(migrateToLatest(database.db, log, { dir })).rejects.toThrow(/database migration 002_broken failed: syntax error/);
      // The failed file left nothing behind.
      const c = await sql<{ t: string | null }>`SELECT to_regclass('public.c')::text AS t`.execute(database.db);
      expect(c.rows[0]!.t).toBeNull();
    } finally {
      await database.close();
    }
  });
});
