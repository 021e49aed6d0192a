import { sql } from 'kysely';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/connect.js';
import { acquireShardLock, tryAcquireShardLock } from '../../src/db/lock.js';
import { freshDatabase } from '../helpers/database.js';

const log = pino({ level: 'silent' });

describe('shard lock on PGlite', () => {
  it('is granted at once and leaves the single connection free for queries', async () => {
    const database = await openDatabase('pglite:memory', { log });
    try {
      const release = await acquireShardLock(database.db, 'shard-a', { log });
      const { rows } = await sql<{ one: number }>`SELECT 1 AS one`.execute(database.db);
      expect(rows[0]!.one).toBe(1);
      await release();
    } finally {
      await database.close();
    }
  });
});

describe.runIf(process.env['DATABASE_URL'])('shard lock on PostgreSQL', () => {
  it('lets one manager per shard be active; a standby takes over on release', async () => {
    const target = await freshDatabase('postgres');
    const a = await openDatabase(target.url, { log });
    const b = await openDatabase(target.url, { log });
    try {
      const releaseA = await tryAcquireShardLock(a.db, 'shard-a', { log });
      expect(releaseA).not.toBeNull();
      expect(await tryAcquireShardLock(b.db, 'shard-a', { log })).toBeNull();

      // Another shard on the same server is independent.
      const otherShard = await tryAcquireShardLock(b.db, 'shard-b', { log });
      expect(otherShard).not.toBeNull();
      await otherShard!();

      let standbyActive = false;
      const standby = acquireShardLock(b.db, 'shard-a', { log, retryMs: 50 }).then((release) => {
        standbyActive = true;
        return release;
      });
      await new Promise((r) => setTimeout(r, 200));
      expect(standbyActive).toBe(false);

      await releaseA!();
      await releaseA!(); // idempotent
      const releaseB = await standby;
      expect(standbyActive).toBe(true);
      expect(await tryAcquireShardLock(a.db, 'shard-a', { log })).toBeNull();
      await releaseB();
    } finally {
      await a.close();
      await b.close();
      await target.drop();
    }
  });

  it('stops waiting when its signal aborts', async () => {
    const target = await freshDatabase('postgres');
    const a = await openDatabase(target.url, { log });
    const b = await openDatabase(target.url, { log });
    try {
      const release = await acquireShardLock(a.db, 'shard-a', { log });
      const ac = new AbortController();
      const waiting = acquireShardLock(b.db, 'shard-a', { log, retryMs: 50, signal: ac.signal });
      setTimeout(() => ac.abort(new Error('shutting down')), 100);
      await expect(waiting).rejects.toThrow('shutting down');
      await release();
    } finally {
      await a.close();
      await b.close();
      await target.drop();
    }
  });

  it('reports a lost lock when its connection is killed', async () => {
    const target = await freshDatabase('postgres');
    const a = await openDatabase(target.url, { log });
    const b = await openDatabase(target.url, { log });
    try {
      let lost: Error | null = null;
      const release = await acquireShardLock(a.db, 'shard-a', { log, heartbeatMs: 50, onLost: (err) => (lost = err) });
      // Only this test's database: other test files share the server.
      await sql`SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND a.datname = current_database() AND l.pid <> pg_backend_pid()`.execute(b.db);
      for (let i = 0; i < 50 && !lost; i++) await new Promise((r) => setTimeout(r, 50));
      expect(lost).not.toBeNull();
      const takeover = await tryAcquireShardLock(b.db, 'shard-a', { log });
      expect(takeover).not.toBeNull();
      await takeover!();
      await release();
    } finally {
      await a.close();
      await b.close();
      await target.drop();
    }
  });
});
