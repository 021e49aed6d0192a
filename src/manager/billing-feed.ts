// The billing feed: every compute-minute event of a shard, in one order that a reader can page
// with a cursor and never skip or repeat an event, however transactions interleave (see
// sql/003_billing_delivery.sql for why the order is (txid, seq) below the snapshot's xmin).
// Serves the pull API, the webhook sinks and the export.
import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import type { BillingEvent } from './billing.js';

export const MAX_PAGE = 1000;
export const DEFAULT_PAGE = 100;

/** A position in the feed: after the event written by transaction `txid` with sequence `seq`. */
export interface FeedPosition {
  txid: bigint;
  seq: bigint;
}

export const FEED_START: FeedPosition = { txid: 0n, seq: 0n };

export class BillingCursorError extends Error {
  override name = 'BillingCursorError';
}

/** Opaque to consumers: `v1.` + base64url("<txid>.<seq>"). */
export function encodeCursor(p: FeedPosition): string {
  return `v1.${Buffer.from(`${p.txid}.${p.seq}`).toString('base64url')}`;
}

export function decodeCursor(cursor: string): FeedPosition {
  const m = /^v1\.([A-Za-z0-9_-]{1,64})$/.exec(cursor);
  const inner = m ? Buffer.from(m[1]!, 'base64url').toString() : '';
  const parts = /^(\d{1,20})\.(\d{1,20})$/.exec(inner);
  if (!parts) throw new BillingCursorError(`after: not a cursor this API returned (expected the nextCursor of an earlier page), got ${JSON.stringify(cursor.slice(0, 80))}`);
  const p = { txid: BigInt(parts[1]!), seq: BigInt(parts[2]!) };
  if (p.txid >= 2n ** 63n || p.seq >= 2n ** 63n) throw new BillingCursorError('after: cursor out of range');
  return p;
}

export interface FeedPage {
  events: BillingEvent[];
  /** Position after the last event returned (the given one when the page is empty). */
  next: FeedPosition;
}

/**
 * Events after `after`, oldest first, at most `limit`: only those written by transactions that
 * have ended for every reader (txid below the snapshot's xmin), so a later page can never
 * reveal an event that sorts before this one's end.
 */
export async function readFeed(db: Kysely<Database>, shard: string, after: FeedPosition, limit: number): Promise<FeedPage> {
  const n = Math.max(1, Math.min(MAX_PAGE, Math.trunc(limit)));
  // Output names differ from the columns: ORDER BY would otherwise sort the text casts.
  const { rows } = await sql<{ payload: unknown; txid_text: string; seq_text: string }>`
    SELECT payload, txid::text AS txid_text, seq::text AS seq_text
    FROM billing_events
    WHERE shard = ${shard}
      AND (txid, seq) > (${after.txid.toString()}::xid8, ${after.seq.toString()}::bigint)
      AND txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY txid, seq
    LIMIT ${n}`.execute(db);
  const last = rows.at(-1);
  return {
    events: rows.map((r) => (typeof r.payload === 'string' ? JSON.parse(r.payload) : r.payload) as BillingEvent),
    next: last ? { txid: BigInt(last.txid_text), seq: BigInt(last.seq_text) } : after,
  };
}

/** Age of the oldest event after `after` (delivery lag), 0 when there is none. */
export async function oldestAfter(db: Kysely<Database>, shard: string, after: FeedPosition): Promise<Date | null> {
  const { rows } = await sql<{ at: Date | string | null }>`
    SELECT min(created_at) AS at FROM (
      SELECT created_at FROM billing_events
      WHERE shard = ${shard} AND (txid, seq) > (${after.txid.toString()}::xid8, ${after.seq.toString()}::bigint)
      ORDER BY txid, seq LIMIT 1) first`.execute(db);
  const at = rows[0]?.at;
  return at ? new Date(at) : null;
}

/** Events whose job finished in [since, until), by finish time then feed order (the export). */
export async function* eventsFinishedBetween(db: Kysely<Database>, shard: string, since: Date, until: Date, batch = 1000): AsyncGenerator<BillingEvent> {
  let after: { finished: Date; seq: string } | null = null;
  for (;;) {
    let q = db
      .selectFrom('billing_events')
      .select(['payload', 'finished_at', 'seq'])
      .where('shard', '=', shard)
      .where('finished_at', '>=', since)
      .where('finished_at', '<', until);
    if (after) {
      const a = after;
      q = q.where((eb) => eb.or([eb('finished_at', '>', a.finished), eb.and([eb('finished_at', '=', a.finished), eb('seq', '>', a.seq)])]));
    }
    const rows = await q.orderBy('finished_at').orderBy('seq').limit(batch).execute();
    for (const r of rows) yield (typeof r.payload === 'string' ? JSON.parse(r.payload) : r.payload) as BillingEvent;
    const last = rows.at(-1);
    if (!last || rows.length < batch) return;
    after = { finished: new Date(last.finished_at), seq: last.seq };
  }
}
