// Fuzz of the admin and billing APIs through fastify inject: bad and unknown query parameters,
// bad cursors, huge values, wrong auth headers, bodies on routes that take none. Every answer is
// 2xx, or a 4xx with a JSON error naming the field; never a 500, never a crash.
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { openDatabase, type OpenDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { encodeCursor } from '../../src/manager/billing-feed.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { insertEvents } from '../helpers/billing.js';
import { Gen } from './gen.js';

const ADMIN = 'fuzz-admin-token';
const BILLING = 'fuzz-billing-token';
const silent = pino({ level: 'silent' });
export const API_CASES = 400;

/** Header values Node accepts (latin-1, no control characters): the rest never reach a server. */
const headerSafe = (s: string) => s.slice(0, 8000).replace(/[^\t\x20-\x7e\x80-\xff]/g, '?');

/** Percent-encode anything, lone surrogates and invalid UTF-8 included. */
function encode(g: Gen, s: string): string {
  if (g.chance(0.1)) return `%ff%fe${s.length}%`; // invalid UTF-8 and a dangling escape
  try {
    return encodeURIComponent(s);
  } catch {
    return Buffer.from(s).toString('hex').replace(/(..)/g, '%$1');
  }
}

const ROUTES = {
  '/v1/vms': { token: ADMIN, params: ['state', 'class', 'limit'] },
  '/v1/jobs': { token: ADMIN, params: ['state', 'class', 'limit'] },
  '/v1/billing/events': { token: BILLING, params: ['after', 'limit'] },
} as const;
type Route = keyof typeof ROUTES;

interface Case {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  headers: Record<string, string>;
  payload?: string;
  route: Route;
  authOk: boolean;
  sent: string[];
}

function makeCase(g: Gen, validCursor: string): Case {
  const route = g.pick(Object.keys(ROUTES) as Route[]);
  const spec = ROUTES[route];
  const headers: Record<string, string> = {};
  const auth = g.int(0, 9);
  let authOk = true;
  if (auth < 7) headers['authorization'] = `Bearer ${spec.token}`;
  else {
    authOk = false;
    const wrong = [
      () => undefined,
      () => `Bearer ${spec.token === ADMIN ? BILLING : ADMIN}`,
      () => `Bearer ${spec.token}x`,
      () => `Basic ${spec.token}`,
      () => `Bearer ${headerSafe(g.hostileString())}`,
      () => headerSafe(g.hostileString()),
      () => `Bearer ${'a'.repeat(g.int(1000, 60_000))}`,
    ];
    const v = g.pick(wrong)();
    if (v !== undefined) headers['authorization'] = v;
  }
  const sent: string[] = [];
  const parts: string[] = [];
  for (let i = g.int(0, 3); i > 0; i--) {
    const known = g.chance(0.75);
    const name = known ? g.pick(spec.params) : g.pick(['limt', 'State', 'offset', '__proto__', 'constructor', 'after[]', 'limit[a]', g.hostileString().slice(0, 40)]);
    let value: string;
    const kind = g.int(0, 5);
    if (name === 'after' && kind === 0) value = g.truncate(validCursor);
    else if (name === 'after' && kind === 1) value = validCursor.split('').reverse().join('');
    else if (name === 'after' && kind === 2) value = Buffer.from(g.hostileString().slice(0, 60)).toString('base64url');
    else if (kind === 3) value = String(g.pick([0, -1, 1e308, 2 ** 63, 99999999999999999999, 1.5, 'NaN', '-0', '0x10', '1e3', ' 5', '5 ']));
    else value = g.hostileString();
    parts.push(`${encode(g, name)}=${encode(g, value.slice(0, 20_000))}`);
    sent.push(name);
  }
  const method = g.chance(0.85) ? 'GET' : g.pick(['POST', 'PUT', 'DELETE'] as const);
  const c: Case = { method, url: `${route}${parts.length ? `?${parts.join('&')}` : ''}`, headers, route, authOk, sent };
  if (method !== 'GET' || g.chance(0.05)) {
    const body = JSON.stringify({ events: [{ id: g.hostileString().slice(0, 100) }], limit: g.hostileValue() });
    c.payload = g.chance(0.5) ? g.truncate(body) : body;
    c.headers['content-type'] = g.pick(['application/json', 'text/plain', 'application/x-www-form-urlencoded', headerSafe(g.hostileString()).slice(0, 100) || 'x/y']);
  }
  return c;
}

describe('API fuzz', () => {
  let database: OpenDatabase;
  let app: FastifyInstance;
  let validCursor: string;

  beforeAll(async () => {
    database = await openDatabase('pglite:memory', { log: silent });
    await migrateToLatest(database.db, silent);
    await insertEvents(database.db, 'fz', 1, 30);
    validCursor = encodeCursor({ txid: 123n, seq: 4n });
    app = await buildApi({ db: database.db, shard: 'fz', adminToken: ADMIN, billingToken: BILLING, metrics: createMetrics({ shard: 'fz', defaultMetrics: false }), log: silent });
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
  });

  it(`${API_CASES} generated admin and billing API requests: 2xx or a 4xx JSON error naming the field, never a 500`, async () => {
    const g = new Gen();
    const counts: Record<number, number> = {};
    for (let i = 0; i < API_CASES; i++) {
      const c = makeCase(g, validCursor);
      const res = await app.inject({ method: c.method, url: c.url, headers: c.headers, ...(c.payload !== undefined ? { payload: c.payload } : {}) });
      const where = `case ${i} (seed ${g.seed}): ${c.method} ${c.url.slice(0, 200)} -> ${res.statusCode} ${res.body.slice(0, 300)}`;
      counts[res.statusCode] = (counts[res.statusCode] ?? 0) + 1;
      expect(res.statusCode, where).toBeGreaterThanOrEqual(200);
      expect(res.statusCode, where).toBeLessThan(500);
      const body = res.json() as { error?: unknown };
      if (res.statusCode >= 400) {
        expect(typeof body.error, where).toBe('string');
        expect((body.error as string).length, where).toBeLessThan(2000);
      }
      if (c.method !== 'GET') {
        // No route takes a body: unknown route (404), or a body fastify will not parse (400, 413, 415).
        expect([400, 404, 413, 415], where).toContain(res.statusCode);
        continue;
      }
      if (!c.authOk) {
        expect([401, 403], where).toContain(res.statusCode);
        continue;
      }
      if (res.statusCode === 400) {
        // The error names a parameter that was sent (or the querystring as a whole).
        const err = body.error as string;
        expect(c.sent.some((p) => err.includes(p)) || err.startsWith('querystring') || /^(after|limit):/.test(err), where).toBe(true);
      } else {
        expect(res.statusCode, where).toBe(200);
        // A 200 means every parameter sent was known.
        expect(c.sent.every((p) => (ROUTES[c.route].params as readonly string[]).includes(p)), where).toBe(true);
      }
    }
    // The generator reaches both sides: accepted requests and every kind of refusal.
    expect(counts[200]).toBeGreaterThan(20);
    expect(counts[400]).toBeGreaterThan(100);
    expect(counts[401]).toBeGreaterThan(10);
  });
});
