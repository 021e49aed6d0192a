// The predictive policy's models for the live manager: one DemandModel per predictive class,
// taught at start-up from the database (job arrivals of the last four weeks; boot and resume
// times per zone of the last week, from vm_events), then fed by intake (each job's queue entry
// time and GitLab's queue hint) and by the pool (each boot and resume).
import type { Kysely } from 'kysely';
import type { ClassConfig, ShardConfig } from '../config/types.js';
import type { Database } from '../db/schema.js';
import { DemandModel, priorBootTime, priorResumeFraction } from './predictive.js';

const HISTORY_MS = 28 * 24 * 3600_000;
const BOOT_HISTORY_MS = 7 * 24 * 3600_000;
const BOOT_HISTORY_VMS = 500;

export interface TimedStart {
  seconds: number;
  zone: string | null;
  /** When it was up (epoch ms). */
  at: number;
}

/**
 * Boots and resumes from one VM's events in time order: a boot runs from its first event (the
 * write-ahead `requested`) to its first `ready`; a resume from a `stopped -> booting` to the
 * `ready` after it.
 */
export function startsOfVm(events: { from_state: string | null; to_state: string; at: Date }[], zone: string | null): { boots: TimedStart[]; resumes: TimedStart[] } {
  const boots: TimedStart[] = [];
  const resumes: TimedStart[] = [];
  let since: number | null = events.length ? new Date(events[0]!.at).getTime() : null;
  let resuming = false;
  for (const e of events) {
    const at = new Date(e.at).getTime();
    if (e.from_state === 'stopped' && e.to_state === 'booting') {
      since = at;
      resuming = true;
    } else if (e.to_state === 'ready' && since !== null) {
      (resuming ? resumes : boots).push({ seconds: (at - since) / 1000, zone, at });
      since = null;
    } else if (e.to_state === 'failed' || e.to_state === 'deleting') {
      since = null;
    }
  }
  return { boots, resumes };
}

export async function loadDemandModels(
  db: Kysely<Database>,
  config: ShardConfig,
  now: number,
  /** Whether the class's provider can stop and start VMs (a standby tier). */
  standbyCapable: (cls: ClassConfig) => boolean = () => false,
): Promise<Map<string, DemandModel>> {
  const out = new Map<string, DemandModel>();
  for (const cls of Object.values(config.classes)) {
    if (cls.pool.policy !== 'predictive') continue;
    const model = new DemandModel({
      targetMs: cls.pool.targetMs,
      bound: cls.pool.bound,
      max: cls.pool.max,
      idleBudget: cls.pool.idleBudget,
      standbyCapable: standbyCapable(cls),
      boot: priorBootTime(cls),
      resumeFraction: priorResumeFraction(cls.pool),
    });
    const since = new Date(now - HISTORY_MS);
    const jobs = await db.selectFrom('jobs').select(['picked_at', 'queued_seconds']).where('shard', '=', config.shard).where('class', '=', cls.name).where('picked_at', '>=', since).execute();
    const arrivals = jobs.map((j) => new Date(j.picked_at).getTime() - (j.queued_seconds ?? 0) * 1000);
    // Average over the time the shard has run, not four weeks it may not have had.
    if (arrivals.length) model.learnHistory(arrivals, Math.max(since.getTime(), arrivals.reduce((a, b) => Math.min(a, b))), now);
    // The newest VMs only: the estimates weigh the last few dozen starts (EWMA), and a busy class
    // makes hundreds of thousands of VMs a week.
    const recentVms = db
      .selectFrom('vms')
      .select('id')
      .where('shard', '=', config.shard)
      .where('class', '=', cls.name)
      .where('created_at', '>=', new Date(now - BOOT_HISTORY_MS))
      .orderBy('created_at', 'desc')
      .limit(BOOT_HISTORY_VMS);
    const events = await db
      .selectFrom('vm_events')
      .innerJoin('vms', 'vms.id', 'vm_events.vm_id')
      .select(['vm_events.vm_id', 'vm_events.from_state', 'vm_events.to_state', 'vm_events.at', 'vms.zone'])
      .where('vm_events.vm_id', 'in', recentVms)
      .orderBy('vms.created_at')
      .orderBy('vm_events.vm_id')
      .orderBy('vm_events.id')
      .execute();
    const boots: TimedStart[] = [];
    const resumes: TimedStart[] = [];
    for (let i = 0; i < events.length; ) {
      let j = i;
      while (j < events.length && events[j]!.vm_id === events[i]!.vm_id) j++;
      const starts = startsOfVm(events.slice(i, j), events[i]!.zone);
      boots.push(...starts.boots);
      resumes.push(...starts.resumes);
      i = j;
    }
    // In the order they were up: each weighs by the time since the one before.
    for (const b of boots.sort((x, y) => x.at - y.at)) model.observeBoot(b.seconds, b.zone, b.at);
    for (const r of resumes.sort((x, y) => x.at - y.at)) model.observeResume(r.seconds, r.zone, r.at);
    out.set(cls.name, model);
  }
  return out;
}
