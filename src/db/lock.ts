// One active manager per shard: a session-level PostgreSQL advisory lock on the shard name,
// held on a connection set aside for it. A second manager waits here as a standby.
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import { databaseKind } from './connect.js';
import type { Database } from './schema.js';

/** First key of the two-key advisory lock: keeps our locks apart from other users of the server. */
const LOCK_NAMESPACE = 0x52460001;

export type ReleaseLock = () => Promise<void>;

export interface ShardLockOptions {
  log: Logger;
  /** How often a standby retries (default 5 s). */
  retryMs?: number;
  /** Stops a standby from waiting (acquireShardLock then rejects). */
  signal?: AbortSignal;
  /** How often the held connection is checked (default 10 s). */
  heartbeatMs?: number;
  /** Called once if the lock's connection dies: another manager may take over now. */
  onLost?: (err: Error) => void;
}

/** Waits until this process holds the shard's lock; resolves to its release function. */
export async function acquireShardLock(db: Kysely<Database>, shard: string, opts: ShardLockOptions): Promise<ReleaseLock> {
  let logged = false;
  for (;;) {
    opts.signal?.throwIfAborted();
    const release = await tryAcquireShardLock(db, shard, opts);
    if (release) {
      if (logged) opts.log.info({ shard }, 'shard lock acquired: this manager is now active');
      return release;
    }
    if (!logged) opts.log.info({ shard }, 'another manager holds the shard lock: waiting as standby');
    logged = true;
    await sleep(opts.retryMs ?? 5000, opts.signal);
  }
}

/** Takes the shard's lock if it is free; null when another session holds it. */
export async function tryAcquireShardLock(db: Kysely<Database>, shard: string, opts: ShardLockOptions): Promise<ReleaseLock | null> {
  // PGlite has one session, so nothing else can hold the lock; and setting its only
  // connection aside would starve every other query.
  if ((await kindOf(db)) === 'pglite') return async () => {};

  let held: (ok: boolean) => void;
  const outcome = new Promise<boolean>((r) => (held = r));
  let letGo!: () => void;
  const released = new Promise<void>((r) => (letGo = r));

  const session = db.connection().execute(async (conn) => {
    const { rows } = await sql<{ ok: boolean }>`SELECT pg_try_advisory_lock(${LOCK_NAMESPACE}::int, hashtext(${shard})) AS ok`.execute(conn);
    if (!rows[0]?.ok) return held(false);
    held(true);
    let lost: Error | null = null;
    const heartbeat = setInterval(() => {
      sql`SELECT 1`.execute(conn).catch((err: Error) => {
        if (lost) return;
        lost = err;
        clearInterval(heartbeat);
        opts.log.error({ err, shard }, 'shard lock connection lost: another manager may take over');
        opts.onLost?.(err);
        letGo();
      });
    }, opts.heartbeatMs ?? 10_000);
    heartbeat.unref();
    await released;
    clearInterval(heartbeat);
    // The connection goes back to the pool, so the lock must be dropped explicitly.
    if (!lost) await sql`SELECT pg_advisory_unlock(${LOCK_NAMESPACE}::int, hashtext(${shard}))`.execute(conn);
  });
  session.catch(() => held(false));

  if (!(await outcome)) {
    await session;
    return null;
  }
  let done: Promise<void> | null = null;
  return () => (done ??= (letGo(), session.catch((err) => opts.log.warn({ err, shard }, 'releasing the shard lock failed'))));
}

async function kindOf(db: Kysely<Database>): Promise<'postgres' | 'pglite'> {
  const known = databaseKind(db);
  if (known) return known;
  const { rows } = await sql<{ v: string }>`SELECT version() AS v`.execute(db);
  return rows[0]?.v.includes('PGlite') ? 'pglite' : 'postgres';
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
