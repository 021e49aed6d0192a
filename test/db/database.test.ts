import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type OpenDatabase } from '../../src/db/connect.js';
import { migrateToLatest, readMigrationFiles } from '../../src/db/migrate.js';
import type { NewVm } from '../../src/db/schema.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';

const log = pino({ level: 'silent' });

function vm(id: string, over: Partial<NewVm> = {}): NewVm {
  return {
    id, shard: 's1', class: 'small', provider: 'local', name: `rf-s1-${id}`, state: 'ready',
    public_key: 'ssh-ed25519 AAAA', private_key_enc: 'enc:secret', ...over,
  };
}

describe.each(databaseKinds())('database on %s', (kind) => {
  let target: TestDatabase;
  let database: OpenDatabase;

  beforeAll(async () => {
    target = await freshDatabase(kind);
    database = await openDatabase(target.url, { log });
    expect(database.kind).toBe(kind);
    await migrateToLatest(database.db, log);
  });
  afterAll(async () => {
    await database?.close();
    await target?.drop();
  });

  it('applies the SQL migrations once and then has nothing to do', async () => {
    const tables = await sql<{ table_name: string }>`
      SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`.execute(database.db);
    expect(tables.rows.map((r) => r.table_name)).toEqual(
      expect.arrayContaining(['billing_events', 'jobs', 'shard_secrets', 'vm_events', 'vms']),
    );
    const again = await migrateToLatest(database.db, log);
    expect(again.error).toBeUndefined();
    expect(again.results).toEqual([]);
  });

  it('returns bigint and numeric as strings and timestamptz as Date', async () => {
    await database.db.insertInto('vms').values(vm('types-1', { job_id: 9_007_199_254_740_993n })).execute();
    const row = await database.db.selectFrom('vms').selectAll().where('id', '=', 'types-1').executeTakeFirstOrThrow();
    expect(row.job_id).toBe('9007199254740993');
    expect(row.created_at).toBeInstanceOf(Date);
    const { rows } = await sql<{ n: string }>`SELECT 1.50::numeric AS n`.execute(database.db);
    expect(rows[0]!.n).toBe('1.50');
  });

  it('reports affected-row counts', async () => {
    await database.db.insertInto('vms').values([vm('count-1'), vm('count-2'), vm('count-3')]).execute();
    const res = await database.db.updateTable('vms').set({ state: 'deleting' }).where('id', 'like', 'count-%').executeTakeFirst();
    expect(res.numUpdatedRows).toBe(3n);
  });

  it('commits all of 50 concurrent transactions', async () => {
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        database.db.transaction().execute(async (tx) => {
          await tx.insertInto('vms').values(vm(`tx-${i}`)).execute();
          await tx.insertInto('vm_events').values({ vm_id: `tx-${i}`, from_state: null, to_state: 'requested', detail: null }).execute();
        }),
      ),
    );
    const vms = await database.db.selectFrom('vms').select((eb) => eb.fn.countAll<string>().as('n')).where('id', 'like', 'tx-%').executeTakeFirstOrThrow();
    const events = await database.db.selectFrom('vm_events').select((eb) => eb.fn.countAll<string>().as('n')).where('vm_id', 'like', 'tx-%').executeTakeFirstOrThrow();
    expect(Number(vms.n)).toBe(50);
    expect(Number(events.n)).toBe(50);
  });

  it('serialises concurrent read-modify-write transactions without lost updates', async () => {
    await database.db.insertInto('shard_secrets').values({ shard: 'counter', key: '0' }).execute();
    await Promise.all(
      Array.from({ length: 30 }, () =>
        database.db.transaction().execute(async (tx) => {
          const row = await tx.selectFrom('shard_secrets').select('key').where('shard', '=', 'counter').forUpdate().executeTakeFirstOrThrow();
          await tx.updateTable('shard_secrets').set({ key: String(Number(row.key) + 1) }).where('shard', '=', 'counter').execute();
        }),
      ),
    );
    const row = await database.db.selectFrom('shard_secrets').select('key').where('shard', '=', 'counter').executeTakeFirstOrThrow();
    expect(row.key).toBe('30');
  });

  it('rolls back a failed transaction and keeps serving queries', async () => {
    await expect(
      database.db.transaction().execute(async (tx) => {
        await tx.insertInto('vms').values(vm('rollback-1')).execute();
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    const row = await database.db.selectFrom('vms').select('id').where('id', '=', 'rollback-1').executeTakeFirst();
    expect(row).toBeUndefined();
  });
});

describe('embedded PGlite on disk', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rf-pglite-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('creates the directory, and keeps data across close and reopen', async () => {
    const url = `pglite:${join(dir, 'nested', 'db')}`;
    const first = await openDatabase(url, { log });
    // A new directory is initialized and migrated in a worker (its WASM memory goes with it):
    // the serving process finds every migration applied.
    const applied = await migrateToLatest(first.db, log);
    expect(applied.results).toEqual([]);
    const recorded = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(first.db);
    expect(recorded.rows.map((r) => r.name)).toEqual((await readMigrationFiles()).map((m) => m.name));
    await first.db.insertInto('vms').values(vm('disk-1')).execute();
    await first.close();
    await first.close(); // idempotent

    const second = await openDatabase(url, { log });
    try {
      const again = await migrateToLatest(second.db, log);
      expect(again.results).toEqual([]);
      const row = await second.db.selectFrom('vms').select(['id', 'state']).where('id', '=', 'disk-1').executeTakeFirst();
      expect(row).toEqual({ id: 'disk-1', state: 'ready' });
    } finally {
      await second.close();
    }
  });
});

describe('openDatabase', () => {
  it('rejects a URL it does not know, without echoing its password', async () => {
    await expect(openDatabase('mysql://u:hunter2@h/db', { log })).rejects.toThrow(/unsupported database URL.*mysql:\/\/u:\*\*\*@h\/db/);
  });

  it('fails fast when a postgres server does not answer', async () => {
    await expect(openDatabase('postgres://postgres:pw@127.0.0.1:1/none', { log })).rejects.toThrow(/cannot connect to postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/none/);
  });
});
