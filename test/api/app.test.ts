import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { bearerMatches } from '../../src/api/auth.js';
import { openDatabase, type OpenDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { NewJob, NewVm } from '../../src/db/schema.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';

const TOKEN = 'admin-token-for-tests';
const silent = pino({ level: 'silent' });

function vm(id: string, over: Partial<NewVm> = {}): NewVm {
  return {
    id, shard: 'shard-a', class: 'small', provider: 'local', name: `rf-${id}`, state: 'ready',
    public_key: 'ssh-ed25519 AAAA', private_key_enc: 'SECRET-PRIVATE-KEY', ...over,
  };
}

function job(id: number, over: Partial<NewJob> = {}): NewJob {
  return {
    shard: 'shard-a', id, class: 'small', vm_id: null, state: 'running', token_enc: 'SECRET-JOB-TOKEN',
    timeout_seconds: 3600, picked_at: new Date(Date.now() - (100 - id) * 1000), ...over,
  };
}

describe.each(databaseKinds())('HTTP API on %s', (kind) => {
  let target: TestDatabase;
  let database: OpenDatabase;
  let app: FastifyInstance;
  const auth = { authorization: `Bearer ${TOKEN}` };

  beforeAll(async () => {
    target = await freshDatabase(kind);
    database = await openDatabase(target.url, { log: silent });
    await migrateToLatest(database.db, silent);
    await database.db.insertInto('vms').values([
      vm('vm-1', { state: 'ready', ready_at: new Date() }),
      vm('vm-2', { state: 'running', job_id: 7 }),
      vm('vm-3', { state: 'deleted', class: 'medium' }),
      vm('vm-other', { shard: 'shard-b' }),
    ]).execute();
    await database.db.insertInto('jobs').values([
      job(7, { vm_id: 'vm-2', project_id: 42, queued_seconds: 1.5 }),
      job(6, { state: 'finished', result: 'success', exit_code: 0, finished_at: new Date() }),
      job(5, { shard: 'shard-b' }),
    ]).execute();
    const metrics = createMetrics({ shard: 'shard-a', defaultMetrics: false });
    metrics.jobStartLatency.observe({ class: 'small' }, 12);
    app = await buildApi({ db: database.db, shard: 'shard-a', adminToken: TOKEN, metrics, log: silent });
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await target?.drop();
  });

  it('answers /healthz', async () => {
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ok' });
  });

  it('answers /readyz while the database answers', async () => {
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ready' });
  });

  it('serves Prometheus metrics including the SLO histogram', async () => {
    const res = await app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.body).toContain('# TYPE runner_fleet_job_start_latency_seconds histogram');
    expect(res.body).toContain('runner_fleet_job_start_latency_seconds_bucket{le="120",shard="shard-a",class="small"} 1');
  });

  it('serves the status page as HTML, and as plain text to clients that ask for it, without secrets or per-job detail', async () => {
    const html = await app.inject({ method: 'GET', url: '/', headers: { accept: 'text/html,*/*;q=0.8' } });
    expect(html.statusCode).toBe(200);
    expect(html.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(html.body).toContain('runner-fleet · shard shard-a');
    // No status source here (a bare API): the role is unknown and the tiers come from the VM rows.
    expect(html.body).toContain('data-role="unknown"');
    expect(html.body).toMatch(/<tr data-class="small" data-pool-from="database">.*<td data-field="hot" class="num">1<\/td>.*<td data-field="busy" class="num">1<\/td>/);
    for (const res of [html, await app.inject({ method: 'GET', url: '/', headers: { accept: 'text/plain' } })]) {
      expect(res.body).not.toContain('SECRET');
      expect(res.body).not.toContain('rf-vm-');
    }
    const text = await app.inject({ method: 'GET', url: '/', headers: { accept: 'text/plain' } });
    expect(text.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(text.body).toContain('runner-fleet shard shard-a: this manager is unknown');
    expect(text.body).toMatch(/^small {2}pool \(from the database\) hot=1 standby=0 booting=0 busy=1 leaving=0 {2}jobs running=0 waiting=1 {2}none started in the last hour$/m);
  });

  describe('admin routes', () => {
    it.each([
      ['no Authorization header', {}, 'missing bearer token', 'Bearer realm="runner-fleet"'],
      ['a wrong token', { authorization: 'Bearer not-the-token' }, 'invalid bearer token', 'Bearer realm="runner-fleet", error="invalid_token"'],
      ['another scheme', { authorization: `Basic ${TOKEN}` }, 'invalid bearer token', 'Bearer realm="runner-fleet", error="invalid_token"'],
    ])('refuse a request with %s', async (_what, headers, error, challenge) => {
      for (const url of ['/v1/vms', '/v1/jobs']) {
        const res = await app.inject({ method: 'GET', url, headers });
        expect(res.statusCode).toBe(401);
        expect(res.headers['www-authenticate']).toBe(challenge);
        expect(res.json()).toEqual({ error });
      }
    });

    it('list this shard\'s VMs, newest first, without key material', async () => {
      const res = await app.inject({ method: 'GET', url: '/v1/vms', headers: auth });
      expect(res.statusCode).toBe(200);
      const { vms } = res.json() as { vms: Record<string, unknown>[] };
      expect(vms.map((v) => v['id']).sort()).toEqual(['vm-1', 'vm-2', 'vm-3']);
      const running = vms.find((v) => v['id'] === 'vm-2')!;
      expect(running).toMatchObject({ state: 'running', job_id: '7', class: 'small', provider: 'local', cloud_id: null });
      expect(typeof running['created_at']).toBe('string');
      expect(new Date(running['created_at'] as string).getTime()).toBeGreaterThan(0);
      expect(res.body).not.toContain('SECRET');
      expect(Object.keys(running)).not.toContain('private_key_enc');
      expect(Object.keys(running)).not.toContain('public_key');
    });

    it('filter VMs by state, live-ness and class, and limit them', async () => {
      const get = async (qs: string) => ((await app.inject({ method: 'GET', url: `/v1/vms?${qs}`, headers: auth })).json() as { vms: { id: string }[] }).vms.map((v) => v.id).sort();
      expect(await get('state=running')).toEqual(['vm-2']);
      expect(await get('state=live')).toEqual(['vm-1', 'vm-2']);
      expect(await get('class=medium')).toEqual(['vm-3']);
      expect(await get('limit=1')).toHaveLength(1);
    });

    it('list this shard\'s jobs without their tokens', async () => {
      const res = await app.inject({ method: 'GET', url: '/v1/jobs', headers: auth });
      expect(res.statusCode).toBe(200);
      const { jobs } = res.json() as { jobs: Record<string, unknown>[] };
      expect(jobs.map((j) => j['id'])).toEqual(['7', '6']);
      expect(jobs[0]).toMatchObject({ vm_id: 'vm-2', project_id: '42', queued_seconds: 1.5, state: 'running', finished_at: null, trace_bytes: '0' });
      expect(jobs[1]).toMatchObject({ result: 'success', exit_code: 0 });
      expect(res.body).not.toContain('SECRET');
      expect(Object.keys(jobs[0]!)).not.toContain('token_enc');

      const finished = await app.inject({ method: 'GET', url: '/v1/jobs?state=finished', headers: auth });
      expect((finished.json() as { jobs: { id: string }[] }).jobs.map((j) => j.id)).toEqual(['6']);
    });

    it.each([
      ['/v1/vms?limit=abc', 'querystring.limit: must be integer'],
      ['/v1/vms?limit=0', 'querystring.limit: must be >= 1'],
      ['/v1/jobs?limit=5000', 'querystring.limit: must be <= 1000'],
      ['/v1/vms?state=sleeping', 'querystring.state: must be one of requested, creating, booting, ready, assigned, running, stopped, deleting, deleted, failed, live'],
      ['/v1/jobs?class=Bad_Class', 'querystring.class: must match pattern "^[a-z0-9][a-z0-9-]*$"'],
      // Unknown parameters are refused, not silently dropped (a typo must not widen a query).
      ['/v1/vms?stat=running', 'querystring.stat: unknown parameter'],
      ['/v1/jobs?limit=5&__proto__=1', 'querystring.__proto__: unknown parameter'],
    ])('reject %s with a 400 naming the field', async (url, error) => {
      const res = await app.inject({ method: 'GET', url, headers: auth });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toEqual({ error });
    });
  });

  it('answers unknown routes with a JSON 404', async () => {
    const res = await app.inject({ method: 'GET', url: '/nope?x=1' });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({ error: 'no route GET /nope' });
  });
});

describe('HTTP API edge cases', () => {
  it('answers 403 on admin routes when no admin token is configured', async () => {
    const database = await openDatabase('pglite:memory', { log: silent });
    const app = await buildApi({ db: database.db, shard: 's', adminToken: null, metrics: createMetrics({ shard: 's', defaultMetrics: false }), log: silent });
    try {
      const res = await app.inject({ method: 'GET', url: '/v1/vms', headers: { authorization: 'Bearer anything' } });
      expect(res.statusCode).toBe(403);
      expect(res.json()).toEqual({ error: 'admin API disabled: set http.adminToken' });
    } finally {
      await app.close();
      await database.close();
    }
  });

  it('reports not ready with a reason when the database is closed or the manager is not ready', async () => {
    const database = await openDatabase('pglite:memory', { log: silent });
    let managerReady = false;
    const app = await buildApi({
      db: database.db, shard: 's', adminToken: TOKEN, metrics: createMetrics({ shard: 's', defaultMetrics: false }), log: silent,
      ready: async () => managerReady,
    });
    try {
      let res = await app.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toEqual({ status: 'unavailable', reason: 'manager: not ready' });

      managerReady = true;
      expect((await app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);

      await database.close();
      res = await app.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(503);
      // Without the admin token: a generic reason, no driver error text.
      expect(res.json()).toEqual({ status: 'unavailable', reason: 'database: not answering' });
      for (const authorization of ['Bearer wrong-token', `Basic ${TOKEN}`]) {
        res = await app.inject({ method: 'GET', url: '/readyz', headers: { authorization } });
        expect(res.json()).toEqual({ status: 'unavailable', reason: 'database: not answering' });
      }
      res = await app.inject({ method: 'GET', url: '/readyz', headers: { authorization: `Bearer ${TOKEN}` } });
      expect(res.statusCode).toBe(503);
      const detailed = (res.json() as { reason: string }).reason;
      expect(detailed).toMatch(/^database: /);
      expect(detailed).not.toBe('database: not answering');
      // Liveness does not depend on the database.
      expect((await app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    } finally {
      await app.close();
    }
  });

  it('lists the warnings it was given in every /readyz body, ready or not', async () => {
    const database = await openDatabase('pglite:memory', { log: silent });
    let managerReady: boolean | { status: string; reason: string } = { status: 'standby', reason: 'standby: held elsewhere' };
    const warnings = ['the local provider runs jobs as the manager user'];
    const app = await buildApi({ db: database.db, shard: 's', adminToken: null, metrics: createMetrics({ shard: 's', defaultMetrics: false }), log: silent, ready: async () => managerReady, warnings });
    try {
      let res = await app.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(503);
      expect(res.json()).toEqual({ status: 'standby', reason: 'standby: held elsewhere', warnings });
      managerReady = true;
      res = await app.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual({ status: 'ready', warnings });
    } finally {
      await app.close();
      await database.close();
    }
  });

  it("shows a failing manager check's error text only to the admin token", async () => {
    const database = await openDatabase('pglite:memory', { log: silent });
    const app = await buildApi({
      db: database.db, shard: 's', adminToken: TOKEN, metrics: createMetrics({ shard: 's', defaultMetrics: false }), log: silent,
      ready: async () => { throw new Error('connect ECONNREFUSED db-primary.internal:5432'); },
    });
    try {
      const anon = await app.inject({ method: 'GET', url: '/readyz' });
      expect(anon.statusCode).toBe(503);
      expect(anon.json()).toEqual({ status: 'unavailable', reason: 'manager: readiness check failed' });
      const admin = await app.inject({ method: 'GET', url: '/readyz', headers: { authorization: `Bearer ${TOKEN}` } });
      expect(admin.json()).toEqual({ status: 'unavailable', reason: 'manager: connect ECONNREFUSED db-primary.internal:5432' });
    } finally {
      await app.close();
      await database.close();
    }
  });

  it('keeps the Authorization header out of request logs', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write(chunk, _enc, done) { lines.push(String(chunk)); done(); } });
    const log = pino({ level: 'debug' }, sink);
    const database = await openDatabase('pglite:memory', { log: silent });
    await migrateToLatest(database.db, silent);
    const app = await buildApi({ db: database.db, shard: 's', adminToken: TOKEN, metrics: createMetrics({ shard: 's', defaultMetrics: false }), log });
    // A handler that logs request headers, as debugging code tends to.
    app.addHook('onRequest', async (req) => req.log.info({ request: { headers: req.headers } }, 'headers'));
    try {
      await app.inject({ method: 'GET', url: '/v1/vms', headers: { authorization: `Bearer ${TOKEN}` } });
      const text = lines.join('');
      expect(text).toContain('"authorization":"[redacted]"');
      expect(text).toContain('request completed');
      expect(text).not.toContain(TOKEN);
      // Request lines are debug (20), not info.
      expect(lines.filter((l) => l.includes('request completed')).every((l) => l.includes('"level":20'))).toBe(true);
    } finally {
      await app.close();
      await database.close();
    }
  });
});

describe('bearerMatches', () => {
  it('accepts only the exact token with the Bearer scheme', () => {
    expect(bearerMatches('Bearer abc', 'abc')).toBe(true);
    expect(bearerMatches('bearer abc', 'abc')).toBe(true);
    expect(bearerMatches('Bearer abcd', 'abc')).toBe(false);
    expect(bearerMatches('Bearer ', 'abc')).toBe(false);
    expect(bearerMatches('abc', 'abc')).toBe(false);
    expect(bearerMatches(undefined, 'abc')).toBe(false);
  });
});
