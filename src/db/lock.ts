// One active manager per shard. The active holds a session-level PostgreSQL advisory lock on a
// connection set aside for it, and a lease row renewed on that connection every second; taking
// over bumps the shard epoch that fences every write (fence.ts). A standby waits here.
//
// How a standby takes over, by the way the active died:
// - SIGKILL, crash, its connections cut: the server drops the advisory lock with the session;
//   the standby's next try (retryMs) takes it.
// - paused or partitioned while its session lingers (the server has not noticed the dead peer):
//   the lease expires (leaseMs without renewal); the standby terminates every session whose
//   application_name is the holder's instance id, then takes the lock.
// The active judges its lease on its own clock, conservatively: a renewal that has not come back
// within leaseMs of being sent means a standby may be taking over, so it steps down (`lost`).
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import { databaseKind, onSessionLost } from './connect.js';
import type { Database } from './schema.js';

/** First key of the two-key advisory lock: keeps our locks apart from other users of the server. */
const LOCK_NAMESPACE = 0x52460001;

/** Who this manager process is: `id` is also the application_name of all its sessions. */
export interface ManagerInstance {
  id: string;
  host: string;
}

export interface ShardLease {
  readonly shard: string;
  /** The shard epoch this manager took over at. */
  readonly epoch: number;
  /** Renewed recently enough that no standby can have taken over yet (false once lost). */
  valid(): boolean;
  /** Resolves once the lease is lost (never rejects); does not settle after a release. */
  readonly lost: Promise<Error>;
  /** Give the shard up (advisory lock dropped, lease ended). Idempotent. */
  release(): Promise<void>;
}

export interface ShardLockOptions {
  log: Logger;
  instance: ManagerInstance;
  /** How often a standby retries (default 2 s). */
  retryMs?: number;
  /** Stops a standby from waiting (acquireShardLock then rejects). */
  signal?: AbortSignal;
  /** How often the active renews its lease (default 1 s). */
  renewMs?: number;
  /** How long a lease lasts without renewal (default 10 s). */
  leaseMs?: number;
  /** Called once if the lease is lost: another manager may take over now. */
  onLost?: (err: Error) => void;
}

export interface LeaseInfo {
  epoch: number;
  holder: string;
  holderHost: string;
  expiresAt: Date;
  expired: boolean;
}

/** The shard's current lease as the database has it. */
export async function readLease(db: Kysely<Database>, shard: string): Promise<LeaseInfo | undefined> {
  const row = await db
    .selectFrom('shard_leases')
    .select(['epoch', 'holder', 'holder_host', 'expires_at', sql<boolean>`expires_at < now()`.as('expired')])
    .where('shard', '=', shard)
    .executeTakeFirst();
  return row && { epoch: Number(row.epoch), holder: row.holder, holderHost: row.holder_host, expiresAt: row.expires_at, expired: row.expired };
}

/** Waits until this process holds the shard; resolves to its lease. */
export async function acquireShardLock(db: Kysely<Database>, shard: string, opts: ShardLockOptions): Promise<ShardLease> {
  let logged = false;
  for (;;) {
    opts.signal?.throwIfAborted();
    const lease = await tryAcquireShardLock(db, shard, opts).catch((err) => {
      // A database that does not answer keeps us standby; it is not a reason to die.
      opts.log.warn({ err, shard }, 'shard lock attempt failed');
      return null;
    });
    if (lease) {
      opts.log.info({ shard, epoch: lease.epoch }, 'shard lock acquired: this manager is now active');
      return lease;
    }
    if (!logged) opts.log.info({ shard }, 'another manager holds the shard lock: waiting as standby');
    logged = true;
    await sleep(opts.retryMs ?? 2000, opts.signal);
  }
}

/** Takes the shard if it is free (or its holder's lease expired); null when another manager holds it. */
export async function tryAcquireShardLock(db: Kysely<Database>, shard: string, opts: ShardLockOptions): Promise<ShardLease | null> {
  const leaseMs = opts.leaseMs ?? 10_000;
  // PGlite has one session, so nothing else can hold the lock; and setting its only
  // connection aside would starve every other query. The epoch is still taken, for the fence.
  if ((await kindOf(db)) === 'pglite') {
    const epoch = await takeEpoch(db, shard, opts.instance, leaseMs);
    return { shard, epoch, valid: () => true, lost: new Promise<Error>(() => {}), release: async () => {} };
  }

  let held!: (epoch: number | null) => void;
  const outcome = new Promise<number | null>((r) => (held = r));
  let letGo!: () => void;
  const released = new Promise<void>((r) => (letGo = r));
  let declareLost!: (err: Error) => void;
  const lost = new Promise<Error>((r) => (declareLost = r));
  let isLost = false;
  let isReleased = false;
  let acquired = false;
  // Monotonic time the last successful renewal was sent: the lease runs from there at the latest.
  let renewedFrom = performance.now();

  const loseLease = (err: Error) => {
    if (!acquired || isLost || isReleased) return;
    isLost = true;
    opts.log.error({ err: err.message, shard }, 'shard lease lost: stepping down (another manager may take over now)');
    opts.onLost?.(err);
    declareLost(err);
    letGo();
  };

  const session = db.connection().execute(async (conn) => {
    const { rows } = await sql<{ ok: boolean }>`SELECT pg_try_advisory_lock(${LOCK_NAMESPACE}::int, hashtext(${shard})) AS ok`.execute(conn);
    if (!rows[0]?.ok) {
      await fenceExpiredHolder(conn, shard, opts);
      return held(null);
    }
    let epoch: number;
    try {
      renewedFrom = performance.now();
      epoch = await takeEpoch(conn, shard, opts.instance, leaseMs, opts.log);
    } catch (err) {
      await sql`SELECT pg_advisory_unlock(${LOCK_NAMESPACE}::int, hashtext(${shard}))`.execute(conn).catch(() => {});
      throw err;
    }
    // A terminated or broken session is known the moment its socket fails, not at the next renewal.
    const { rows: me } = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(conn);
    acquired = true;
    const unwatch = onSessionLost(db, (pid, err) => {
      if (pid === me[0]?.pid) loseLease(new Error(`lease session lost: ${err.message}`));
    });
    released.then(unwatch, unwatch);
    held(epoch);
    const renewMs = opts.renewMs ?? 1000;
    let renewing = false;
    const renew = setInterval(() => {
      if (performance.now() - renewedFrom >= leaseMs) return loseLease(new Error(`lease not renewed within ${leaseMs} ms`));
      if (renewing) return; // the last renewal has not come back: the watchdog above decides
      renewing = true;
      const sent = performance.now();
      sql<{ n: number }>`UPDATE shard_leases SET renewed_at = now(), expires_at = now() + make_interval(secs => ${leaseMs / 1000})
        WHERE shard = ${shard} AND holder = ${opts.instance.id} AND epoch = ${epoch}`
        .execute(conn)
        .then((res) => {
          if (Number(res.numAffectedRows ?? 0) === 0) loseLease(new Error('the lease was taken over by another manager'));
          else renewedFrom = sent;
        })
        .catch((err: Error) => loseLease(new Error(`lease renewal failed: ${err.message}`)))
        .finally(() => (renewing = false));
    }, Math.min(renewMs, leaseMs / 4));
    renew.unref();
    await released;
    clearInterval(renew);
    if (isLost) return; // the session may be dead or hung: do not wait on it
    await sql`UPDATE shard_leases SET expires_at = now() WHERE shard = ${shard} AND holder = ${opts.instance.id} AND epoch = ${epoch}`.execute(conn);
    // The connection goes back to the pool, so the lock must be dropped explicitly.
    await sql`SELECT pg_advisory_unlock(${LOCK_NAMESPACE}::int, hashtext(${shard}))`.execute(conn);
  });
  session.catch((err) => {
    held(null);
    loseLease(err as Error);
  });

  const epoch = await outcome;
  if (epoch === null) {
    await session; // rethrows what failed
    return null;
  }
  let done: Promise<void> | null = null;
  return {
    shard,
    epoch,
    valid: () => !isLost && !isReleased && performance.now() - renewedFrom < leaseMs,
    lost,
    release: () =>
      (done ??= (async () => {
        if (isLost) return;
        isReleased = true;
        letGo();
        // A hung session (partition) must not hold up a shutdown.
        await Promise.race([session.catch((err) => opts.log.warn({ err, shard }, 'releasing the shard lock failed')), sleep(3000)]);
      })()),
  };
}

/**
 * Bumps the shard's epoch and writes our lease, in one transaction. The epoch UPDATE waits for
 * every fenced transaction in flight; one that does not end in time is held by a manager that
 * cannot finish it (paused, partitioned): its sessions are terminated and the bump retried.
 */
async function takeEpoch(db: Kysely<Database>, shard: string, me: ManagerInstance, leaseMs: number, log?: Logger): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await db.transaction().execute(async (trx) => {
        await sql`SET LOCAL lock_timeout = '3s'`.execute(trx);
        const prev = await trx.selectFrom('shard_leases').select(['holder', 'holder_host', 'epoch']).where('shard', '=', shard).executeTakeFirst();
        const { epoch } = await trx
          .insertInto('shard_epochs')
          .values({ shard, epoch: 1 })
          .onConflict((oc) => oc.column('shard').doUpdateSet({ epoch: sql`shard_epochs.epoch + 1` }))
          .returning('epoch')
          .executeTakeFirstOrThrow();
        await trx
          .insertInto('shard_leases')
          .values({ shard, epoch, holder: me.id, holder_host: me.host, acquired_at: sql`now()`, renewed_at: sql`now()`, expires_at: sql`now() + make_interval(secs => ${leaseMs / 1000})` } as never)
          .onConflict((oc) =>
            oc.column('shard').doUpdateSet({ epoch, holder: me.id, holder_host: me.host, acquired_at: sql`now()`, renewed_at: sql`now()`, expires_at: sql`now() + make_interval(secs => ${leaseMs / 1000})` } as never),
          )
          .execute();
        if (prev && prev.holder !== me.id) log?.warn({ shard, previous: prev.holder_host, previousEpoch: Number(prev.epoch), epoch: Number(epoch) }, 'took the shard over from another manager');
        return Number(epoch);
      });
    } catch (err) {
      if ((err as { code?: string }).code !== '55P03' || attempt >= 3) throw err;
      const prev = await db.selectFrom('shard_leases').select('holder').where('shard', '=', shard).executeTakeFirst();
      if (prev && prev.holder !== me.id) await terminateSessions(db, prev.holder);
    }
  }
}

/** A holder whose lease expired still holds the lock through a lingering session: end its sessions. */
async function fenceExpiredHolder(conn: Kysely<Database>, shard: string, opts: ShardLockOptions): Promise<void> {
  const lease = await readLease(conn, shard);
  if (!lease?.expired || lease.holder === opts.instance.id) return;
  const n = await terminateSessions(conn, lease.holder);
  opts.log.warn({ shard, holder: lease.holderHost, epoch: lease.epoch, sessions: n }, 'the active manager stopped renewing its lease: terminating its sessions to take over');
}

async function terminateSessions(db: Kysely<Database>, applicationName: string): Promise<number> {
  const { rows } = await sql<{ n: number }>`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
    WHERE application_name = ${applicationName} AND pid <> pg_backend_pid()`.execute(db);
  return rows[0]?.n ?? 0;
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
