// The billing feed and its pull API: a reader paging with the returned cursor sees every event
// exactly once, in order, while transactions commit out of order; 10,000 events paged; bad
// cursors and limits get a 400 naming the parameter.
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import type { Database } from '../../src/db/schema.js';
import { writeBillingEvent } from '../../src/manager/billing.js';
import { decodeCursor, encodeCursor, FEED_START, readFeed } from '../../src/manager/billing-feed.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { feedSettled, insertEvents, sampleEvent } from '../helpers/billing.js';
import { databaseKinds, migratedDatabase } from '../helpers/database.js';

const TOKEN = 'billing-feed-token-0123456789';
const silent = pino({ level: 'silent' });

describe.each(databaseKinds())('billing feed on %s', (kind) => {
  let db: Kysely<Database>;
  let close: () => Promise<void>;
  let api: FastifyInstance;

  beforeAll(async () => {
    ({ db, close } = await migratedDatabase(kind));
    api = await buildApi({ db, shard: 'feed-a', adminToken: null, billingToken: TOKEN, metrics: createMetrics({ shard: 'feed-a', defaultMetrics: false }), log: silent });
  });
  afterAll(async () => {
    await api?.close();
    await close?.();
  });

  const get = (query: string, token = TOKEN) => api.inject({ method: 'GET', url: `/v1/billing/events${query}`, headers: token ? { authorization: `Bearer ${token}` } : {} });

  async function drain(shard: string, limit: number, from = FEED_START) {
    const seen: string[] = [];
    let at = from;
    for (;;) {
      const page = await readFeed(db, shard, at, limit);
      seen.push(...page.events.map((e) => e.id));
      at = page.next;
      if (page.events.length === 0) return { seen, at };
    }
  }

  it.runIf(kind === 'postgres')('does not let a later-committed earlier-sequence event slip behind the cursor', async () => {
    // A takes its sequence number first, B second; B commits first. A reader that trusted the
    // sequence would return B, move past it, and never see A.
    let releaseA!: () => void;
    const aHeld = new Promise<void>((r) => (releaseA = r));
    let aInserted!: () => void;
    const aIn = new Promise<void>((r) => (aInserted = r));
    const a = db.transaction().execute(async (trx) => {
      await writeBillingEvent(trx, sampleEvent('feed-race', 1));
      aInserted();
      await aHeld;
    });
    await aIn;
    await db.transaction().execute((trx) => writeBillingEvent(trx, sampleEvent('feed-race', 2)));
    const early = await readFeed(db, 'feed-race', FEED_START, 100);
    expect(early.events).toEqual([]); // B waits behind A's open transaction
    releaseA();
    await a;
    await feedSettled(db); // another test file's open transaction may hold the feed back a while
    const { seen } = await drain('feed-race', 100, early.next);
    expect(seen).toEqual([sampleEvent('feed-race', 1).id, sampleEvent('feed-race', 2).id]);
  });

  it('a paging reader sees every event exactly once while many writers commit in any order', async () => {
    const writers = 8;
    const perWriter = 40;
    const seen: string[] = [];
    let at = FEED_START;
    let done = false;
    const write = async (w: number) => {
      for (let i = 0; i < perWriter; i++) {
        await db.transaction().execute(async (trx) => {
          await writeBillingEvent(trx, sampleEvent('feed-conc', w * 1000 + i));
          // Hold the transaction open a little: commits land out of insert order.
          await new Promise((r) => setTimeout(r, Math.random() * 8));
        });
      }
    };
    const reader = (async () => {
      while (!done) {
        const page = await readFeed(db, 'feed-conc', at, 7);
        seen.push(...page.events.map((e) => e.id));
        at = page.next;
        if (page.events.length === 0) await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await Promise.all(Array.from({ length: writers }, (_, w) => write(w)));
    done = true;
    await reader;
    await feedSettled(db); // every writer committed; visible once below every session's xmin
    seen.push(...(await drain('feed-conc', 7, at)).seen);
    expect(seen).toHaveLength(writers * perWriter);
    expect(new Set(seen).size).toBe(writers * perWriter);
    // The order is the feed's own: paging again from the start gives the same sequence.
    expect((await drain('feed-conc', 50)).seen).toEqual(seen);
  });

  it('pages 10,000 events through the API with nextCursor, each once, in order', async () => {
    const ids = await insertEvents(db, 'feed-a', 1, 10_000);
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    for (;;) {
      const res = await get(`?limit=1000${cursor ? `&after=${cursor}` : ''}`);
      expect(res.statusCode).toBe(200);
      const body = res.json() as { events: { id: string; type: string; shard: string }[]; nextCursor: string };
      pages++;
      if (body.events.length === 0) {
        expect(body.nextCursor).toBe(cursor);
        break;
      }
      expect(body.events[0]).toMatchObject({ type: 'compute_minutes.v1', shard: 'feed-a' });
      seen.push(...body.events.map((e) => e.id));
      cursor = body.nextCursor;
    }
    expect(pages).toBe(11);
    expect(seen).toEqual(ids);
    // Default page size, no cursor: from the beginning.
    const first = (await get('')).json() as { events: { id: string }[] };
    expect(first.events.map((e) => e.id)).toEqual(ids.slice(0, 100));
    // Another shard's events are not this shard's feed.
    expect(ids).not.toContain(sampleEvent('feed-conc', 1).id);
  });

  it('answers bad cursors and limits with a 400 naming the parameter, and guards the feed with its token', async () => {
    for (const [q, msg] of [
      ['?after=garbage', /^after: not a cursor this API returned/],
      [`?after=${encodeCursor(FEED_START).slice(0, -2)}!!`, /^after: /],
      [`?after=v1.${Buffer.from('12.x').toString('base64url')}`, /^after: /],
      ['?limit=0', /^limit: expected an integer from 1 to 1000, got "0"/],
      ['?limit=1001', /^limit: expected an integer from 1 to 1000/],
      ['?limit=ten', /^limit: expected an integer from 1 to 1000, got "ten"/],
      ['?limit=-5', /^limit: /],
    ] as const) {
      const res = await get(q);
      expect(res.statusCode, q).toBe(400);
      expect((res.json() as { error: string }).error, q).toMatch(msg);
    }
    expect((await get('?limit=1', '')).statusCode).toBe(401);
    expect((await get('?limit=1', 'wrong-token-wrong-token')).statusCode).toBe(401);
    expect(decodeCursor(encodeCursor({ txid: 123n, seq: 456n }))).toEqual({ txid: 123n, seq: 456n });
  });
});
