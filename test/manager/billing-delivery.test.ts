// Webhook delivery of billing events to a test receiver on loopback that checks the HMAC
// signature: a receiver that is down and then up gets every event, in order, no id twice; a
// restarted delivery resumes from the acknowledged cursor; a sink signing with the wrong secret
// is rejected by the receiver and its batches end up dead-lettered after deadLetterAfter.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Kysely } from 'kysely';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WebhookSink } from '../../src/config/types.js';
import type { Database } from '../../src/db/schema.js';
import { BillingDelivery, SIGNATURE_HEADER } from '../../src/manager/billing-delivery.js';
import { createMetrics, type Metrics } from '../../src/manager/metrics.js';
import { insertEvents } from '../helpers/billing.js';
import { databaseKinds, migratedDatabase } from '../helpers/database.js';
import { waitUntil } from '../helpers/shard.js';

const SECRET = 'webhook-shared-secret-0123456789';
const silent = pino({ level: 'silent' });

/** A billing receiver: checks the signature over the raw body, records what it accepts. */
async function startReceiver() {
  const r = { up: false, holdMs: 0, accepted: [] as string[], rejectedSignatures: 0, attempts: 0, server: null as unknown as Server, url: '' };
  r.server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      r.attempts++;
      if (!r.up) return void res.writeHead(503).end('down for maintenance');
      const raw = Buffer.concat(chunks);
      const expected = Buffer.from(`sha256=${createHmac('sha256', SECRET).update(raw).digest('hex')}`);
      const given = Buffer.from(String(req.headers[SIGNATURE_HEADER.toLowerCase()] ?? ''));
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        r.rejectedSignatures++;
        return void res.writeHead(401).end('bad signature');
      }
      const body = JSON.parse(raw.toString()) as { events: { id: string }[] };
      r.accepted.push(...body.events.map((e) => e.id));
      // holdMs: the receiver has taken the batch but answers late (a slow commit on its side).
      setTimeout(() => res.writeHead(200).end('ok'), r.holdMs);
    });
  });
  await new Promise<void>((ok) => r.server.listen(0, '127.0.0.1', ok));
  r.url = `http://127.0.0.1:${(r.server.address() as AddressInfo).port}/billing`;
  return r;
}

describe.each(databaseKinds())('billing webhook delivery on %s', (kind) => {
  let db: Kysely<Database>;
  let close: () => Promise<void>;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let metrics: Metrics;

  beforeAll(async () => {
    ({ db, close } = await migratedDatabase(kind));
    receiver = await startReceiver();
    metrics = createMetrics({ shard: 'hook', defaultMetrics: false });
  });
  afterAll(async () => {
    receiver?.server.close();
    await close?.();
  });

  const delivery = (sink: Partial<WebhookSink> = {}, shard = 'hook') =>
    new BillingDelivery({ db, shard, sinks: [{ url: receiver.url, secret: SECRET, batchSize: 40, deadLetterAfterMs: 3_600_000, ...sink }], metrics, log: silent, pollMs: 30, retryBaseMs: 30 });
  const metric = async (name: string) => {
    const m = await metrics.registry.getSingleMetric(name)?.get();
    return (m?.values ?? []).reduce((a, v) => a + v.value, 0);
  };

  it('holds events while the receiver is down, then delivers all of them in order, none twice', async () => {
    const ids = await insertEvents(db, 'hook', 1, 250, 50);
    const d = delivery();
    d.start();
    // Each batch is tried a few times in quick succession before it counts as failed.
    await waitUntil(async () => (await metric('runner_fleet_billing_delivery_failures_total')) >= 2, 20_000, 'failed batches against the down receiver');
    expect(receiver.attempts).toBeGreaterThanOrEqual(6);
    expect(receiver.accepted).toEqual([]);
    const sink = await db.selectFrom('billing_sinks').selectAll().where('shard', '=', 'hook').executeTakeFirstOrThrow();
    expect(sink.failing_since).not.toBeNull();
    expect(sink.last_error).toMatch(/HTTP 503/);

    receiver.up = true;
    await waitUntil(() => receiver.accepted.length >= 250, 20_000, 'every event delivered');
    // More events while it runs: they follow in order.
    ids.push(...(await insertEvents(db, 'hook', 1000, 30)));
    await waitUntil(() => receiver.accepted.length >= 280, 10_000, 'the new events delivered');
    await d.stop();
    expect(receiver.accepted).toEqual(ids);
    expect(await metric('runner_fleet_billing_events_delivered_total')).toBe(280);
    const after = await db.selectFrom('billing_sinks').selectAll().where('shard', '=', 'hook').executeTakeFirstOrThrow();
    expect(after).toMatchObject({ failing_since: null, last_error: null, delivered: '280' });
  });

  it('resumes from the acknowledged cursor after a restart', async () => {
    const before = receiver.accepted.length;
    const ids = await insertEvents(db, 'hook', 2000, 100);
    const d = delivery();
    d.start();
    await waitUntil(() => receiver.accepted.length >= before + 100, 10_000, 'resumed delivery');
    await d.stop();
    expect(receiver.accepted.slice(before)).toEqual(ids);
    expect(new Set(receiver.accepted).size).toBe(receiver.accepted.length);
  });

  it('a batch in flight when delivery stops is acknowledged, and not sent again after the restart', async () => {
    const before = receiver.accepted.length;
    const ids = await insertEvents(db, 'hook', 3000, 40);
    receiver.holdMs = 600;
    const d = delivery();
    d.start();
    await waitUntil(() => receiver.accepted.length >= before + 40, 10_000, 'the batch received');
    // Stop while the receiver still holds its answer: the batch finishes and moves the cursor.
    await d.stop();
    receiver.holdMs = 0;
    expect(receiver.accepted.slice(before)).toEqual(ids);
    const more = await insertEvents(db, 'hook', 4000, 5);
    const again = delivery();
    again.start();
    await waitUntil(() => receiver.accepted.length >= before + 45, 10_000, 'the next events');
    await again.stop();
    expect(receiver.accepted.slice(before)).toEqual([...ids, ...more]);
    expect(new Set(receiver.accepted).size).toBe(receiver.accepted.length);
  });

  it('a sink signing with the wrong secret is rejected, and dead-letters its batch after deadLetterAfter', async () => {
    const ids = await insertEvents(db, 'hook-bad', 1, 10);
    const before = receiver.accepted.length;
    const d = delivery({ secret: 'not-the-receivers-secret-000000', deadLetterAfterMs: 400, batchSize: 10 }, 'hook-bad');
    d.start();
    await waitUntil(async () => (await db.selectFrom('billing_dead_letters').select('event_id').where('shard', '=', 'hook-bad').execute()).length === 10, 15_000, 'the batch dead-lettered');
    await d.stop();
    expect(receiver.rejectedSignatures).toBeGreaterThan(0);
    expect(receiver.accepted.length).toBe(before);
    const dead = await db.selectFrom('billing_dead_letters').selectAll().where('shard', '=', 'hook-bad').execute();
    expect(dead.map((r) => r.event_id).sort()).toEqual([...ids].sort());
    expect(dead[0]!.error).toMatch(/HTTP 401/);
    expect(await metric('runner_fleet_billing_events_dead_lettered_total')).toBe(10);
    // The events stay in the outbox for pull and export.
    expect((await db.selectFrom('billing_events').select('id').where('shard', '=', 'hook-bad').execute()).length).toBe(10);
  });
});
