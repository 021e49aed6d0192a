// Fuzz of billing webhook receivers' answers: odd statuses, hostile and huge bodies, slow answers,
// dropped connections, redirects. Delivery retries or dead-letters as designed, and nothing is
// lost: every event ends acknowledged by a 2xx to a POST that carried it, or dead-lettered.
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Kysely } from 'kysely';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Database } from '../../src/db/schema.js';
import { BillingDelivery } from '../../src/manager/billing-delivery.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { insertEvents } from '../helpers/billing.js';
import { migratedDatabase } from '../helpers/database.js';
import { waitUntil } from '../helpers/shard.js';
import { Gen } from './gen.js';

export const WEBHOOK_CASES = 120;
const EVENTS = 600;
const TIMEOUT_MS = 150;

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string | Buffer;
  mode: 'normal' | 'slow' | 'destroy' | 'destroyMidBody' | 'silent';
}

function makeAnswer(g: Gen): Answer {
  const status = g.chance(0.3)
    ? g.pick([200, 201, 202, 204, 299])
    : g.pick([301, 302, 303, 307, 308, 400, 401, 403, 404, 408, 409, 410, 413, 418, 422, 429, 500, 502, 503, 504, 599, 999]);
  const headers: Record<string, string> = {};
  // Redirects point at a path that refuses everything: whether delivery follows them or not, they
  // must not count as delivered (see the report on billing-delivery.ts for one that would).
  if (status >= 300 && status < 400) headers['Location'] = g.pick(['/nowhere', 'http://127.0.0.2:9/nowhere']);
  if (g.chance(0.2)) headers['Retry-After'] = String(g.pick(['1e308', '-1', 'soon', '3600']));
  const body = g.pick([
    () => '',
    () => 'ok',
    () => g.hostileString(),
    () => JSON.stringify(g.hostileValue()) ?? '',
    () => Buffer.alloc(g.int(1, 4) * 1024 * 1024, 0x61),
  ])();
  const mode = g.chance(0.75) ? 'normal' : g.pick(['slow', 'destroy', 'destroyMidBody', 'silent'] as const);
  return { status, headers, body, mode };
}

describe('billing webhook answers fuzz', () => {
  let db: Kysely<Database>;
  let close: () => Promise<void>;
  let server: Server;
  let url: string;
  const answers: Answer[] = [];
  /** Event ids the receiver acknowledged: a 2xx to a POST whose body carried them. */
  const acknowledged = new Set<string>();
  const nonPost: string[] = [];
  const open = new Set<ServerResponse>();
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    ({ db, close } = await migratedDatabase('pglite'));
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.url !== '/billing' || req.method !== 'POST') {
          nonPost.push(`${req.method} ${req.url}`);
          return void res.writeHead(404).end('no such receiver');
        }
        const a = answers.shift() ?? { status: 200, headers: {}, body: 'ok', mode: 'normal' as const };
        const ok = a.status >= 200 && a.status < 300;
        const ids = () => (JSON.parse(Buffer.concat(chunks).toString()) as { events: { id: string }[] }).events.map((e) => e.id);
        switch (a.mode) {
          case 'destroy':
            return void req.socket.destroy();
          case 'silent':
            open.add(res);
            return;
          case 'slow':
            // Answers after the sender gave up: an acknowledgement nobody hears.
            return void setTimeout(() => res.writeHead(a.status, a.headers).end(a.body), TIMEOUT_MS * 3).unref();
          case 'destroyMidBody':
            // The status line is the receiver's word: a 2xx sent is an acknowledgement, even if
            // the connection then drops (delivery does not wait for the body of a 2xx).
            if (ok) for (const id of ids()) acknowledged.add(id);
            res.writeHead(a.status, a.headers);
            res.write(Buffer.from(a.body).subarray(0, 1));
            return void setTimeout(() => res.socket?.destroy(), 5);
          default:
            if (ok) for (const id of ids()) acknowledged.add(id);
            res.writeHead(a.status, a.headers).end(a.body);
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/billing`;
  });
  afterAll(async () => {
    for (const r of open) r.socket?.destroy();
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r));
    await close?.();
    process.off('unhandledRejection', onUnhandled);
  });

  it(`${WEBHOOK_CASES} generated receiver answers: every event acknowledged or dead-lettered, none lost`, async () => {
    const g = new Gen();
    for (let i = 0; i < WEBHOOK_CASES; i++) answers.push(makeAnswer(g));
    const ids = await insertEvents(db, 'hookfuzz', 1, EVENTS, 50);
    const metrics = createMetrics({ shard: 'hookfuzz', defaultMetrics: false });
    const delivery = new BillingDelivery({
      db, shard: 'hookfuzz', metrics, log: pino({ level: 'silent' }), pollMs: 20, retryBaseMs: 5, requestTimeoutMs: TIMEOUT_MS,
      sinks: [{ url, secret: 'fuzz-secret', batchSize: 9, deadLetterAfterMs: 2000 }],
    });
    delivery.start();
    // Backoff doubles per failed batch; a kick now and then keeps the run short.
    const kicker = setInterval(() => delivery.kick(), 50);
    try {
      const dead = async () => new Set((await db.selectFrom('billing_dead_letters').select('event_id').where('shard', '=', 'hookfuzz').execute()).map((r) => r.event_id));
      await waitUntil(() => answers.length === 0, 40_000, `every generated answer served (${answers.length} left, ${acknowledged.size} acknowledged)`);
      const served = WEBHOOK_CASES - answers.length;
      expect(served).toBe(WEBHOOK_CASES);
      await waitUntil(async () => {
        const d = await dead();
        return ids.every((id) => acknowledged.has(id) || d.has(id));
      }, 20_000, 'every event acknowledged or dead-lettered').catch(async (err) => {
        const d = await dead();
        const sink = await db.selectFrom('billing_sinks').selectAll().where('shard', '=', 'hookfuzz').executeTakeFirstOrThrow();
        const missing = ids.map((id, i) => [i, id] as const).filter(([, id]) => !acknowledged.has(id) && !d.has(id));
        throw new Error(`${(err as Error).message}: ${missing.length} missing (first at index ${missing[0]?.[0]}), ${d.size} dead, ${acknowledged.size} acknowledged; sink ${JSON.stringify(sink)}`);
      });
      // The cursor reached the end only through acknowledged or dead-lettered batches.
      const sink = await db.selectFrom('billing_sinks').selectAll().where('shard', '=', 'hookfuzz').executeTakeFirstOrThrow();
      const d = await dead();
      const lost = ids.filter((id) => !acknowledged.has(id) && !d.has(id));
      expect(lost).toEqual([]);
      expect(Number(sink.delivered) + d.size).toBeGreaterThanOrEqual(EVENTS);
      expect(acknowledged.size).toBeGreaterThan(0);
      expect(unhandled).toEqual([]);
    } finally {
      clearInterval(kicker);
      await delivery.stop(1000);
    }
  }, 120_000);
});
