// Billing events for feed and delivery tests, written the way the manager writes them.
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../src/db/schema.js';
import { billingRow, buildBillingEvent, type BillingEvent } from '../../src/manager/billing.js';

export function sampleEvent(shard: string, jobId: number, finishedAt = new Date(Date.UTC(2026, 10, 24, 12, 0, 0) + jobId * 1000)): BillingEvent {
  return buildBillingEvent({
    shard, jobId, pipelineId: 7000 + (jobId % 13), projectId: 500 + (jobId % 7), namespaceId: 40, rootNamespaceId: 4,
    runnerClass: 'saas-linux-small-amd64', costFactor: 1, provider: 'local', machineType: null,
    startedAt: new Date(finishedAt.getTime() - 90_000), finishedAt, outcome: 'success', failureReason: null,
  });
}

/** `n` events for jobs first..first+n-1, in batches of one multi-row INSERT each. */
export async function insertEvents(db: Kysely<Database>, shard: string, first: number, n: number, batch = 1000): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i += batch) {
    const evs = Array.from({ length: Math.min(batch, n - i) }, (_, k) => sampleEvent(shard, first + i + k));
    await db.insertInto('billing_events').values(evs.map(billingRow)).execute();
    ids.push(...evs.map((e) => e.id));
  }
  await feedSettled(db);
  return ids;
}

/**
 * Waits until every transaction committed so far is visible to the feed (below every session's
 * xmin). On a server other test files share, their open transactions hold that back a while.
 */
export async function feedSettled(db: Kysely<Database>, timeoutMs = 30_000): Promise<void> {
  const { rows } = await sql<{ x: string }>`SELECT pg_current_xact_id()::text AS x`.execute(db);
  const mark = rows[0]!.x;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await sql<{ ok: boolean }>`SELECT pg_snapshot_xmin(pg_current_snapshot()) > ${mark}::xid8 AS ok`.execute(db);
    if (r.rows[0]?.ok) return;
    if (Date.now() > deadline) throw new Error(`billing feed not settled after ${timeoutMs} ms: a session holds a transaction open`);
    await new Promise((res) => setTimeout(res, 50));
  }
}
