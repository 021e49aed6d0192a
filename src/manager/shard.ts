// Composition root: wires one shard's parts, starts them in a safe order and stops them.
//
// A manager process serves HTTP and metrics from its start, as active or standby. It becomes
// active when it takes the shard (db/lock.ts: advisory lock, lease, epoch); only then does it
// build the parts that act (providers, pool, intake, executor, reconciler, billing delivery).
// When it loses the shard (its lease not renewed in time, its connection cut, a write fenced by
// a newer epoch) it stops asking GitLab for jobs and stops every cloud mutation at once, lets go
// of its running jobs without ending them (the new active manager re-attaches), and waits as
// standby again.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { buildApi } from '../api/app.js';
import type { ShardConfig } from '../config/types.js';
import { waitForSsh } from '../connect/ssh.js';
import { openDatabase } from '../db/connect.js';
import { Fence, FencedError } from '../db/fence.js';
import type { Database } from '../db/schema.js';
import { acquireShardLock, readLease, type ManagerInstance, type ShardLease } from '../db/lock.js';
import { migrateToLatest } from '../db/migrate.js';
import { createCacheSigner, type CacheSigner } from '../cache/signer.js';
import { GitLabClient } from '../gitlab/client.js';
import { AuditRecord, startIsolationAudits } from './isolation-audit.js';
import { tiersOfCounts, type ManagerRole, type StatusSource } from '../api/status-source.js';
import { providerFactory, registeredProviders, supportsStandby, type ConnectOverride, type Provider } from '../providers/provider.js';
import '../providers/builtin.js';
import { realClock, type Clock } from './clock.js';
import { Executor } from './executor.js';
import { Intake } from './intake.js';
import { JobReports } from './job-reports.js';
import { cloudTelemetry, createMetrics, type Metrics } from './metrics.js';
import { BillingDelivery } from './billing-delivery.js';
import { loadDemandModels } from './demand.js';
import { DbResourceStore } from './resource-store.js';
import { failStrandedHandouts } from './fail-back.js';
import { Pool } from './pool.js';
import { Reconciler } from './reconciler.js';
import { keySource, shardKeys } from './secret-keys.js';
import { securityWarnings } from './security-warnings.js';
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
  /**
   * Resolve only once this manager is active (default true: tests and tools want a working
   * shard). `runner-fleet start` passes false: a standby serves /readyz (503) and /metrics while it waits.
   */
  waitActive?: boolean;
  /** Shard lease timing (tests use short ones): standby retry, renewal, lease length. */
  lease?: { retryMs?: number; renewMs?: number; leaseMs?: number };
  /** Report outbox poll interval and retry base (tests use short ones). */
  reportPollMs?: number;
  /**
   * `runner-fleet demo`: may run without secrets.key/keyFile (a key kept in the database) and
   * on the local provider without warnings. Anything else refuses to start without a key.
   */
  demo?: boolean;
  /** Test tools only (emulated clouds' sandbox ports); see ConnectOverride. Never from config. */
  connectOverride?: ConnectOverride;
}

/** The status page's ManagerRole: one definition. */
export type ShardRole = ManagerRole;

export interface Shard {
  config: ShardConfig;
  /** Process-wide: every write it makes is fenced by the epoch this manager holds. */
  store: Store;
  /** The parts of the current (or last) activation. */
  readonly pool: Pool;
  readonly reconciler: Reconciler;
  metrics: Metrics;
  api: FastifyInstance | null;
  /** Address the HTTP API listens on, e.g. http://127.0.0.1:8080. */
  url: string | null;
  /** This process's identity in the shard lease (and its sessions' application_name). */
  instance: ManagerInstance;
  role(): ShardRole;
  /** Resolves each time this manager becomes active (already resolved when it is). */
  whenActive(): Promise<void>;
  /** Drain: stop intake, let running jobs finish, delete warm VMs, then close. */
  drain(opts?: { timeoutMs?: number }): Promise<void>;
  /** Close without draining (VMs and running jobs stay; a restart or the standby finds them). */
  close(): Promise<void>;
}

/** What one term as the active manager built, and how it ends. */
interface Activation {
  pool: Pool;
  executor: Executor;
  intake: Intake;
  reconciler: Reconciler;
  /** Lost the shard: stop acting at once, leave running jobs to the next active manager. */
  stepDown(): Promise<void>;
  /** Shut down the parts (no drain). */
  close(): Promise<void>;
}

export async function startShard(opts: ShardOptions): Promise<Shard> {
  const { config } = opts;
  const clock = opts.clock ?? realClock;
  const log = opts.log.bindings()['shard'] ? opts.log : opts.log.child({ shard: config.shard });
  const instance: ManagerInstance = { id: `runner-fleet-${randomBytes(6).toString('hex')}`, host: `${hostname()}/${process.pid}` };
  // Before anything opens: no key (outside demo) or an unreadable key file stops the start here.
  const keys = keySource(config.secrets, opts.demo === true);
  const tlsCa = readTlsCa(config);
  const cacheSigner = config.cache ? await createCacheSigner(config.cache) : null;
  const warnings = securityWarnings(config, opts.demo === true);
  for (const w of warnings) log.warn(w);
  const database = await openDatabase(config.database.url, { log, applicationName: instance.id, ...(config.database.poolSize ? { poolSize: config.database.poolSize } : {}) });
  const db = database.db;
  let api: FastifyInstance | null = null;
  try {
    await migrateToLatest(db, log);
    const fence = new Fence(config.shard);
    const store = new Store(db, config.shard, await shardKeys(db, config.shard, keys, log), fence);
    const metrics = createMetrics({ shard: config.shard, defaultMetrics: opts.defaultMetrics ?? true });
    const gitlab = new GitLabClient({ url: config.gitlab.url, timeoutMs: config.gitlab.requestTimeoutMs, tlsCa, log, systemId: `s_${hostname().replace(/[^a-zA-Z0-9]/g, '').slice(0, 12)}_${config.shard}` });

    let role: ShardRole = 'standby';
    let current: Activation | null = null;
    let last: Activation | null = null;
    const stopping = new AbortController();
    const activeWaiters: (() => void)[] = [];
    // While startShard waits for the first activation: how to fail it.
    const first: { fail: ((err: unknown) => void) | null } = { fail: null };
    let heldLease: ShardLease | null = null;

    // Kept across activations: a standby shows the audit it ran while it was active.
    const audits = new AuditRecord();
    const status: StatusSource = {
      role: () => role,
      classes: () => Object.values(config.classes).map((c) => c.name),
      pool: (name) => {
        const counts = role === 'active' ? current?.pool.classCounts(name) : undefined;
        return counts ? tiersOfCounts(counts) : null;
      },
      isolation: () => ({ mode: config.isolation.audit, last: audits.snapshot() }),
    };

    let url: string | null = null;
    if (opts.http !== false) {
      api = await buildApi({
        db, shard: config.shard, adminToken: config.http.adminToken, billingToken: config.billing.token, metrics, log, warnings, status,
        ready: async () => {
          if (role === 'active') return true;
          if (role === 'stopped') return 'stopped: this manager is shutting down';
          const lease = await readLease(db, config.shard);
          const holder = lease && !lease.expired ? `manager ${lease.holderHost} (epoch ${lease.epoch})` : 'no live manager yet';
          return { status: 'standby', reason: `standby: shard ${config.shard} is held by ${holder}` };
        },
      });
      url = await api.listen({ host: config.http.listen.host, port: config.http.listen.port });
      log.info({ url, metrics: `${url}/metrics` }, 'HTTP API listening');
    }

    const activate = (lease: ShardLease) =>
      activateShard({ opts, config, log, clock, db, store, metrics, gitlab, tlsCa, cacheSigner, audits, canRequest: () => lease.valid() && role === 'active' });

    // The manager's life: standby until it takes the shard, active until it loses it, again.
    const life = (async () => {
      while (!stopping.signal.aborted) {
        let lease: ShardLease;
        try {
          lease = await acquireShardLock(db, config.shard, { log, instance, signal: stopping.signal, ...opts.lease });
        } catch (err) {
          if (stopping.signal.aborted) break;
          throw err;
        }
        fence.set(lease.epoch);
        let fenced!: (err: FencedError) => void;
        const fencedWrite = new Promise<FencedError>((r) => (fenced = r));
        const unhook = fence.onFenced((err) => fenced(err));
        let act: Activation;
        try {
          act = await activate(lease);
        } catch (err) {
          unhook();
          fence.set(null);
          await lease.release();
          if (first.fail) return first.fail(err);
          log.error({ err }, 'could not become active; retrying as standby');
          await sleep(opts.lease?.retryMs ?? 2000, stopping.signal).catch(() => {});
          continue;
        }
        current = last = act;
        heldLease = lease;
        first.fail = null;
        role = 'active';
        metrics.shardActive.set(1);
        metrics.shardEpoch.set(lease.epoch);
        metrics.shardTakeovers.inc();
        for (const w of activeWaiters.splice(0)) w();
        const stopped = new Promise<'stopped'>((r) => stopping.signal.addEventListener('abort', () => r('stopped'), { once: true }));
        const why = await Promise.race([lease.lost.then((e) => ({ reason: 'lease', err: e as Error })), fencedWrite.then((e) => ({ reason: 'fenced', err: e as Error })), stopped]);
        unhook();
        if (why === 'stopped') break; // close() or drain() ends this activation
        // Lost the shard: act no more, then wait as standby again.
        role = 'standby';
        current = null;
        fence.set(null);
        metrics.shardActive.set(0);
        metrics.shardStepDowns.inc({ reason: why.reason });
        log.error({ err: why.err.message, reason: why.reason }, 'this manager lost the shard: stepping down to standby');
        await act.stepDown().catch((err) => log.warn({ err }, 'step-down incomplete'));
        await lease.release();
        heldLease = null;
      }
    })();
    life.catch((err) => log.error({ err }, 'shard manager loop failed'));

    const whenActive = () => (role === 'active' ? Promise.resolve() : new Promise<void>((r) => activeWaiters.push(r)));
    if (opts.waitActive !== false) {
      await new Promise<void>((resolve, reject) => {
        first.fail = reject;
        activeWaiters.push(resolve);
      });
    }

    let closed: Promise<void> | null = null;
    const close = () =>
      (closed ??= (async () => {
        role = 'stopped';
        metrics.shardActive.set(0);
        stopping.abort();
        const act = current;
        current = null;
        if (act) await act.close().catch((err) => log.warn({ err }, 'closing the shard parts failed'));
        fence.set(null);
        await heldLease?.release();
        await life.catch(() => {});
        await api?.close().catch((err) => log.warn({ err }, 'closing the HTTP API failed'));
        await gitlab.close().catch(() => {});
        await database.close();
        metrics.stop();
      })());

    return {
      config, store, metrics, api, url, instance,
      get pool() {
        if (!last) throw new Error('this manager has not been active yet');
        return last.pool;
      },
      get reconciler() {
        if (!last) throw new Error('this manager has not been active yet');
        return last.reconciler;
      },
      role: () => role,
      whenActive,
      close,
      async drain({ timeoutMs = 3 * 3600_000 } = {}) {
        const act = current;
        if (!act) return close();
        log.info({ runningJobs: act.executor.active }, 'draining: no new jobs; waiting for running jobs');
        await act.intake.stop();
        act.pool.freeze();
        await Promise.race([act.executor.idle(), clock.sleep(timeoutMs)]);
        const deadline = clock.now() + 120_000;
        while (clock.now() < deadline && current === act) {
          await act.pool.kick();
          await act.pool.settle();
          if ((await store.liveVms()).length === 0) break;
          await clock.sleep(250);
        }
        log.info({ leftVms: (await store.liveVms()).length }, 'drained');
        await close();
      },
    };
  } catch (err) {
    await api?.close().catch(() => {});
    await database.close();
    throw err;
  }
}

interface ActivateDeps {
  opts: ShardOptions;
  config: ShardConfig;
  log: Logger;
  clock: Clock;
  db: Kysely<Database>;
  store: Store;
  metrics: Metrics;
  gitlab: GitLabClient;
  /** PEM of gitlab.tlsCaFile, for the jobs. */
  tlsCa: string | null;
  cacheSigner: CacheSigner | null;
  /** Where the isolation audits keep their last answer (the status page). */
  audits: AuditRecord;
  /** False once the lease may have run out: intake asks GitLab for nothing then. */
  canRequest: () => boolean;
}

/** Build and start the acting parts, in a safe order: recovery before intake. */
async function activateShard(d: ActivateDeps): Promise<Activation> {
  const { opts, config, log, clock, db, store, metrics, gitlab, tlsCa, cacheSigner, audits } = d;
  const cleanups: (() => Promise<unknown>)[] = [];
  const cleanup = async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch((err) => log.warn({ err }, 'cleanup failed'));
  };
  try {
    const providers = await createProviders(config, log, metrics, db, store, opts.connectOverride);
    cleanups.push(async () => Promise.all([...providers.values()].map((p) => p.close())));
    const stopAudits = await startIsolationAudits({ config, providers, metrics, log, record: audits });
    cleanups.push(async () => stopAudits());
    const demand = await loadDemandModels(db, config, clock.now(), (cls) => supportsStandby(providers.get(cls.provider)));
    const pool = new Pool({
      config, store, providers, metrics, log, clock, demand,
      probe: (info, o) => waitForSsh(info, { deadlineMs: o.deadlineMs, signal: o.signal }),
      ...(opts.tickMs ? { tickMs: opts.tickMs } : {}),
    });
    const reports = new JobReports({ store, gitlab, metrics, log: log.child({ component: 'reports' }), ...(opts.reportPollMs ? { pollMs: opts.reportPollMs, retryBaseMs: opts.reportPollMs } : {}) });
    const executor = new Executor({ config, store, pool, providers, gitlab, metrics, log, clock, reports, tlsCa, cache: cacheSigner, ...(config.jobs ? { unreachableMs: config.jobs.unreachableTimeoutMs } : {}) });
    const intake = new Intake({ config, store, pool, executor, gitlab, metrics, log, clock, demand, canRequest: d.canRequest });
    const reconciler = new Reconciler({ config, store, providers, gitlab, metrics, log, clock, executor });
    // Running jobs outlive a step-down: the next active manager re-attaches them.
    cleanups.push(() => executor.detachAll());

    const recovered = await reconciler.recover();
    if (recovered.jobsFailed || recovered.vmsDeleted || recovered.jobsReattached) log.info(recovered, 'recovered state from the database');
    reports.start();
    cleanups.push(() => reports.stop());
    pool.start();
    cleanups.push(() => pool.stop());
    intake.start();
    cleanups.push(() => intake.stop());
    const delivery = new BillingDelivery({ db, shard: config.shard, sinks: config.billing.webhooks, metrics, log: log.child({ component: 'billing' }), ...(opts.billingPollMs ? { pollMs: opts.billingPollMs, retryBaseMs: opts.billingPollMs } : {}) });
    delivery.start();
    cleanups.push(() => delivery.stop());
    const sweepTimer = setInterval(() => void reconciler.sweep().catch((err) => log.warn({ err }, 'sweep failed')), opts.sweepMs ?? 30_000);
    cleanups.push(async () => {
      clearInterval(sweepTimer);
      await reconciler.idle();
    });
    // Jobs handed to a manager that died before binding them: failed back, not left to GitLab's stuck-job timeout.
    const handouts = () => void failStrandedHandouts({ config, store, gitlab, metrics, clock }, log).catch((err) => log.warn({ err }, 'handout sweep failed'));
    handouts();
    const handoutTimer = setInterval(handouts, Math.min(opts.sweepMs ?? 10_000, 10_000));
    cleanups.push(async () => clearInterval(handoutTimer));

    return {
      pool, executor, intake, reconciler,
      close: cleanup,
      async stepDown() {
        // First what acts: no job request and no cloud call may start from here on.
        clearInterval(sweepTimer);
        clearInterval(handoutTimer);
        const stops = [intake.stop(), pool.stop()];
        await Promise.allSettled(stops);
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

async function createProviders(config: ShardConfig, log: Logger, metrics: Metrics, db: Kysely<Database>, store: Store, connectOverride?: ConnectOverride): Promise<Map<string, Provider>> {
  const used = new Set(Object.values(config.classes).map((c) => c.provider));
  const out = new Map<string, Provider>();
  for (const name of used) {
    const factory = providerFactory(name);
    if (!factory) throw new Error(`providers.${name}: unknown provider (known: ${registeredProviders().join(', ')})`);
    const classes = Object.fromEntries(Object.values(config.classes).filter((c) => c.provider === name).map((c) => [c.name, c.machine]));
    out.set(name, await factory(config.providers[name] ?? {}, { shard: config.shard, dataDir: config.dataDir, log: log.child({ provider: name }), telemetry: cloudTelemetry(metrics, name), resources: new DbResourceStore(db, config.shard, name, store.fence), classes, secrets: store.secretBox(name), ...(connectOverride ? { connectOverride } : {}) }));
  }
  return out;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(t), reject(signal.reason)), { once: true });
  });
}

/** `gitlab.tlsCaFile`, read once at start (a bad path stops the start, naming the field). */
function readTlsCa(config: ShardConfig): string | null {
  const path = config.gitlab.tlsCaFile;
  if (!path) return null;
  let pem: string;
  try {
    pem = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`gitlab.tlsCaFile: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error(`gitlab.tlsCaFile: ${path} holds no PEM certificate`);
  return pem;
}
