// Push delivery of billing events to webhook sinks (billing.webhooks). Each sink is a loop over
// the billing feed from its last acknowledged cursor, kept in billing_sinks, so a restarted
// manager resumes where the receiver last said 2xx. A batch is a JSON body `{"events": [...]}`
// sent with `X-Runner-Fleet-Timestamp: <unix seconds>` and `X-Runner-Fleet-Signature:
// sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`, so a receiver can refuse a replayed
// batch (docs/webhook-receiver.ts); redirects are never followed with a signed body. A batch is
// retried with jittered backoff until acknowledged, and dead-lettered (recorded, then skipped)
// only after failing for the sink's deadLetterAfter. Delivery is at least once: a crash between
// the receiver's 2xx and the cursor update resends that batch, and receivers dedupe on event `id`.
// A sink's URL may carry a token (path, query): it never reaches logs, metrics or stored errors.
import { createHash, createHmac } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import pRetry, { AbortError } from 'p-retry';
import type { Logger } from 'pino';
import type { WebhookSink } from '../config/types.js';
import { deadline } from '../connect/deadline.js';
import type { Database } from '../db/schema.js';
import { scrubUrls } from '../isolation/redact.js';
import { decodeCursor, encodeCursor, FEED_START, oldestAfter, readFeed, type FeedPosition } from './billing-feed.js';
import type { Metrics } from './metrics.js';

export const SIGNATURE_HEADER = 'X-Runner-Fleet-Signature';
export const TIMESTAMP_HEADER = 'X-Runner-Fleet-Timestamp';

/** The signature header's value for a body sent at `timestamp` (unix seconds). */
export function signBody(secret: string, timestamp: number, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/**
 * A sink's row key in billing_sinks and billing_dead_letters: scheme and host, plus a hash of
 * the whole URL so two sinks on one host stay apart. The path and query may hold a token.
 */
export function sinkKey(url: string): string {
  const hash = createHash('sha256').update(url).digest('hex').slice(0, 16);
  const u = URL.canParse(url) ? new URL(url) : null;
  return u ? `${u.protocol}//${u.host}/#${hash}` : `invalid-url/#${hash}`;
}

export interface DeliveryDeps {
  db: Kysely<Database>;
  shard: string;
  sinks: WebhookSink[];
  metrics: Metrics;
  log: Logger;
  /** How often an idle sink looks for new events. */
  pollMs?: number;
  /** Backoff base between failed batches (doubles per failure, jittered, capped at 5 min). */
  retryBaseMs?: number;
  requestTimeoutMs?: number;
  now?: () => number;
}

class SinkRejected extends Error {}

export class BillingDelivery {
  /** Stop asked: no new batch, no retry, sleeps end. A batch in flight still finishes and is acknowledged. */
  private readonly abort = new AbortController();
  /** Fired only when a batch in flight outlasts stop()'s grace period. */
  private readonly hardAbort = new AbortController();
  private readonly loops: Promise<void>[] = [];
  private readonly wakers = new Set<() => void>();
  private readonly now: () => number;

  constructor(private readonly d: DeliveryDeps) {
    this.now = d.now ?? Date.now;
  }

  start(): void {
    this.d.sinks.forEach((sink, i) => this.loops.push(this.run(sink, i)));
  }

  /** New events were written: idle sinks look now. */
  kick(): void {
    for (const w of [...this.wakers]) w();
  }

  /**
   * Lets a batch in flight finish and move its cursor (for up to graceMs), so a receiver that
   * answered 2xx is not sent that batch again after a restart; then cuts what is left.
   */
  async stop(graceMs = 5000): Promise<void> {
    this.abort.abort();
    this.kick();
    const cut = setTimeout(() => this.hardAbort.abort(), graceMs);
    await Promise.allSettled(this.loops);
    clearTimeout(cut);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakers.add(done);
      if (this.abort.signal.aborted) done();
    });
  }

  /**
   * The sink's row, created on first use. Rows written before sinkKey were keyed by the raw URL:
   * they are renamed, so the cursor (and nothing of the URL) carries over.
   */
  private async sinkRow(sink: WebhookSink, key: string) {
    const { db, shard } = this.d;
    await db.transaction().execute(async (trx) => {
      const keyed = await trx.selectFrom('billing_sinks').select('url').where('shard', '=', shard).where('url', '=', key).executeTakeFirst();
      if (!keyed) await trx.updateTable('billing_sinks').set({ url: key }).where('shard', '=', shard).where('url', '=', sink.url).execute();
      await trx.updateTable('billing_dead_letters').set({ url: key }).where('shard', '=', shard).where('url', '=', sink.url).execute();
      await trx.insertInto('billing_sinks').values({ shard, url: key }).onConflict((oc) => oc.columns(['shard', 'url']).doNothing()).execute();
    });
    return db.selectFrom('billing_sinks').select(['cursor', 'failing_since', 'attempts']).where('shard', '=', shard).where('url', '=', key).executeTakeFirstOrThrow();
  }

  private async run(sink: WebhookSink, index: number): Promise<void> {
    // Metrics name a sink by its place in billing.webhooks: a URL path may be a secret.
    const label = String(index);
    const key = sinkKey(sink.url);
    const log = this.d.log.child({ sink: index, sinkUrl: scrubUrls(sink.url) });
    const { db, shard } = this.d;
    let failures = 0;
    // The sink's row, read once (and again after an unexpected error): this loop is its only
    // writer, so it keeps it up to date in memory instead of reading it on every poll.
    let row: { cursor: string; failing_since: Date | null; attempts: number } | null = null;
    while (!this.abort.signal.aborted) {
      try {
        row ??= await this.sinkRow(sink, key);
        const from: FeedPosition = row.cursor ? decodeCursor(row.cursor) : FEED_START;
        const oldest = await oldestAfter(db, shard, from);
        this.d.metrics.billingDeliveryLag.set({ sink: label }, oldest ? Math.max(0, (this.now() - oldest.getTime()) / 1000) : 0);
        const page = await readFeed(db, shard, from, sink.batchSize);
        if (page.events.length === 0) {
          await this.sleep(this.d.pollMs ?? 1000);
          continue;
        }
        try {
          await this.post(sink, index, JSON.stringify({ events: page.events }));
        } catch (err) {
          // Cut by stop(): not the receiver's failure; the batch goes again after the restart.
          if (this.hardAbort.signal.aborted) return;
          failures++;
          // The receiver's answer may echo the URL's path or query back: scrubbed before storing.
          const why = scrubUrls(String((err as Error).message), [sink.url]).slice(0, 500);
          const failingSince: number = row.failing_since ? new Date(row.failing_since).getTime() : this.now();
          const failingAt = new Date(failingSince);
          if (this.now() - failingSince >= sink.deadLetterAfterMs) {
            await this.deadLetter(key, row.cursor, page.next, page.events.map((e) => e.id), why);
            row = { cursor: encodeCursor(page.next), failing_since: null, attempts: 0 };
            this.d.metrics.billingDeadLettered.inc({ sink: label }, page.events.length);
            log.error({ events: page.events.length, failingForSeconds: Math.round((this.now() - failingSince) / 1000), err: why }, 'billing batch dead-lettered after failing for deadLetterAfter; delivery moves on');
            failures = 0;
            continue;
          }
          await db
            .updateTable('billing_sinks')
            .set((eb) => ({ failing_since: failingAt, attempts: eb('attempts', '+', 1), last_error: why, updated_at: new Date() }))
            .where('shard', '=', shard)
            .where('url', '=', key)
            .execute();
          row = { ...row, failing_since: failingAt, attempts: row.attempts + 1 };
          this.d.metrics.billingDeliveryFailures.inc({ sink: label });
          log.warn({ events: page.events.length, attempt: row.attempts, err: why }, 'billing batch not delivered; will retry');
          const base = this.d.retryBaseMs ?? 1000;
          await this.sleep(Math.min(300_000, base * 2 ** Math.min(failures, 16)) * (0.5 + Math.random() / 2));
          continue;
        }
        failures = 0;
        // Acknowledged: move the cursor (only from where this batch started).
        await db
          .updateTable('billing_sinks')
          .set((eb) => ({ cursor: encodeCursor(page.next), delivered: sql<number>`delivered + ${page.events.length}`, failing_since: null, attempts: 0, last_error: null, updated_at: new Date() }))
          .where('shard', '=', shard)
          .where('url', '=', key)
          .where('cursor', '=', row.cursor)
          .execute();
        row = { cursor: encodeCursor(page.next), failing_since: null, attempts: 0 };
        this.d.metrics.billingDelivered.inc({ sink: label }, page.events.length);
      } catch (err) {
        if (this.abort.signal.aborted) return;
        row = null;
        log.error({ err }, 'billing delivery loop failed; retrying');
        await this.sleep(this.d.retryBaseMs ?? 1000);
      }
    }
  }

  /**
   * One POST, with a few quick retries of transient answers; a 4xx other than 408/429, or a
   * redirect, is final for the attempt. Each attempt is signed with its own timestamp, so a retry
   * minutes later is not refused as a replay.
   */
  private async post(sink: WebhookSink, index: number, body: string): Promise<void> {
    await pRetry(
      async () => {
        const timestamp = Math.floor(this.now() / 1000);
        const limit = deadline(this.d.requestTimeoutMs ?? 15_000, this.hardAbort.signal);
        try {
        const res = await fetch(sink.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', [TIMESTAMP_HEADER]: String(timestamp), [SIGNATURE_HEADER]: signBody(sink.secret, timestamp, body), 'user-agent': 'runner-fleet-billing' },
          body,
          // A redirect would send the signed batch somewhere the operator did not configure.
          redirect: 'manual',
          signal: limit.signal,
        });
        const text = await res.text().catch(() => '');
        if (res.ok) return;
        const where = `sink ${index} (${scrubUrls(sink.url)})`;
        if (res.status >= 300 && res.status < 400) throw new AbortError(new SinkRejected(`HTTP ${res.status} from ${where}: redirects are not followed; configure the final URL`));
        const msg = `HTTP ${res.status} from ${where}: ${text.slice(0, 200)}`;
        if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) throw new AbortError(new SinkRejected(msg));
        throw new Error(msg);
        } finally {
          limit.clear();
        }
      },
      // Not p-retry's `signal`: it rejects even an attempt that succeeded when the signal fires
      // during it, which would leave a batch the receiver acknowledged unrecorded.
      { retries: 2, minTimeout: Math.min(500, this.d.retryBaseMs ?? 500), factor: 2, randomize: true, shouldRetry: () => !this.abort.signal.aborted },
    );
  }

  private async deadLetter(key: string, fromCursor: string, next: FeedPosition, ids: string[], why: string): Promise<void> {
    const { db, shard } = this.d;
    await db.transaction().execute(async (trx) => {
      await trx
        .insertInto('billing_dead_letters')
        .values(ids.map((event_id) => ({ shard, url: key, event_id, error: why })))
        .onConflict((oc) => oc.columns(['shard', 'url', 'event_id']).doNothing())
        .execute();
      await trx
        .updateTable('billing_sinks')
        .set({ cursor: encodeCursor(next), failing_since: null, attempts: 0, last_error: `dead-lettered: ${why}`, updated_at: new Date() })
        .where('shard', '=', shard)
        .where('url', '=', key)
        .where('cursor', '=', fromCursor)
        .execute();
    });
  }
}
