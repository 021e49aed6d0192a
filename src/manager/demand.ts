// The predictive policy's models for the live manager: one DemandModel per predictive class,
// taught at start-up from the database (job arrivals of the last four weeks, boot times of the
// last week), then fed by intake (each job's queue entry time and GitLab's queue hint) and by
// the pool (each boot).
import type { Kysely } from 'kysely';
import type { ShardConfig } from '../config/types.js';
import type { Database } from '../db/schema.js';
import { DemandModel, priorBootTime } from './predictive.js';

const HISTORY_MS = 28 * 24 * 3600_000;
const BOOT_HISTORY_MS = 7 * 24 * 3600_000;

export async function loadDemandModels(db: Kysely<Database>, config: ShardConfig, now: number): Promise<Map<string, DemandModel>> {
  const out = new Map<string, DemandModel>();
  for (const cls of Object.values(config.classes)) {
    if (cls.pool.policy !== 'predictive') continue;
    const model = new DemandModel({
      targetMs: cls.pool.targetMs,
      bound: cls.pool.bound,
      max: cls.pool.max,
      idleBudget: cls.pool.idleBudget,
      // The live pool holds the hot tier only (stop/start standby runs in the simulator so far).
      standbyCapable: false,
      boot: priorBootTime(cls),
      resumeFraction: 0.25,
    });
    const since = new Date(now - HISTORY_MS);
    const jobs = await db.selectFrom('jobs').select(['picked_at', 'queued_seconds']).where('shard', '=', config.shard).where('class', '=', cls.name).where('picked_at', '>=', since).execute();
    const arrivals = jobs.map((j) => new Date(j.picked_at).getTime() - (j.queued_seconds ?? 0) * 1000);
    // Average over the time the shard has run, not four weeks it may not have had.
    if (arrivals.length) model.learnHistory(arrivals, Math.max(since.getTime(), arrivals.reduce((a, b) => Math.min(a, b))), now);
    const boots = await db
      .selectFrom('vms')
      .select(['created_at', 'ready_at'])
      .where('shard', '=', config.shard)
      .where('class', '=', cls.name)
      .where('ready_at', 'is not', null)
      .where('created_at', '>=', new Date(now - BOOT_HISTORY_MS))
      .orderBy('created_at')
      .execute();
    for (const b of boots) model.observeBoot((new Date(b.ready_at!).getTime() - new Date(b.created_at).getTime()) / 1000);
    out.set(cls.name, model);
  }
  return out;
}
