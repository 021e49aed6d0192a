// The status page in a real browser against a real shard: headless Chromium (the system's, via
// playwright-core) opens GET / of a shard on the local provider fed by the GitLab emulator. What
// the page shows is checked against the API (/v1/status, /v1/jobs, /v1/vms, /metrics); the
// per-VM and per-job parts must be absent without the admin token and appear with it, the token
// travelling only in the Authorization header. UPDATE_SCREENSHOT=1 rewrites docs/status-page.png.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
const why = `no browser at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`;
if (!haveChromium) console.log(`status page browser tests skipped: ${why}`);
const ADMIN = 'test-admin'; // shardYaml's http.adminToken
const CLASS = 'saas-linux-small-amd64';
const SLOW = 'slow-class';

interface ClassJson { name: string; poolFrom: string; pool: Record<string, number>; jobs: { running: number; waiting: number }; startLatency: { jobs: number; p50: number | null; p90: number | null; withinSlo: number | null } }
interface JobJson { id: string; class: string; state: string; queued_seconds: number | null; picked_at: string; started_at: string | null; failure_reason: string | null; result: string | null }

describe.skipIf(!haveChromium)(`status page in headless Chromium${haveChromium ? '' : ` (skipped: ${why})`}`, () => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;
  let browser: Browser;
  let page: Page;
  let slowJob: number;
  /** Every request the page made, to check where the token went. */
  const requests: { url: string; authorization: string | undefined }[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-status-'));
    // Real PostgreSQL when the environment has one, PGlite otherwise: one run is enough here.
    db = await freshDatabase(databaseKinds().at(-1)!);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const yaml = shardYaml({ shard: 'status', gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 2, max: 4 })
      // A class whose VMs never boot in time: its job fails as the fleet's fault, a "recent failure".
      .replace('providers:', `  ${SLOW}:\n    runnerToken: "slow-token"\n    provider: local\n    pool: { idle: 0, max: 1 }\n    bootTimeout: 1s\n    machine: { bootDelay: 5s }\nproviders:`);
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'silent' }), tickMs: 100, defaultMetrics: false });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
    page = await browser.newPage({ viewport: { width: 1180, height: 900 } });
    page.on('request', (r) => void requests.push({ url: r.url(), authorization: r.headers()['authorization'] }));
  });

  afterAll(async () => {
    await browser?.close();
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  async function api<T>(path: string, token?: string): Promise<T> {
    const res = await fetch(`${shard.url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    expect(res.status, path).toBe(200);
    return (path === '/metrics' ? res.text() : res.json()) as Promise<T>;
  }

  async function classJson(name: string): Promise<ClassJson> {
    return (await api<{ classes: ClassJson[] }>('/v1/status')).classes.find((c) => c.name === name)!;
  }

  /** The class rows as the page shows them, cell by cell. */
  function pageRows(): Promise<Record<string, string>[]> {
    return page.$$eval('#classes tr[data-class]', (rows) => rows.map((r) => Object.fromEntries(
      [['class-name', r.getAttribute('data-class')!], ['pool-from', r.getAttribute('data-pool-from')!], ...[...r.querySelectorAll('td[data-field]')].map((td) => [td.getAttribute('data-field')!, td.textContent!.trim()])],
    )));
  }

  /** The pool at rest: the job VMs deleted, the class warm again at its idle target. */
  async function settled(): Promise<void> {
    await waitUntil(async () => {
      const c = await classJson(CLASS);
      const slow = await classJson(SLOW);
      return c.poolFrom === 'pool' && c.pool['hot'] === 2 && c.pool['booting'] === 0 && c.pool['busy'] === 0 && c.pool['leaving'] === 0
        && c.jobs.running + c.jobs.waiting === 0 && Object.values(slow.pool).every((n) => n === 0);
    }, 30_000, 'the pool at rest');
  }

  it('shows the pool, jobs, start latency and SLO that the API and /metrics report, and refreshes by itself', async () => {
    const ok = gitlab.enqueue({ runnerToken: TOKEN, name: 'first', script: ['echo hello'], git: false });
    expect((await gitlab.waitForFinal(ok, 60_000)).state).toBe('success');
    slowJob = gitlab.enqueue({ runnerToken: 'slow-token', script: ['echo never'], git: false });
    expect(await gitlab.waitForFinal(slowJob, 60_000)).toMatchObject({ state: 'failed', failureReason: 'runner_system_failure' });
    await settled();

    await page.goto(`${shard.url}/?refresh=2`);
    expect(await page.textContent('h1')).toBe('runner-fleet · shard status');
    expect(await page.getAttribute('#role', 'data-role')).toBe('active');
    const status = await api<{ role: string; classes: ClassJson[] }>('/v1/status');
    expect(status.role).toBe('active');
    const rows = await pageRows();
    expect(rows.map((r) => r['class-name'])).toEqual(status.classes.map((c) => c.name));
    for (const c of status.classes) {
      const r = rows.find((x) => x['class-name'] === c.name)!;
      expect(r).toMatchObject({ 'pool-from': c.poolFrom, hot: String(c.pool['hot']), standby: String(c.pool['standby']), booting: String(c.pool['booting']), busy: String(c.pool['busy']), leaving: String(c.pool['leaving']), running: String(c.jobs.running), waiting: String(c.jobs.waiting), started: String(c.startLatency.jobs) });
    }

    // The one started job's latency as the jobs table has it: queue time plus pick-up to first line.
    const jobs = (await api<{ jobs: JobJson[] }>('/v1/jobs', ADMIN)).jobs;
    const first = jobs.find((j) => j.id === String(ok))!;
    const latency = first.queued_seconds! + (Date.parse(first.started_at!) - Date.parse(first.picked_at)) / 1000;
    const row = rows.find((r) => r['class-name'] === CLASS)!;
    expect(row['started']).toBe('1');
    expect(row['p50']).toBe(`${Math.round(latency * 10) / 10} s`);
    expect(row['p90']).toBe(row['p50']);
    // The same job in the SLO histogram: one observation, within 120 s, in the bucket holding that latency.
    const hist = latencyHistogram(await api<string>('/metrics'), CLASS);
    expect(hist.count).toBe(1);
    expect(row['within-slo']).toBe(`${((hist.buckets.get(120)! / hist.count) * 100).toFixed(1)}%`);
    const le = [...hist.buckets].find(([, n]) => n === 1)![0];
    const below = [...hist.buckets.keys()].filter((b) => b < le).at(-1) ?? 0;
    expect(latency).toBeGreaterThan(below);
    expect(latency).toBeLessThanOrEqual(le);
    // The failed cold start never started: it counts in no latency.
    expect(rows.find((r) => r['class-name'] === SLOW)).toMatchObject({ started: '0', p50: '–', 'within-slo': '–' });
    expect(await page.textContent('#isolation')).toContain('no audit has run here');

    // Refresh in place: a second job shows up without a reload (the marker survives).
    await page.evaluate('window.marker = 42');
    const before = await page.getAttribute('#generated', 'datetime');
    const second = gitlab.enqueue({ runnerToken: TOKEN, name: 'second', script: ['echo again'], git: false });
    expect((await gitlab.waitForFinal(second, 60_000)).state).toBe('success');
    // (Polled from here: the page's Content-Security-Policy refuses Playwright's string predicates.)
    await expect.poll(() => page.textContent(`#classes tr[data-class="${CLASS}"] td[data-field="started"]`), { timeout: 15_000 }).toBe('2');
    expect(await page.evaluate('window.marker')).toBe(42);
    expect(await page.getAttribute('#generated', 'datetime')).not.toBe(before);
    expect((await classJson(CLASS)).startLatency.jobs).toBe(2);
  });

  it('shows VMs, failures and findings only with the admin token, sent in the Authorization header alone', async () => {
    await settled();
    await page.goto(`${shard.url}/?refresh=2`);
    const vms = (await api<{ vms: { name: string; state: string; zone: string | null; class: string }[] }>('/v1/vms?state=live', ADMIN)).vms;
    expect(vms.length).toBe(2);
    const jobs = (await api<{ jobs: JobJson[] }>('/v1/jobs', ADMIN)).jobs;
    const failed = jobs.find((j) => j.id === String(slowJob))!;
    expect(failed.failure_reason).toBe('runner_system_failure');

    // Without the token: aggregates only, nothing per VM or per job anywhere in the document.
    expect(await page.isVisible('#token-form')).toBe(true);
    expect(await page.isHidden('#detail-body')).toBe(true);
    const anonymous = await page.content();
    for (const v of vms) expect(anonymous).not.toContain(v.name);
    expect(anonymous).not.toContain('runner_system_failure');
    expect(await page.textContent('#detail-status')).toContain('needs the admin token');

    // A wrong token is refused and forgotten.
    await page.fill('#token', 'not-the-token');
    await page.click('#token-form button');
    await expect.poll(() => page.textContent('#detail-status'), { timeout: 10_000 }).toContain('invalid bearer token');
    expect(await page.evaluate('sessionStorage.length')).toBe(0);
    expect(await page.isHidden('#detail-body')).toBe(true);

    await page.fill('#token', ADMIN);
    await page.click('#token-form button');
    await page.waitForSelector('#vms');
    const shown = await page.$$eval('#vms tr:not(:first-child)', (trs) => trs.map((tr) => Object.fromEntries([...tr.querySelectorAll('td')].map((td) => [td.getAttribute('data-field')!, td.textContent!]))));
    expect(shown.map((v) => [v['name'], v['class'], v['state'], v['zone']]).sort()).toEqual(vms.map((v) => [v.name, v.class, v.state, v.zone ?? '-']).sort());
    for (const v of shown) expect(v['age']).toMatch(/^\d+(s|m \d+s)$/);
    const failures = await page.$$eval('#failures tr:not(:first-child)', (trs) => trs.map((tr) => Object.fromEntries([...tr.querySelectorAll('td')].map((td) => [td.getAttribute('data-field')!, td.textContent!]))));
    expect(failures).toContainEqual(expect.objectContaining({ what: `job ${slowJob}`, class: SLOW, reason: failed.failure_reason }));
    // The cold-start VM that never booted, with the reason the database holds.
    const vmFailure = failures.find((f) => f['what']!.startsWith('vm '))!;
    const failedVm = (await api<{ vms: { id: string; failure: string | null }[] }>(`/v1/vms?class=${SLOW}`, ADMIN)).vms.find((v) => `vm ${v.id}` === vmFailure['what'])!;
    expect(vmFailure['reason']).toBe(failedVm.failure);
    expect(await page.textContent('#detail-body')).toContain('No findings.');
    // The detail survives the page's own refresh (and is fetched again with the header).
    const detailCalls = () => requests.filter((r) => r.url.endsWith('/v1/status/detail') && r.authorization === `Bearer ${ADMIN}`).length;
    const calls = detailCalls();
    await waitUntil(() => detailCalls() > calls, 10_000, 'a refresh of the detail');
    expect(await page.isVisible('#vms')).toBe(true);

    // The token went out in the Authorization header of the detail requests, never in a URL.
    for (const r of requests) expect(r.url).not.toContain(ADMIN);
    expect(requests.filter((r) => r.authorization !== undefined).every((r) => r.url.endsWith('/v1/status/detail'))).toBe(true);

    if (process.env['UPDATE_SCREENSHOT'] === '1') await page.screenshot({ path: join(import.meta.dirname, '../../docs/status-page.png'), fullPage: true });

    await page.click('#forget');
    expect(await page.isHidden('#detail-body')).toBe(true);
    expect(await page.evaluate('sessionStorage.length')).toBe(0);
  });
});

/** runner_fleet_job_start_latency_seconds for one class: cumulative bucket counts by `le`, and the count. */
function latencyHistogram(text: string, cls: string): { buckets: Map<number, number>; count: number } {
  const buckets = new Map<number, number>();
  let count = NaN;
  for (const m of text.matchAll(/^runner_fleet_job_start_latency_seconds_(bucket|count)\{([^}]*)\} (\S+)$/gm)) {
    const labels = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (labels['class'] !== cls) continue;
    if (m[1] === 'count') count = Number(m[3]);
    else if (labels['le'] !== '+Inf') buckets.set(Number(labels['le']), Number(m[3]));
  }
  return { buckets, count };
}
