// Provider resources (Mac hosts) in the database: write-ahead insert, compare-and-set
// transitions with events, data merged, scoped to shard and provider. PGlite and PostgreSQL.
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { DbResourceStore } from '../../src/manager/resource-store.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';

describe.each(databaseKinds())('provider resources on %s', (kind) => {
  let db: TestDatabase;
  let database: Awaited<ReturnType<typeof openDatabase>>;
  beforeAll(async () => {
    db = await freshDatabase(kind);
    database = await openDatabase(db.url, { log: pino({ level: 'silent' }) });
    await migrateToLatest(database.db, pino({ level: 'silent' }));
  });
  afterAll(async () => {
    await database?.close();
    await db?.drop();
  });

  it('inserts once, transitions only from the expected state, merges data and records events', async () => {
    const store = new DbResourceStore(database.db, 'shard-a', 'mac');
    expect(await store.insert('mac_host', 'h-1', 'allocating', { zone: 'us-east-1a', clientToken: 't1' })).toBe(true);
    expect(await store.insert('mac_host', 'h-1', 'allocating', { zone: 'other' })).toBe(false);
    expect(await store.transition('mac_host', 'h-1', 'ready', 'busy')).toBe(false);
    expect(await store.transition('mac_host', 'h-1', ['allocating', 'launching'], 'launching', { hostId: 'h-0abc', allocatedAt: 1000 }, 'host available')).toBe(true);
    await store.update('mac_host', 'h-1', { instanceId: 'i-1' });
    const [h] = await store.list<{ zone: string; hostId: string; instanceId: string; clientToken: string }>('mac_host');
    expect(h).toMatchObject({ id: 'h-1', state: 'launching', data: { zone: 'us-east-1a', clientToken: 't1', hostId: 'h-0abc', instanceId: 'i-1', allocatedAt: 1000 } });
    const events = await database.db.selectFrom('provider_resource_events').select(['from_state', 'to_state', 'detail']).where('resource_id', '=', 'h-1').orderBy('id').execute();
    expect(events).toEqual([
      { from_state: null, to_state: 'allocating', detail: null },
      { from_state: 'allocating', to_state: 'launching', detail: 'host available' },
    ]);
  });

  it('keeps shards and providers apart', async () => {
    const a = new DbResourceStore(database.db, 'shard-b', 'mac');
    const b = new DbResourceStore(database.db, 'shard-c', 'mac');
    await a.insert('mac_host', 'h-1', 'ready', {});
    expect(await b.list('mac_host')).toEqual([]);
    expect(await b.transition('mac_host', 'h-1', 'ready', 'busy')).toBe(false);
    expect((await a.list('mac_host')).map((r) => r.state)).toEqual(['ready']);
  });

  it('serialises concurrent transitions of one resource: exactly one wins', async () => {
    const store = new DbResourceStore(database.db, 'shard-d', 'mac');
    await store.insert('mac_host', 'h-9', 'ready', {});
    const results = await Promise.all(Array.from({ length: 5 }, () => store.transition('mac_host', 'h-9', 'ready', 'busy')));
    expect(results.filter(Boolean)).toHaveLength(1);
  });
});
