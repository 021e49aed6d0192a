// Epoch fencing: every state change a manager commits is checked, in the same transaction,
// against the shard epoch it took over at (sql/004_shard_lease.sql says why FOR SHARE). A manager
// that lost the shard without noticing (a GC pause, SIGSTOP, a partition) fails its next write
// with FencedError instead of acting on stale authority.
import type { Kysely, Transaction } from 'kysely';
import type { Database } from './schema.js';

export class FencedError extends Error {
  constructor(
    readonly shard: string,
    readonly held: number,
    readonly current: number | null,
  ) {
    super(`shard ${shard} was taken over (this manager holds epoch ${held}, the shard is at ${current ?? 'none'}): not acting on stale authority`);
    this.name = 'FencedError';
  }
}

/** The epoch this process acts under; null = not (yet) active, every fenced write fails. */
export class Fence {
  private epochNow: number | null = null;
  private readonly listeners = new Set<(err: FencedError) => void>();

  constructor(readonly shard: string) {}

  get epoch(): number | null {
    return this.epochNow;
  }

  /** Taken over at `epoch` (null: stepped down). */
  set(epoch: number | null): void {
    this.epochNow = epoch;
  }

  /** Called once per failed check: the shard wires it to "lost the lease, step down". */
  onFenced(fn: (err: FencedError) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Throws FencedError unless the shard is still at our epoch; locks the epoch row until commit. */
  async check(trx: Transaction<Database>): Promise<void> {
    const row = await trx.selectFrom('shard_epochs').select('epoch').where('shard', '=', this.shard).forShare().executeTakeFirst();
    const current = row ? Number(row.epoch) : null;
    if (this.epochNow === null || current !== this.epochNow) {
      const err = new FencedError(this.shard, this.epochNow ?? -1, current);
      for (const l of [...this.listeners]) l(err);
      throw err;
    }
  }

  /** A transaction that commits only if this manager still holds the shard. */
  transaction<T>(db: Kysely<Database>, fn: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    return db.transaction().execute(async (trx) => {
      await this.check(trx);
      return fn(trx);
    });
  }
}

/** True for the errors a retry may cure: deadlocks, serialization failures, lost connections. */
export function isTransientDbError(err: unknown): boolean {
  if (err instanceof FencedError) return false;
  const code = (err as { code?: string })?.code;
  if (code === '40P01' || code === '40001' || code === '55P03' || code === '57P01' || code === '08006' || code === '08003' || code === '08000') return true;
  const msg = String((err as Error)?.message ?? '');
  return /Connection terminated|timeout exceeded when trying to connect|ECONNRESET|ECONNREFUSED|Client has encountered a connection error/i.test(msg);
}
