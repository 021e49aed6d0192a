import { sql } from 'kysely';
import pg from 'pg';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { openDatabase, type OpenDatabase } from '../../src/db/connect.js';
import { Fence, FencedError } from '../../src/db/fence.js';
import { acquireShardLock, readLease, tryAcquireShardLock, type ManagerInstance } from '../../src/db/lock.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { Store } from '../../src/manager/store.js';
import { freshDatabase } from '../helpers/database.js';

const log = pino({ level: 'silent' });
const A: ManagerInstance = { id: 'runner-fleet-aaaaaaaaaaaa', host: 'host-a/1' };
const B: ManagerInstance = { id: 'runner-fleet-bbbbbbbbbbbb', host: 'host-b/2' };

async function open(url: string, instance: ManagerInstance): Promise<OpenDatabase> {
  const d = await openDatabase(url, { log, applicationName: instance.id });
  await migrateToLatest(d.db, log);
  return d;
}

describe('shard lock on PGlite', () => {
  it('is granted at once, takes an epoch, and leaves the single connection free for queries', async () => {
    const database = await open('pglite:memory', A);
    try {
      const first = await acquireShardLock(database.db, 'shard-a', { log, instance: A });
      const { rows } = await sql<{ one: number }>`SELECT 1 AS one`.execute(database.db);
      expect(rows[0]!.one).toBe(1);
      expect(first.valid()).toBe(true);
      await first.release();
      const second = await acquireShardLock(database.db, 'shard-a', { log, instance: A });
      expect(second.epoch).toBe(first.epoch + 1);
      await second.release();
    } finally {
      await database.close();
    }
  });
});

describe.runIf(process.env['DATABASE_URL'])('shard lock on PostgreSQL', () => {
  it('lets one manager per shard be active; a standby takes over on release at the next epoch', async () => {
    const target = await freshDatabase('postgres');
    const a = await open(target.url, A);
    const b = await open(target.url, B);
    try {
      const leaseA = await tryAcquireShardLock(a.db, 'shard-a', { log, instance: A });
      expect(leaseA).not.toBeNull();
      expect(await tryAcquireShardLock(b.db, 'shard-a', { log, instance: B })).toBeNull();
      expect((await readLease(b.db, 'shard-a'))?.holderHost).toBe('host-a/1');

      const otherShard = await tryAcquireShardLock(b.db, 'shard-b', { log, instance: B });
      expect(otherShard).not.toBeNull();
      await otherShard!.release();

      let standbyActive = false;
      const standby = acquireShardLock(b.db, 'shard-a', { log, instance: B, retryMs: 50 }).then((lease) => {
        standbyActive = true;
        return lease;
      });
      await new Promise((r) => setTimeout(r, 200));
      expect(standbyActive).toBe(false);

      await leaseA!.release();
      await leaseA!.release(); // idempotent
      const leaseB = await standby;
      expect(standbyActive).toBe(true);
      expect(leaseB.epoch).toBe(leaseA!.epoch + 1);
      expect(await tryAcquireShardLock(a.db, 'shard-a', { log, instance: A })).toBeNull();
      await leaseB.release();
    } finally {
      await a.close();
      await b.close();
      await target.drop();
    }
  });

  it('a standby stops waiting when asked to', async () => {
    const target = await freshDatabase('postgres');
    const a = await open(target.url, A);
    const b = await open(target.url, B);
    try {
      const lease = await acquireShardLock(a.db, 'shard-a', { log, instance: A });
      const ac = new AbortController();
      const waiting = acquireShardLock(b.db, 'shard-a', { log, instance: B, retryMs: 50, signal: ac.signal });
      ac.abort(new Error('shutting down'));
      await expect(waiting).rejects.toThrow('shutting down');
      await lease.release();
    } finally {
      await a.close();
      await b.close();
      await target.drop();
    }
  });

  it('loses the lease when its connection is killed, and the standby takes over with a newer epoch', async () => {
    const target = await freshDatabase('postgres');
    const a = await open(target.url, A);
    const b = await open(target.url, B);
    try {
      let onLost: Error | null = null;
      const lease = await acquireShardLock(a.db, 'shard-a', { log, instance: A, renewMs: 50, onLost: (err) => (onLost = err) });
      await sql`SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid
        WHERE l.locktype = 'advisory' AND s.datname = current_database() AND l.pid <> pg_backend_pid()`.execute(b.db);
      const err = await lease.lost;
      expect(err.message).toMatch(/lease session lost|lease renewal failed|taken over/);
      expect(onLost).toBe(err);
      expect(lease.valid()).toBe(false);
      const takeover = await tryAcquireShardLock(b.db, 'shard-a', { log, instance: B });
      expect(takeover?.epoch).toBe(lease.epoch + 1);
      await takeover!.release();
      await lease.release(); // after a loss: returns, does nothing
    } finally {
      await a.close();
      await b.close();
      await target.drop();
    }
  });

  it('takes over from a holder whose lease expired while its session lingers (a paused manager), ending its sessions', async () => {
    const target = await freshDatabase('postgres');
    const b = await open(target.url, B);
    // A paused manager: it holds the advisory lock on a live session but stopped renewing.
    const paused = new pg.Client({ connectionString: target.url, application_name: A.id });
    paused.on('error', () => {});
    await paused.connect();
    try {
      const stale = await acquireShardLock(b.db, 'shard-a', { log, instance: A }); // writes A's lease row at epoch 1
      await stale.release();
      await paused.query(`SELECT pg_advisory_lock(${0x52460001}::int, hashtext('shard-a'))`);
      await paused.query(`UPDATE shard_leases SET holder = $1, expires_at = now() - interval '1 second' WHERE shard = 'shard-a'`, [A.id]);
      const started = Date.now();
      const lease = await acquireShardLock(b.db, 'shard-a', { log, instance: B, retryMs: 100 });
      expect(Date.now() - started).toBeLessThan(5000);
      expect(lease.epoch).toBe(stale.epoch + 1);
      await expect(paused.query('SELECT 1')).rejects.toThrow(); // its session was terminated
      await lease.release();
    } finally {
      await paused.end().catch(() => {});
      await b.close();
      await target.drop();
    }
  });

  it('a manager that lost the shard can commit no state change: its writes are fenced by the newer epoch', async () => {
    const target = await freshDatabase('postgres');
    const a = await open(target.url, A);
    const b = await open(target.url, B);
    try {
      const leaseA = await acquireShardLock(a.db, 'shard-a', { log, instance: A });
      const fenceA = new Fence('shard-a');
      fenceA.set(leaseA.epoch);
      const fenced: FencedError[] = [];
      fenceA.onFenced((e) => fenced.push(e));
      const storeA = new Store(a.db, 'shard-a', Buffer.alloc(32, 1), fenceA);
      await storeA.insertVm({ id: 'vm1', class: 'c', provider: 'local', name: 'rf-shard-a-vm1', publicKey: 'k', privateKey: 'p' });

      // A takes a pause; its lease is ended behind its back and B takes over.
      await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${A.id}`.execute(b.db);
      const leaseB = await acquireShardLock(b.db, 'shard-a', { log, instance: B, retryMs: 50 });
      await expect(storeA.transition('vm1', 'requested', 'creating')).rejects.toBeInstanceOf(FencedError);
      await expect(storeA.insertVm({ id: 'vm2', class: 'c', provider: 'local', name: 'rf-shard-a-vm2', publicKey: 'k', privateKey: 'p' })).rejects.toBeInstanceOf(FencedError);
      expect(fenced.length).toBe(2);
      expect(fenced[0]!.current).toBe(leaseB.epoch);
      const rows = await b.db.selectFrom('vms').select(['id', 'state']).execute();
      expect(rows).toEqual([{ id: 'vm1', state: 'requested' }]);

      const fenceB = new Fence('shard-a');
      fenceB.set(leaseB.epoch);
      const storeB = new Store(b.db, 'shard-a', Buffer.alloc(32, 1), fenceB);
      expect(await storeB.transition('vm1', 'requested', 'creating')).toBe(true);
      await leaseB.release();
      await leaseA.release();
    } finally {
      await a.close();
      await b.close();
      await target.drop();
    }
  });
});
