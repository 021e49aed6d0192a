// The status page's data through the real API on a real database: aggregates for anyone,
// VMs, failures and isolation findings only with the admin token. The status source is the
// typed seam shard.ts fills; here it stands for a manager whose pool and audit we choose.
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import type { StatusSource } from '../../src/api/status-source.js';
import { openDatabase, type OpenDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import type { NewJob, NewVm } from '../../src/db/schema.js';
import { AuditRecord } from '../../src/manager/isolation-audit.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { startGceShard } from '../helpers/gce-shard.js';
import { waitUntil } from '../helpers/shard.js';

const TOKEN = 'status-admin-token';
const SHARD = 'shard-c';
const silent = pino({ level: 'silent' });
const ago = (s: number) => new Date(Date.now() - s * 1000);

function vm(id: string, over: Partial<NewVm> = {}): NewVm {
  return { id, shard: SHARD, class: 'small', provider: 'gcp', name: `rf-${id}`, state: 'ready', zone: 'europe-west1-b', public_key: 'ssh-ed25519 AAAA', private_key_enc: 'SECRET-PRIVATE-KEY', ...over };
}

/** A job picked `picked` s ago after `queued` s in GitLab's queue, its first line `toStart` s after pick-up. */
function job(id: number, picked: number, queued: number, toStart: number | null, over: Partial<NewJob> = {}): NewJob {
  return {
    shard: SHARD, id, class: 'small', vm_id: null, state: 'finished', token_enc: 'SECRET-JOB-TOKEN', timeout_seconds: 3600,
    picked_at: ago(picked), queued_seconds: queued, started_at: toStart === null ? null : ago(picked - toStart), ...over,
  };
}

describe.each(databaseKinds())('status API on %s', (kind) => {
  let target: TestDatabase;
  let database: OpenDatabase;
  let app: FastifyInstance;
  const audits = new AuditRecord();
  let role: 'active' | 'standby' = 'active';
  const source: StatusSource = {
    role: () => role,
    classes: () => ['small', 'big'],
    // The pool's view differs from the rows on purpose: the page must show the pool's.
    pool: (name) => (role === 'active' && name === 'small' ? { hot: 3, standby: 1, booting: 2, busy: 1, leaving: 1 } : null),
    isolation: () => ({ mode: 'warn', last: audits.snapshot() }),
  };
  const auth = { authorization: `Bearer ${TOKEN}` };

  beforeAll(async () => {
    target = await freshDatabase(kind);
    database = await openDatabase(target.url, { log: silent });
    await migrateToLatest(database.db, silent);
    await database.db.insertInto('vms').values([
      vm('vm-a', { created_at: ago(600) }),
      vm('vm-b', { state: 'running', job_id: 20, created_at: ago(120) }),
      vm('vm-c', { state: 'stopped', created_at: ago(3000) }),
      vm('vm-d', { state: 'failed', failure: 'boot: no SSH answer within 30s', updated_at: ago(60) }),
      vm('vm-e', { state: 'deleted', failure: 'quota exceeded', updated_at: ago(2 * 86400) }),
      vm('vm-other', { shard: 'shard-z', failure: 'not ours' }),
    ]).execute();
    await database.db.insertInto('jobs').values([
      job(20, 60, 2, 10, { state: 'running', vm_id: 'vm-b' }), // 12 s
      job(21, 5, 1, null, { state: 'running' }), // waiting for its VM
      job(22, 300, 100, 30, { result: 'success', finished_at: ago(200) }), // 130 s: misses the SLO
      job(23, 400, 3, 2, { result: 'failed', failure_reason: 'runner_system_failure', finished_at: ago(100) }), // 5 s
      job(24, 500, 15, 5, { result: 'failed', failure_reason: 'script_failure', finished_at: ago(400) }), // 20 s
      job(25, 7200, 1, 1, { result: 'success', finished_at: ago(7000) }), // outside the hour
      job(26, 100, 1, 1, { shard: 'shard-z' }),
    ]).execute();
    audits.record(new Date('2026-01-02T03:04:05Z'), new Map([
      ['gcp', [{ kind: 'vm-to-vm', rule: 'allow-internal', message: 'firewall rule "allow-internal" lets job VMs reach each other on all ports', classes: ['small'] }]],
    ]), ['aws: DescribeSecurityGroups timed out']);
    app = await buildApi({ db: database.db, shard: SHARD, adminToken: TOKEN, metrics: createMetrics({ shard: SHARD, defaultMetrics: false }), log: silent, status: source });
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await target?.drop();
  });

  it('reports per class the pool tiers, jobs running and waiting, and last-hour start latency with SLO attainment', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/status' });
    expect(res.statusCode).toBe(200);
    const body = res.json() as { role: string; shard: string; generatedAt: string; classes: unknown[]; isolation: unknown };
    expect(body.shard).toBe(SHARD);
    expect(body.role).toBe('active');
    expect(Math.abs(new Date(body.generatedAt).getTime() - Date.now())).toBeLessThan(10_000);
    expect(body.classes).toEqual([
      {
        name: 'small', poolFrom: 'pool', pool: { hot: 3, standby: 1, booting: 2, busy: 1, leaving: 1 }, jobs: { running: 1, waiting: 1 },
        // Latencies 5, 12, 20, 130 s: the median between 12 and 20, p90 70% of the way from 20 to 130.
        startLatency: { jobs: 4, p50: 16, p90: 97, withinSlo: 0.75 },
      },
      { name: 'big', poolFrom: 'database', pool: { hot: 0, standby: 0, booting: 0, busy: 0, leaving: 0 }, jobs: { running: 0, waiting: 0 }, startLatency: { jobs: 0, p50: null, p90: null, withinSlo: null } },
    ]);
    expect(body.isolation).toEqual({ mode: 'warn', lastRunAt: '2026-01-02T03:04:05.000Z', findings: 1, byKind: { 'vm-to-vm': 1, 'others-can-reach': 0, 'manager-cannot-reach': 0 }, failedProviders: 1 });
    // Aggregates only: no VM, job, rule or error text.
    expect(res.body).not.toMatch(/rf-vm|allow-internal|timed out|SECRET|runner_system_failure/);
  });

  it('counts tiers from the VM rows while this manager has no pool (standby)', async () => {
    role = 'standby';
    try {
      const body = (await app.inject({ method: 'GET', url: '/v1/status' })).json() as { role: string; classes: { name: string; poolFrom: string; pool: unknown }[] };
      expect(body.role).toBe('standby');
      expect(body.classes[0]).toMatchObject({ name: 'small', poolFrom: 'database', pool: { hot: 1, standby: 1, booting: 0, busy: 1, leaving: 1 } });
      const page = await app.inject({ method: 'GET', url: '/' });
      expect(page.body).toContain('data-role="standby"');
      expect(page.body).toContain('counted from the database');
    } finally {
      role = 'active';
    }
  });

  it('serves the page with the aggregates, a strict Content-Security-Policy, and nothing per VM or per job', async () => {
    const res = await app.inject({ method: 'GET', url: '/', headers: { accept: 'text/html' } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-security-policy']).toMatch(/^default-src 'none'; script-src 'sha256-[A-Za-z0-9+/=]+'; style-src 'sha256-/);
    expect(res.headers['cache-control']).toBe('no-store');
    const row = /<tr data-class="small"[^]*?<\/tr>/.exec(res.body)![0];
    const cells = Object.fromEntries([...row.matchAll(/data-field="([a-z0-9-]+)"[^>]*>([^<]*)</g)].map((m) => [m[1], m[2]]));
    expect(cells).toEqual({ class: 'small', hot: '3', standby: '1', booting: '2', busy: '1', leaving: '1', running: '1', waiting: '1', started: '4', p50: '16 s', p90: '97 s', 'within-slo': '75.0%' });
    expect(res.body).toContain('1 finding</span> (vm-to-vm 1)');
    expect(res.body).not.toMatch(/rf-vm|europe-west1|allow-internal|timed out|SECRET|runner_system_failure|boot: no SSH/);
    expect(res.body).not.toContain(TOKEN);
  });

  it('gives VMs with state, zone and age, recent failures with their reason, and the findings only to the admin token', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong' }]) {
      const res = await app.inject({ method: 'GET', url: '/v1/status/detail', headers });
      expect(res.statusCode).toBe(401);
      expect(res.body).not.toMatch(/rf-vm|allow-internal/);
    }
    const res = await app.inject({ method: 'GET', url: '/v1/status/detail', headers: auth });
    expect(res.statusCode).toBe(200);
    const d = res.json() as { vms: { name: string; state: string; zone: string; age_seconds: number; job_id: string | null }[]; failures: unknown[]; isolation: unknown };
    expect(d.vms.map((v) => [v.name, v.state, v.zone, v.job_id])).toEqual([
      ['rf-vm-d', 'failed', 'europe-west1-b', null], ['rf-vm-b', 'running', 'europe-west1-b', '20'], ['rf-vm-a', 'ready', 'europe-west1-b', null], ['rf-vm-c', 'stopped', 'europe-west1-b', null],
    ]);
    expect(d.vms.find((v) => v.name === 'rf-vm-a')!.age_seconds).toBeGreaterThanOrEqual(600);
    expect(d.vms.find((v) => v.name === 'rf-vm-a')!.age_seconds).toBeLessThan(700);
    // Newest first; the day-old VM failure, the script's own failure and other shards' are left out.
    expect(d.failures).toEqual([
      { what: 'vm', id: 'vm-d', class: 'small', reason: 'boot: no SSH answer within 30s', at: expect.any(String) },
      { what: 'job', id: '23', class: 'small', reason: 'runner_system_failure', at: expect.any(String) },
    ]);
    expect(d.isolation).toEqual({
      findings: [{ provider: 'gcp', kind: 'vm-to-vm', rule: 'allow-internal', message: 'firewall rule "allow-internal" lets job VMs reach each other on all ports', classes: ['small'] }],
      failed: ['aws: DescribeSecurityGroups timed out'],
    });
    expect(res.body).not.toContain('SECRET');
  });

  it.each([
    ['/?refresh=1', 'querystring.refresh: must be >= 2'],
    ['/?token=abc', 'querystring.token: unknown parameter'],
    ['/v1/status?class=small', 'querystring.class: unknown parameter'],
  ])('rejects %s with a 400 naming the field', async (url, error) => {
    const res = await app.inject({ method: 'GET', url });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({ error });
  });
});

describe('status of a live shard on gcp (GCE emulator)', () => {
  it("shows the running shard's role, its pool's tiers and its isolation audit's findings", async () => {
    const allowManager = { name: 'allow-manager-ssh', network: 'global/networks/default', sourceRanges: ['10.0.0.5/32'], targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'tcp', ports: ['22'] }] };
    const mesh = { name: 'mesh', network: 'global/networks/default', sourceTags: ['runner-vm'], targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'icmp' }] };
    const env = await startGceShard({
      shard: 'status-gce', className: 'linux-gce', token: 'status-gce-token', pool: '{ idle: 1, max: 2 }', adminToken: TOKEN,
      isolation: '{ managerRanges: ["10.0.0.5/32"], audit: warn }', firewalls: [allowManager, mesh],
    });
    try {
      const url = env.shard.url!;
      const get = async (path: string, headers: Record<string, string> = {}) => {
        const res = await fetch(`${url}${path}`, { headers });
        return { status: res.status, text: await res.text() };
      };
      let summary!: { role: string; classes: { name: string; pool: Record<string, number> }[]; isolation: Record<string, unknown> };
      await waitUntil(async () => {
        summary = JSON.parse((await get('/v1/status')).text) as typeof summary;
        return summary.classes[0]?.pool['hot'] === 1;
      }, 30_000, 'one warm VM');
      expect(summary.role).toBe('active');
      expect(summary.classes).toEqual([expect.objectContaining({ name: 'linux-gce', poolFrom: 'pool', pool: { hot: 1, standby: 0, booting: 0, busy: 0, leaving: 0 } })]);
      expect(summary.isolation).toMatchObject({ mode: 'warn', findings: 1, byKind: { 'vm-to-vm': 1, 'others-can-reach': 0, 'manager-cannot-reach': 0 }, failedProviders: 0 });
      expect(Date.now() - Date.parse(summary.isolation['lastRunAt'] as string)).toBeLessThan(60_000);

      const page = await get('/');
      expect(page.text).toContain('data-role="active"');
      expect(page.text).toContain('1 finding</span> (vm-to-vm 1)');
      expect(page.text).not.toContain('mesh');

      expect((await get('/v1/status/detail')).status).toBe(401);
      const detail = JSON.parse((await get('/v1/status/detail', { authorization: `Bearer ${TOKEN}` })).text) as { vms: { class: string; state: string; zone: string }[]; isolation: unknown };
      expect(detail.vms).toEqual([expect.objectContaining({ class: 'linux-gce', state: 'ready', zone: 'us-central1-a' })]);
      expect(detail.isolation).toEqual({ findings: [expect.objectContaining({ provider: 'gcp', kind: 'vm-to-vm', rule: 'mesh', classes: ['linux-gce'] })], failed: [] });
    } finally {
      await env.close();
    }
  });
});
