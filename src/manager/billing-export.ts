// `runner-fleet billing export`: events whose job finished in [since, until), as CSV (RFC 4180,
// one header row, the schema's field order) or JSON Lines (the events verbatim).
import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import type { BillingEvent } from './billing.js';
import { eventsFinishedBetween } from './billing-feed.js';

export const CSV_COLUMNS = [
  'id', 'type', 'shard', 'jobId', 'pipelineId', 'projectId', 'namespaceId', 'rootNamespaceId', 'runnerClass', 'costFactor',
  'provider', 'machineType', 'startedAt', 'finishedAt', 'durationSeconds', 'computeMinutes', 'outcome', 'billable',
] as const satisfies readonly (keyof BillingEvent)[];

const csvField = (v: unknown): string => {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

export function csvRow(ev: BillingEvent): string {
  return CSV_COLUMNS.map((c) => csvField(ev[c])).join(',');
}

export type ExportFormat = 'csv' | 'jsonl';

/** Streams the export to `write`; returns the number of events. */
export async function exportEvents(db: Kysely<Database>, shard: string, o: { since: Date; until: Date; format: ExportFormat }, write: (chunk: string) => Promise<void> | void): Promise<number> {
  let n = 0;
  if (o.format === 'csv') await write(`${CSV_COLUMNS.join(',')}\r\n`);
  for await (const ev of eventsFinishedBetween(db, shard, o.since, o.until)) {
    await write(o.format === 'csv' ? `${csvRow(ev)}\r\n` : `${JSON.stringify(ev)}\n`);
    n++;
  }
  return n;
}

/** `--since`/`--until`: an ISO 8601 date or date-time (UTC unless it says otherwise). */
export function parseExportTime(flag: string, v: string): Date {
  const ok = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(v);
  const d = new Date(ok && !/(Z|[+-]\d{2}:?\d{2})$/.test(v) && v.length > 10 ? `${v}Z` : v);
  if (!ok || Number.isNaN(d.getTime())) throw new Error(`${flag}: expected an ISO 8601 date or date-time like 2026-11-01 or 2026-11-01T00:00:00Z, got ${JSON.stringify(v)}`);
  return d;
}
