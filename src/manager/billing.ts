// Compute-minute events (docs/billing.md: minutes = duration / 60 x cost factor). The pure part
// builds the event; `writeBillingEvent` inserts it inside the transaction that closes the job.
import { createHash } from 'node:crypto';
import type { Insertable, Transaction } from 'kysely';
import type { BillingEventsTable, Database } from '../db/schema.js';

export const BILLING_EVENT_TYPE = 'compute_minutes.v1';

export interface BillingInput {
  shard: string;
  jobId: number;
  pipelineId: number | null;
  projectId: number | null;
  namespaceId: number | null;
  rootNamespaceId: number | null;
  runnerClass: string;
  costFactor: number;
  provider: string;
  machineType: string | null;
  startedAt: Date;
  finishedAt: Date;
  outcome: 'success' | 'failed' | 'canceled';
  failureReason: string | null;
}

export interface BillingEvent {
  id: string;
  type: typeof BILLING_EVENT_TYPE;
  shard: string;
  jobId: number;
  pipelineId: number | null;
  projectId: number | null;
  namespaceId: number | null;
  rootNamespaceId: number | null;
  runnerClass: string;
  costFactor: number;
  provider: string;
  machineType: string | null;
  startedAt: string;
  finishedAt: string;
  durationSeconds: number;
  computeMinutes: string;
  outcome: string;
  billable: boolean;
}

/**
 * Minutes as a decimal string rounded half-up to 6 places, computed in integer micro-minutes
 * so float error never reaches the bill.
 */
export function computeMinutes(durationMs: number, costFactor: number): string {
  const factorMicro = Math.round(costFactor * 1e6);
  // durationMs / 60000 * factor, in micro-minutes: durationMs * factorMicro / 60000
  const num = BigInt(Math.max(0, Math.round(durationMs))) * BigInt(factorMicro);
  const den = 60_000n;
  const micro = (num * 2n + den) / (2n * den); // round half up
  const whole = micro / 1_000_000n;
  const frac = (micro % 1_000_000n).toString().padStart(6, '0');
  return `${whole}.${frac}`;
}

/** Stable id: the same job on the same shard always gets the same event id. */
export function billingEventId(shard: string, jobId: number): string {
  const h = createHash('sha256').update(`${shard}/${jobId}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${((parseInt(h.slice(16, 18), 16) & 0x3f) | 0x80).toString(16)}${h.slice(18, 20)}-${h.slice(20, 32)}`;
}

export function buildBillingEvent(input: BillingInput): BillingEvent {
  const durationMs = Math.max(0, input.finishedAt.getTime() - input.startedAt.getTime());
  return {
    id: billingEventId(input.shard, input.jobId),
    type: BILLING_EVENT_TYPE,
    shard: input.shard,
    jobId: input.jobId,
    pipelineId: input.pipelineId,
    projectId: input.projectId,
    namespaceId: input.namespaceId,
    rootNamespaceId: input.rootNamespaceId,
    runnerClass: input.runnerClass,
    costFactor: input.costFactor,
    provider: input.provider,
    machineType: input.machineType,
    startedAt: input.startedAt.toISOString(),
    finishedAt: input.finishedAt.toISOString(),
    durationSeconds: durationMs / 1000,
    computeMinutes: computeMinutes(durationMs, input.costFactor),
    outcome: input.outcome,
    // Users do not pay for our failures.
    billable: input.failureReason !== 'runner_system_failure',
  };
}

/** The outbox row of an event (the feed serves `payload` verbatim). */
export function billingRow(ev: BillingEvent): Insertable<BillingEventsTable> {
  return {
    id: ev.id,
    shard: ev.shard,
    job_id: ev.jobId,
    class: ev.runnerClass,
    provider: ev.provider,
    machine_type: ev.machineType,
    cost_factor: ev.costFactor,
    started_at: ev.startedAt,
    finished_at: ev.finishedAt,
    duration_seconds: ev.durationSeconds,
    compute_minutes: ev.computeMinutes,
    outcome: ev.outcome,
    billable: ev.billable,
    payload: JSON.stringify(ev),
  };
}

/** Insert the event; a second insert for the same job is a no-op (exactly one per job). */
export async function writeBillingEvent(trx: Transaction<Database>, ev: BillingEvent): Promise<boolean> {
  const res = await trx
    .insertInto('billing_events')
    .values(billingRow(ev))
    .onConflict((oc) => oc.columns(['shard', 'job_id']).doNothing())
    .executeTakeFirst();
  return Number(res.numInsertedOrUpdatedRows ?? 0n) > 0;
}
