// Webhook delivery of billing events to a test receiver on loopback that checks the HMAC
// signature: a receiver that is down and then up gets every event, in order, no id twice; a
// restarted delivery resumes from the acknowledged cursor; a sink signing with the wrong secret
// is rejected by the receiver and its batches end up dead-lettered after deadLetterAfter. The
// receiver is docs/webhook-receiver.ts, the example operators copy.
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Kysely } from 'kysely';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WebhookSink } from '../../src/config/types.js';
import type { Database } from '../../src/db/schema.js';
import { verifyBillingWebhook } from '../../docs/webhook-receiver.js';
import { createLogger } from '../../src/isolation/redact.js';
import { BillingDelivery, sinkKey } from '../../src/manager/billing-delivery.js';
import { encodeCursor, FEED_START, readFeed } from '../../src/manager/billing-feed.js';
import { createMetrics, type Metrics } from '../../src/manager/metrics.js';
import { insertEvents } from '../helpers/billing.js';
import { databaseKinds, migratedDatabase } from '../helpers/database.js';
import { waitUntil } from '../helpers/shard.js';

const SECRET = 'webhook-shared-secret-0123456789';
const silent = pino({ level: 'silent' });

/**
 * A billing receiver: checks each delivery with the documented example, records what it accepts.
 * /echo/... answers 404 echoing the request line (as many servers do); /redirect answers 307 to
 * `redirectTo`.
 */
async function startReceiver() {
  const r = {
    up: false, holdMs: 0, accepted: [] as string[], rejectedSignatures: 0, attempts: 0, server: null as unknown as Server, url: '', base: '',
    last: null as { headers: IncomingHttpHeaders; raw: Buffer } | null, redirectTo: '',
  };
  r.server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url?.startsWith('/echo')) return void res.writeHead(404).end(`no route POST ${req.url}`);
      if (req.url?.startsWith('/redirect')) return void res.writeHead(307, { location: r.redirectTo }).end();
      r.attempts++;
      if (!r.up) return void res.writeHead(503).end('down for maintenance');
      const raw = Buffer.concat(chunks);
      r.last = { headers: req.headers, raw };
      if (!verifyBillingWebhook(SECRET, req.headers, raw).ok) {
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
  r.base = `http://127.0.0.1:${(r.server.address() as AddressInfo).port}`;
  r.url = `${r.base}/billing`;
  return r;
}

function capture() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  return { lines, stream };
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

  it('signs "<timestamp>.<body>": the example receiver refuses a replay after 5 minutes, a changed body or timestamp', async () => {
    receiver.up = true;
    const ids = await insertEvents(db, 'hook-sig', 1, 3);
    const d = delivery({}, 'hook-sig');
    d.start();
    await waitUntil(() => receiver.accepted.includes(ids[2]!), 10_000, 'a delivery');
    await d.stop();
    const { headers, raw } = receiver.last!;
    const ts = Number(headers['x-runner-fleet-timestamp']);
    expect(Math.abs(ts - Date.now() / 1000)).toBeLessThan(30);
    expect(verifyBillingWebhook(SECRET, headers, raw, ts + 299)).toEqual({ ok: true });
    expect(verifyBillingWebhook(SECRET, headers, raw, ts + 301)).toEqual({ ok: false, reason: 'timestamp outside the replay window' });
    expect(verifyBillingWebhook(SECRET, headers, Buffer.concat([raw, Buffer.from(' ')]), ts)).toEqual({ ok: false, reason: 'bad signature' });
    // Replaying an old body under a fresh timestamp needs a new signature.
    expect(verifyBillingWebhook(SECRET, { ...headers, 'x-runner-fleet-timestamp': String(ts + 400) }, raw, ts + 400)).toEqual({ ok: false, reason: 'bad signature' });
    expect(verifyBillingWebhook('another-secret-0123456789', headers, raw, ts)).toEqual({ ok: false, reason: 'bad signature' });
  });

  it('never follows a redirect with a signed batch: the redirect counts as a failure', async () => {
    const elsewhere = await startReceiver();
    elsewhere.up = true;
    receiver.redirectTo = elsewhere.url;
    await insertEvents(db, 'hook-redirect', 1, 5);
    const d = delivery({ url: `${receiver.base}/redirect`, deadLetterAfterMs: 400, batchSize: 10 }, 'hook-redirect');
    d.start();
    await waitUntil(async () => (await db.selectFrom('billing_dead_letters').select('event_id').where('shard', '=', 'hook-redirect').execute()).length === 5, 15_000, 'the batch dead-lettered');
    await d.stop();
    elsewhere.server.close();
    expect(elsewhere.attempts).toBe(0);
    const dead = await db.selectFrom('billing_dead_letters').selectAll().where('shard', '=', 'hook-redirect').execute();
    expect(dead[0]!.error).toMatch(/^HTTP 307 from sink 0 \(http:\/\/127\.0\.0\.1:\d+\/…\): redirects are not followed/);
  });

  it('keeps a sink URL\'s password, path and query out of logs, billing_sinks, dead letters and /metrics', async () => {
    const secrets = ['alice', 'PASSWORD123', 'PATHSECRET123', 'QUERYSECRET123'];
    // The config refuses user:password@ at load; delivery must not leak one even so.
    const sinks = [
      { url: `${receiver.base}/echo/PATHSECRET123?token=QUERYSECRET123`, secret: SECRET, batchSize: 10, deadLetterAfterMs: 400 },
      { url: `http://alice:PASSWORD123@127.0.0.1:${new URL(receiver.base).port}/billing`, secret: SECRET, batchSize: 10, deadLetterAfterMs: 400 },
    ];
    await insertEvents(db, 'hook-leak', 1, 5);
    const { lines, stream } = capture();
    const log = createLogger({ level: 'debug', destination: stream });
    const own = createMetrics({ shard: 'hook-leak', defaultMetrics: false });
    const d = new BillingDelivery({ db, shard: 'hook-leak', sinks, metrics: own, log, pollMs: 30, retryBaseMs: 30 });
    d.start();
    await waitUntil(async () => (await db.selectFrom('billing_dead_letters').select('event_id').where('shard', '=', 'hook-leak').execute()).length === 10, 15_000, 'both sinks dead-lettered');
    await d.stop();
    const rows = await db.selectFrom('billing_sinks').selectAll().where('shard', '=', 'hook-leak').execute();
    const dead = await db.selectFrom('billing_dead_letters').selectAll().where('shard', '=', 'hook-leak').execute();
    const metricsText = await own.registry.metrics();
    expect(rows.map((r) => r.url).sort()).toEqual(sinks.map((s) => sinkKey(s.url)).sort());
    expect(rows.map((r) => r.last_error).join('\n')).toMatch(/HTTP 404 from sink 0 \(http:\/\/127\.0\.0\.1:\d+\/…\): no route POST \[redacted\]/);
    expect(dead.map((r) => r.error).join('\n')).toMatch(/Request cannot be constructed from a URL that includes credentials: http:\/\/\*\*\*@127\.0\.0\.1:\d+\/…/);
    expect(lines.join('')).toMatch(/dead-lettered/);
    expect(metricsText).toMatch(/runner_fleet_billing_events_dead_lettered_total\{sink="0",shard="hook-leak"\} 5/);
    expect(metricsText).toMatch(/runner_fleet_billing_events_dead_lettered_total\{sink="1",shard="hook-leak"\} 5/);
    for (const [where, text] of Object.entries({ logs: lines.join(''), billing_sinks: JSON.stringify(rows), dead_letters: JSON.stringify(dead), metrics: metricsText })) {
      for (const secret of secrets) expect(text, `${secret} in ${where}`).not.toContain(secret);
    }
  });

  it('carries a sink row keyed by its raw URL (before sinkKey) over: cursor kept, URL gone', async () => {
    const url = `${receiver.url}?token=OLDROWSECRET`;
    const ids = await insertEvents(db, 'hook-old', 1, 6);
    // Where the old code left off: the first 3 events acknowledged, under the raw URL.
    const firstPage = await readFeed(db, 'hook-old', FEED_START, 3);
    await db.insertInto('billing_sinks').values({ shard: 'hook-old', url, cursor: encodeCursor(firstPage.next) }).execute();
    const before = receiver.accepted.length;
    const d = delivery({ url, batchSize: 3 }, 'hook-old');
    d.start();
    await waitUntil(() => receiver.accepted.length >= before + 3, 10_000, 'the rest delivered');
    await d.stop();
    expect(receiver.accepted.slice(before)).toEqual(ids.slice(3));
    const rows = await db.selectFrom('billing_sinks').selectAll().where('shard', '=', 'hook-old').execute();
    expect(rows.map((r) => r.url)).toEqual([sinkKey(url)]);
    expect(JSON.stringify(rows)).not.toContain('OLDROWSECRET');
  });
});
