// Composition root: wires one shard's parts, starts them in a safe order and stops them.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { buildApi } from '../api/app.js';
import type { ShardConfig } from '../config/types.js';
import { waitForSsh } from '../connect/ssh.js';
import { openDatabase } from '../db/connect.js';
import type { Database } from '../db/schema.js';
import { acquireShardLock } from '../db/lock.js';
import { migrateToLatest } from '../db/migrate.js';
import { GitLabClient } from '../gitlab/client.js';
import { deriveKey } from '../isolation/keys.js';
import { startIsolationAudits } from './isolation-audit.js';
import { providerFactory, registeredProviders, supportsStandby, type Provider, type SecretBox } from '../providers/provider.js';
import '../providers/builtin.js';
import { realClock, type Clock } from './clock.js';
import { Executor } from './executor.js';
import { Intake } from './intake.js';
import { JobReports } from './job-reports.js';
import { cloudTelemetry, createMetrics, type Metrics } from './metrics.js';
import { BillingDelivery } from './billing-delivery.js';
import { loadDemandModels } from './demand.js';
import { DbResourceStore } from './resource-store.js';
import { Pool } from './pool.js';
import { Reconciler } from './reconciler.js';
import { Store } from './store.js';

export interface ShardOptions {
  config: ShardConfig;
  log: Logger;
  clock?: Clock;
  /** Serve HTTP (default true). */
  http?: boolean;
  /** Pool tick interval (tests use a short one). */
  tickMs?: number;
  /** Reconciler sweep interval. */
  sweepMs?: number;
  defaultMetrics?: boolean;
  /** Billing webhook poll interval and retry base (tests use short ones). */
  billingPollMs?: number;
  /** Report outbox poll interval and retry base (tests use short ones). */
  reportPollMs?: number;
}

export interface Shard {
  config: ShardConfig;
  store: Store;
  pool: Pool;
  metrics: Metrics;
  api: FastifyInstance | null;
  /** Address the HTTP API listens on, e.g. http://127.0.0.1:8080. */
  url: string | null;
  reconciler: Reconciler;
  /** Drain: stop intake, let running jobs finish, delete warm VMs, then close. */
  drain(opts?: { timeoutMs?: number }): Promise<void>;
  /** Close without draining (VMs stay; a restart finds them). */
  close(): Promise<void>;
}

export async function startShard(opts: ShardOptions): Promise<Shard> {
  const { config } = opts;
  const clock = opts.clock ?? realClock;
  const log = opts.log.bindings()['shard'] ? opts.log : opts.log.child({ shard: config.shard });
  const database = await openDatabase(config.database.url, { log });
  const cleanups: (() => Promise<unknown>)[] = [() => database.close()];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await c().catch((err) => log.warn({ err }, 'cleanup failed'));
  };
  try {
    await migrateToLatest(database.db, log);
    const unlock = await acquireShardLock(database.db, config.shard, { log });
    cleanups.push(unlock);
    const secretKey = config.secrets.key
      ? deriveKey(config.secrets.key)
      : deriveKey(await Store.databaseHeldKey(database.db, config.shard, () => randomBytes(32).toString('hex')));
    if (!config.secrets.key) log.warn('secrets.key is not set: VM keys and job tokens are encrypted with a key kept in the database');
    const store = new Store(database.db, config.shard, secretKey);
    const metrics = createMetrics({ shard: config.shard, defaultMetrics: opts.defaultMetrics ?? true });
    const providers = await createProviders(config, log, metrics, database.db, { seal: (s) => store.encrypt(s), open: (s) => store.tryDecrypt(s) });
    cleanups.push(async () => Promise.all([...providers.values()].map((p) => p.close())));
    const stopAudits = await startIsolationAudits({ config, providers, metrics, log });
    cleanups.push(async () => stopAudits());
    const gitlab = new GitLabClient({ url: config.gitlab.url, timeoutMs: config.gitlab.requestTimeoutMs, log, systemId: `s_${hostname().replace(/[^a-zA-Z0-9]/g, '').slice(0, 12)}_${config.shard}` });
    const demand = await loadDemandModels(database.db, config, clock.now(), (cls) => supportsStandby(providers.get(cls.provider)));
    const pool = new Pool({
      config, store, providers, metrics, log, clock, demand,
      probe: (info, o) => waitForSsh(info, { deadlineMs: o.deadlineMs, signal: o.signal }),
      ...(opts.tickMs ? { tickMs: opts.tickMs } : {}),
    });
    const reports = new JobReports({ store, gitlab, metrics, log: log.child({ component: 'reports' }), ...(opts.reportPollMs ? { pollMs: opts.reportPollMs, retryBaseMs: opts.reportPollMs } : {}) });
    const executor = new Executor({ config, store, pool, providers, gitlab, metrics, log, clock, reports, ...(config.jobs ? { unreachableMs: config.jobs.unreachableTimeoutMs } : {}) });
    const intake = new Intake({ config, store, pool, executor, gitlab, metrics, log, clock, demand });
    const reconciler = new Reconciler({ config, store, providers, gitlab, metrics, log, clock, executor });

    const recovered = await reconciler.recover();
    if (recovered.jobsFailed || recovered.vmsDeleted || recovered.jobsReattached) log.info(recovered, 'recovered state from the database');
    reports.start();
    cleanups.push(() => reports.stop());
    pool.start();
    intake.start();
    const delivery = new BillingDelivery({ db: database.db, shard: config.shard, sinks: config.billing.webhooks, metrics, log: log.child({ component: 'billing' }), ...(opts.billingPollMs ? { pollMs: opts.billingPollMs, retryBaseMs: opts.billingPollMs } : {}) });
    delivery.start();
    cleanups.push(() => delivery.stop());
    const sweepTimer = setInterval(() => void reconciler.sweep().catch((err) => log.warn({ err }, 'sweep failed')), opts.sweepMs ?? 30_000);
    cleanups.push(async () => clearInterval(sweepTimer));
    cleanups.push(() => pool.stop());
    cleanups.push(() => intake.stop());

    let api: FastifyInstance | null = null;
    let url: string | null = null;
    if (opts.http !== false) {
      const app = await buildApi({ db: database.db, shard: config.shard, adminToken: config.http.adminToken, billingToken: config.billing.token, metrics, log });
      api = app;
      url = await app.listen({ host: config.http.listen.host, port: config.http.listen.port });
      cleanups.push(() => app.close());
      log.info({ url, metrics: `${url}/metrics` }, 'HTTP API listening');
    }

    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      await cleanup();
    };
    return {
      config, store, pool, metrics, api, url, reconciler,
      close,
      async drain({ timeoutMs = 3 * 3600_000 } = {}) {
        log.info({ runningJobs: executor.active }, 'draining: no new jobs; waiting for running jobs');
        await intake.stop();
        pool.freeze();
        await Promise.race([executor.idle(), clock.sleep(timeoutMs)]);
        const deadline = clock.now() + 120_000;
        while (clock.now() < deadline) {
          await pool.kick();
          await pool.settle();
          if ((await store.liveVms()).length === 0) break;
          await clock.sleep(250);
        }
        log.info({ leftVms: (await store.liveVms()).length }, 'drained');
        await close();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

async function createProviders(config: ShardConfig, log: Logger, metrics: Metrics, db: Kysely<Database>, secrets: SecretBox): Promise<Map<string, Provider>> {
  const used = new Set(Object.values(config.classes).map((c) => c.provider));
  const out = new Map<string, Provider>();
  for (const name of used) {
    const factory = providerFactory(name);
    if (!factory) throw new Error(`providers.${name}: unknown provider (known: ${registeredProviders().join(', ')})`);
    const classes = Object.fromEntries(Object.values(config.classes).filter((c) => c.provider === name).map((c) => [c.name, c.machine]));
    out.set(name, await factory(config.providers[name] ?? {}, { shard: config.shard, dataDir: config.dataDir, log: log.child({ provider: name }), telemetry: cloudTelemetry(metrics, name), resources: new DbResourceStore(db, config.shard, name), classes, secrets }));
  }
  return out;
}
