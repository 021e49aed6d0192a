// One driver path for both databases: kysely's PostgresDialect over a `pg` pool, pointed at a
// PostgreSQL server, or at an in-process PGlite served on a loopback port by pglite-socket.
// (kysely-pglite interleaves concurrent transactions on PGlite's single session: docs/architecture.md "Database".)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { readMigrationFiles } from './migrate.js';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Logger } from 'pino';
import type { Database } from './schema.js';

export type DatabaseKind = 'postgres' | 'pglite';

export interface OpenDatabase {
  db: Kysely<Database>;
  kind: DatabaseKind;
  /** Ends the pool, then (PGlite) stops the socket server and closes the database. Idempotent. */
  close(): Promise<void>;
}

export interface OpenOptions {
  log: Logger;
  /** Pool size for postgres:// (default 10). PGlite always uses one connection. */
  poolSize?: number;
  /** How long a query waits for a free pool connection, in ms (default 10 s). */
  connectTimeoutMs?: number;
  /** Server-side statement_timeout for postgres:// in ms (default 60 s; 0 disables). */
  statementTimeoutMs?: number;
  /** application_name of every session (default runner-fleet): a takeover ends a stale manager's sessions by it. */
  applicationName?: string;
}

// Other modules (the shard lock) need to know whether sessions are real.
const kinds = new WeakMap<Kysely<Database>, DatabaseKind>();
// Sessions that died, by server process id: the shard lock learns at once that its session is gone.
const lostSessions = new WeakMap<Kysely<Database>, Set<(pid: number, err: Error) => void>>();

/** Calls `fn` with the backend pid of every session of `db` that fails or ends unexpectedly. */
export function onSessionLost(db: Kysely<Database>, fn: (pid: number, err: Error) => void): () => void {
  const set = lostSessions.get(db);
  if (!set) return () => {};
  set.add(fn);
  return () => set.delete(fn);
}

/** The kind of a database opened by openDatabase, or undefined for one opened elsewhere. */
export function databaseKind(db: Kysely<Database>): DatabaseKind | undefined {
  return kinds.get(db);
}

export async function openDatabase(url: string, opts: OpenOptions): Promise<OpenDatabase> {
  if (/^postgres(ql)?:\/\//.test(url)) return openPostgres(url, opts);
  if (url.startsWith('pglite:')) return openPglite(url.slice('pglite:'.length), opts);
  throw new Error(`unsupported database URL (expected postgres://..., pglite:memory or pglite:<path>): ${redactUrl(url)}`);
}

async function openPostgres(url: string, opts: OpenOptions): Promise<OpenDatabase> {
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.poolSize ?? 10,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 10_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: opts.statementTimeoutMs ?? 60_000,
    // A transaction left open by a crashed code path must not hold row locks forever.
    idle_in_transaction_session_timeout: 5 * 60_000,
    application_name: opts.applicationName ?? 'runner-fleet',
  });
  const lost = new Set<(pid: number, err: Error) => void>();
  watchConnections(pool, opts.log, lost);
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  kinds.set(db, 'postgres');
  lostSessions.set(db, lost);
  try {
    await pool.query('SELECT 1');
  } catch (err) {
    await db.destroy().catch(() => {});
    throw new Error(`cannot connect to ${redactUrl(url)}: ${(err as Error).message}`, { cause: err });
  }
  opts.log.debug({ url: redactUrl(url) }, 'database connected');
  return { db, kind: 'postgres', close: once(() => db.destroy()) };
}

/**
 * PGlite's own start parameters plus a 16 MB buffer pool instead of PostgreSQL's 128 MB: WASM
 * memory never shrinks, and the pool's pages stay resident (-115 MiB RSS measured). A buffer miss
 * costs a copy from PGlite's file system (memory, or the OS page cache), and a shard's hot rows
 * fit. initdb's temporary instance gets the same options.
 */
const PGLITE_START_PARAMS = [...PGlite.defaultStartParams, '-c', 'shared_buffers=16MB'];

/**
 * initdb of a new on-disk PGlite data directory, and its migrations, in a child process that
 * exits after them: WASM memory never shrinks, and initdb grows it to ~630 MiB (818 MiB RSS)
 * where opening the finished directory takes ~200 (276 MiB RSS), measured on Node 20 with PGlite
 * 0.5. Not a worker thread: the memory a worker freed stayed in this process (a first start idled
 * at 350 MiB RSS against 241-249 for later ones). The child runs kysely's own Migrator over the
 * same files, so the shard's migrateToLatest finds them applied.
 */
async function initPgliteDir(location: string): Promise<void> {
  if (existsSync(join(location, 'PG_VERSION'))) return;
  const req = createRequire(import.meta.url);
  const paths = { pglite: req.resolve('@electric-sql/pglite'), socket: req.resolve('@electric-sql/pglite-socket'), pg: req.resolve('pg'), kysely: req.resolve('kysely') };
  const input = JSON.stringify({ paths, location, startParams: PGLITE_START_PARAMS, migrations: await readMigrationFiles() });
  const script = `let raw = '';
    process.stdin.setEncoding('utf8').on('data', (c) => (raw += c)).on('end', () => {
      const w = JSON.parse(raw);
      const { PGlite } = require(w.paths.pglite);
      const { PGLiteSocketServer } = require(w.paths.socket);
      const pg = require(w.paths.pg);
      const { Kysely, PostgresDialect, Migrator, sql } = require(w.paths.kysely);
      (async () => {
        const db = await PGlite.create({ dataDir: w.location, startParams: w.startParams });
        const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port: 0, maxConnections: 2 });
        await server.start();
        const conn = server.getServerConn();
        const at = conn.lastIndexOf(':');
        const k = new Kysely({ dialect: new PostgresDialect({ pool: new pg.Pool({ host: conn.slice(0, at), port: Number(conn.slice(at + 1)), user: 'postgres', database: 'postgres', max: 1 }) }) });
        const provider = { getMigrations: async () => Object.fromEntries(w.migrations.map((m) => [m.name, { up: async (d) => void (await sql.raw(m.text).execute(d)) }])) };
        const result = await new Migrator({ db: k, provider }).migrateToLatest();
        await k.destroy();
        await server.stop();
        await db.close();
        if (result.error) throw result.error;
      })().then(() => process.exit(0), (err) => { process.stderr.write(String((err && err.stack) || err) + '\\n'); process.exit(1); });
    });`;
  await new Promise<void>((resolve, reject) => {
    // No NODE_OPTIONS: a test runner's loader or an operator's heap flags are not the child's business.
    const { NODE_OPTIONS: _ignored, ...env } = process.env;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'ignore', 'pipe'], env });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => void (stderr = (stderr + String(c)).slice(-2000)));
    child.on('error', reject);
    child.on('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`initializing PGlite in ${location} failed (exit ${code ?? signal}): ${stderr.trim().slice(-500)}`))));
    child.stdin.on('error', () => {}); // a child that died early: its exit says why
    child.stdin.end(input);
  });
}

async function openPglite(location: string, opts: OpenOptions): Promise<OpenDatabase> {
  const inMemory = location === 'memory';
  const started = Date.now();
  if (!inMemory) {
    mkdirSync(location, { recursive: true });
    await initPgliteDir(location);
  }
  const pglite = await PGlite.create({ ...(inMemory ? {} : { dataDir: location }), startParams: PGLITE_START_PARAMS });
  // Loopback only, port chosen by the OS. Two connections let a dropped socket reconnect while
  // its old handler is still being torn down; the pool itself never holds more than one.
  const server = new PGLiteSocketServer({ db: pglite, host: '127.0.0.1', port: 0, maxConnections: 2 });
  try {
    await server.start();
  } catch (err) {
    await pglite.close().catch(() => {});
    throw err;
  }
  const [host, port] = splitHostPort(server.getServerConn());
  const pool = new pg.Pool({
    host,
    port,
    user: 'postgres',
    database: 'postgres',
    // PGlite has one session: concurrent transactions must queue in the pool, not interleave.
    max: 1,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 10_000,
    idleTimeoutMillis: 0,
  });
  watchConnections(pool, opts.log);
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  kinds.set(db, 'pglite');
  const close = once(async () => {
    await db.destroy().catch((err) => opts.log.warn({ err }, 'closing the database pool failed'));
    await server.stop();
    await pglite.close();
  });
  try {
    await pool.query('SELECT 1');
  } catch (err) {
    await close();
    throw err;
  }
  opts.log.debug({ location: inMemory ? 'memory' : location, ms: Date.now() - started, socket: `${host}:${port}` }, 'embedded PGlite started');
  return { db, kind: 'pglite', close };
}

/**
 * A connection that dies emits 'error': the pool listens only while a client is idle, and an
 * unheard 'error' on a checked-out client (the shard lock's, a transaction's) would crash the
 * process. The failed query or the next use reports the failure; the pool drops the client.
 */
function watchConnections(pool: pg.Pool, log: Logger, lost?: Set<(pid: number, err: Error) => void>): void {
  pool.on('error', (err) => log.warn({ err }, 'idle database connection failed'));
  pool.on('connect', (client) =>
    client.on('error', (err) => {
      log.warn({ err }, 'database connection failed');
      const pid = (client as unknown as { processID?: number }).processID;
      if (pid !== undefined) for (const fn of lost ?? []) fn(pid, err);
    }),
  );
}

function splitHostPort(conn: string): [string, number] {
  const i = conn.lastIndexOf(':');
  return [conn.slice(0, i), Number(conn.slice(i + 1))];
}

/** The URL with its password replaced, for logs and errors. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:/@]*):[^@/]*@/, '//$1:***@');
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | null = null;
  return () => (p ??= fn());
}
