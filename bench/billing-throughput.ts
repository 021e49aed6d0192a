// Billing throughput: how fast events are written (one per closing transaction, as the
// executor writes them, by concurrent writers), paged from the feed, and delivered to a signed
// webhook receiver on loopback. On PGlite, and on PostgreSQL when DATABASE_URL is set.
//   node --import tsx bench/billing-throughput.ts [--events 20000] [--writers 8] [--batch 500]
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { pino } from 'pino';
import { openDatabase } from '../src/db/connect.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { buildBillingEvent, writeBillingEvent } from '../src/manager/billing.js';
import { verifyBillingWebhook } from '../docs/webhook-receiver.js';
import { BillingDelivery } from '../src/manager/billing-delivery.js';
import { FEED_START, readFeed } from '../src/manager/billing-feed.js';
import { createMetrics } from '../src/manager/metrics.js';

const { values } = parseArgs({ options: { events: { type: 'string', default: '20000' }, writers: { type: 'string', default: '8' }, batch: { type: 'string', default: '500' } } });
const N = Number(values.events);
const WRITERS = Number(values.writers);
const BATCH = Number(values.batch);
const SECRET = 'bench-secret-0123456789abcdef';
const log = pino({ level: 'silent' });

async function database(kind: 'pglite' | 'postgres'): Promise<{ url: string; drop(): Promise<void> }> {
  if (kind === 'pglite') return { url: 'pglite:memory', drop: async () => {} };
  const admin = process.env['DATABASE_URL']!;
  const name = `rf_bench_${Date.now()}`;
  const c = new pg.Client({ connectionString: admin });
  await c.connect();
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  const u = new URL(admin);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      const d = new pg.Client({ connectionString: admin });
      await d.connect();
      await d.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await d.end();
    },
  };
}

async function run(kind: 'pglite' | 'postgres') {
  const target = await database(kind);
  const { db, close } = await openDatabase(target.url, { log });
  await migrateToLatest(db, log);
  const shard = 'bench-billing';
  const t0 = Date.now();
  let next = 1;
  await Promise.all(
    Array.from({ length: WRITERS }, async () => {
      for (let id = next++; id <= N; id = next++) {
        const finishedAt = new Date(Date.UTC(2026, 10, 24) + id * 1000);
        const ev = buildBillingEvent({
          shard, jobId: id, pipelineId: id, projectId: 1, namespaceId: 1, rootNamespaceId: 1, runnerClass: 'saas-linux-small-amd64', costFactor: 1,
          provider: 'gcp', machineType: 'n2d-standard-2', startedAt: new Date(finishedAt.getTime() - 60_000), finishedAt, outcome: 'success', failureReason: null,
        });
        await db.transaction().execute((trx) => writeBillingEvent(trx, ev));
      }
    }),
  );
  const writeS = (Date.now() - t0) / 1000;

  const t1 = Date.now();
  let at = FEED_START;
  let paged = 0;
  for (;;) {
    const page = await readFeed(db, shard, at, 1000);
    if (page.events.length === 0) break;
    paged += page.events.length;
    at = page.next;
  }
  const pageS = (Date.now() - t1) / 1000;

  let received = 0;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      if (!verifyBillingWebhook(SECRET, req.headers, raw).ok) return void res.writeHead(401).end();
      received += (JSON.parse(raw.toString()) as { events: unknown[] }).events.length;
      res.writeHead(200).end();
      if (received >= N) done();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/billing`;
  const t2 = Date.now();
  const delivery = new BillingDelivery({ db, shard, sinks: [{ url, secret: SECRET, batchSize: BATCH, deadLetterAfterMs: 3_600_000 }], metrics: createMetrics({ shard, defaultMetrics: false }), log, pollMs: 20 });
  delivery.start();
  await all;
  const deliverS = (Date.now() - t2) / 1000;
  await delivery.stop();
  server.close();
  await close();
  await target.drop();
  const rate = (n: number, s: number) => Math.round(n / s);
  console.log(`| ${kind} | ${rate(N, writeS)} | ${rate(paged, pageS)} | ${rate(received, deliverS)} |`);
}

console.log(`${N} events, ${WRITERS} concurrent writers (one transaction per event), feed pages of 1000, webhook batches of ${BATCH}`);
console.log('| database | write (events/s) | page the feed (events/s) | deliver to webhook (events/s) |');
console.log('|---|---|---|---|');
await run('pglite');
if (process.env['DATABASE_URL']) await run('postgres');
