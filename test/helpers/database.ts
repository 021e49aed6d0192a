// Databases for tests: PGlite always, and a fresh database on the real PostgreSQL server when
// DATABASE_URL is set (CI sets it when a server answers on 127.0.0.1:5432).
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export interface TestDatabase {
  kind: 'pglite' | 'postgres';
  url: string;
  drop(): Promise<void>;
}

export function databaseKinds(): ('pglite' | 'postgres')[] {
  return process.env['DATABASE_URL'] ? ['pglite', 'postgres'] : ['pglite'];
}

/** A fresh, empty database of the given kind. `pgliteUrl` picks memory or a directory. */
export async function freshDatabase(kind: 'pglite' | 'postgres', pgliteUrl = 'pglite:memory'): Promise<TestDatabase> {
  if (kind === 'pglite') return { kind, url: pgliteUrl, drop: async () => {} };
  const admin = process.env['DATABASE_URL']!;
  const name = `rf_test_${randomBytes(5).toString('hex')}`;
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return {
    kind,
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: admin });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** A fresh database of the given kind, opened and migrated; `close` also drops it. */
export async function migratedDatabase(kind: 'pglite' | 'postgres'): Promise<{ db: import('kysely').Kysely<import('../../src/db/schema.js').Database>; close(): Promise<void> }> {
  const { pino } = await import('pino');
  const { openDatabase } = await import('../../src/db/connect.js');
  const { migrateToLatest } = await import('../../src/db/migrate.js');
  const silent = pino({ level: 'silent' });
  const tdb = await freshDatabase(kind);
  const database = await openDatabase(tdb.url, { log: silent });
  await migrateToLatest(database.db, silent);
  return {
    db: database.db,
    async close() {
      await database.close();
      await tdb.drop();
    },
  };
}
