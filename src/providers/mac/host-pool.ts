// EC2 Mac dedicated-host pool policy (pure: no I/O, no clock reads). Facts it is built on: a
// host is billed for at least 24 h from allocation; it carries one macOS instance; after that
// instance stops or terminates the host is scrubbed for 110 min up to hours and takes nothing;
// Apple's licence allows two macOS VMs per host; a Mac instance takes 6-20 min to launch.
// The provider persists hosts and feeds them here each tick; it carries out what comes back.

/** Minimum allocation EC2 bills for a Mac host, and the earliest a host may be released. */
export const MIN_ALLOCATION_MS = 24 * 3600_000;
/** Nested macOS VMs per host (Apple's licence). */
export const VMS_PER_HOST = 2;

export type HostState =
  | 'allocating' // AllocateHosts sent (write-ahead); waiting for an `available` host
  | 'launching' // the host's macOS instance is being launched and booted
  | 'ready' // the instance is up; nested VM slots are free
  | 'busy' // every slot is taken
  | 'scrubbing' // the instance stopped or terminated: EC2 scrubs the host, it takes nothing
  | 'releasable' // past its 24 h minimum and not needed: ReleaseHosts is due
  | 'released';

export interface HostView {
  id: string;
  state: HostState;
  availabilityZone: string;
  /** When EC2 allocated the host (billing starts), ms. */
  allocatedAt: number;
  /** Nested VMs (warm or running a job) on the host; 0..VMS_PER_HOST. */
  nestedVms: number;
  /** Nested VMs on the host that run a job (not just warm). */
  busyVms: number;
}

export interface HostPoolConfig {
  minHosts: number;
  maxHosts: number;
  /** Availability zones to allocate in, in preference order. */
  zones: string[];
  /** Job VMs a host holds: VMS_PER_HOST nested VMs, or 1 with a Mac instance per job. */
  slotsPerHost?: number;
}

export interface HostPlanInput {
  hosts: HostView[];
  config: HostPoolConfig;
  /** Nested VM slots the class wants now: running jobs + warm VMs it should hold. */
  wantedSlots: number;
  /** Zones that refused an allocation recently (InsufficientHostCapacity), skipped this tick. */
  zonesCoolingDown?: ReadonlySet<string>;
  now: number;
}

export interface HostPlan {
  /** Hosts to allocate, by zone. */
  allocate: { zone: string; count: number }[];
  /** Hosts past their minimum allocation that nothing needs: terminate their instance / release. */
  retire: string[];
  /** Hosts to release now (no instance left, past the minimum, not needed). */
  release: string[];
  /** The class wants more than maxHosts can give. */
  capped: boolean;
}

/** The earliest moment EC2 lets a host go (and billing can stop). */
export function earliestRelease(h: Pick<HostView, 'allocatedAt'>): number {
  return h.allocatedAt + MIN_ALLOCATION_MS;
}

/** Hosts that hold (or will soon hold) slots for nested VMs. */
function capacityHosts(hosts: HostView[]): HostView[] {
  return hosts.filter((h) => h.state === 'allocating' || h.state === 'launching' || h.state === 'ready' || h.state === 'busy');
}

export function planHosts(input: HostPlanInput): HostPlan {
  const { config, now } = input;
  const live = input.hosts.filter((h) => h.state !== 'released');
  const perHost = config.slotsPerHost ?? VMS_PER_HOST;
  const needed = Math.min(config.maxHosts, Math.max(config.minHosts, Math.ceil(input.wantedSlots / perHost)));
  const capped = Math.ceil(input.wantedSlots / perHost) > config.maxHosts;

  // A scrubbing host is paid for and comes back: it counts against maxHosts but gives no slot now.
  const serving = capacityHosts(live);
  const scrubbing = live.filter((h) => h.state === 'scrubbing');
  const room = Math.max(0, config.maxHosts - live.filter((h) => h.state !== 'releasable').length);
  let toAllocate = Math.min(room, Math.max(0, needed - serving.length - scrubbing.length));
  const allocate: HostPlan['allocate'] = [];
  const zones = config.zones.filter((z) => !input.zonesCoolingDown?.has(z));
  if (toAllocate > 0 && zones.length > 0) {
    // Spread across zones, fewest hosts first, so one zone's outage does not take the class down.
    const perZone = new Map(zones.map((z) => [z, live.filter((h) => h.availabilityZone === z).length]));
    const counts = new Map<string, number>();
    while (toAllocate-- > 0) {
      const zone = [...perZone.entries()].sort((a, b) => a[1] - b[1] || zones.indexOf(a[0]) - zones.indexOf(b[0]))[0]![0];
      perZone.set(zone, perZone.get(zone)! + 1);
      counts.set(zone, (counts.get(zone) ?? 0) + 1);
    }
    for (const z of zones) if (counts.get(z)) allocate.push({ zone: z, count: counts.get(z)! });
  }

  // Surplus: only hosts past their 24 h minimum are worth giving up (before it, they are paid
  // for anyway). Idle ones first, the oldest allocation first (its next billing hour is nearest).
  const surplus = serving.length + scrubbing.length - needed;
  const retire: string[] = [];
  const release: string[] = [];
  if (surplus > 0) {
    const candidates = live
      .filter((h) => now >= earliestRelease(h) && h.busyVms === 0 && (h.state === 'ready' || h.state === 'scrubbing' || h.state === 'releasable'))
      .sort((a, b) => Number(a.state !== 'scrubbing') - Number(b.state !== 'scrubbing') || a.allocatedAt - b.allocatedAt);
    for (const h of candidates.slice(0, surplus)) {
      // A host with its instance must shed it first (it then scrubs); a scrubbing or emptied host goes.
      if (h.state === 'ready') retire.push(h.id);
      else release.push(h.id);
    }
  }
  for (const h of live) if (h.state === 'releasable' && !release.includes(h.id) && now >= earliestRelease(h)) release.push(h.id);
  return { allocate, retire, release, capped };
}

/** Free nested VM slots on a host that can take one now. */
export function freeSlots(h: HostView): number {
  return h.state === 'ready' ? Math.max(0, VMS_PER_HOST - h.nestedVms) : 0;
}

/** The host for a new nested VM: the fullest one with a free slot (packs VMs, frees whole hosts). */
export function pickHost(hosts: HostView[]): HostView | undefined {
  return hosts.filter((h) => freeSlots(h) > 0).sort((a, b) => b.nestedVms - a.nestedVms || a.allocatedAt - b.allocatedAt)[0];
}

/**
 * Host-hours a class pays for: each host is billed for max(24 h, its allocation time). With jobs
 * arriving at `jobsPerHour`, each running `jobMinutes` plus `cloneMinutes` to get a fresh VM, the
 * busy slots are rate x time (Little's law); hosts = ceil(slots / VMS_PER_HOST) plus warm
 * headroom. Returns host-hours per day and per job.
 */
export function hostHoursPerDay(o: { jobsPerHour: number; jobMinutes: number; cloneMinutes: number; warmVms: number }): { hosts: number; hostHoursPerDay: number; hostHoursPerJob: number } {
  const busySlots = (o.jobsPerHour * (o.jobMinutes + o.cloneMinutes)) / 60;
  const hosts = Math.max(1, Math.ceil((busySlots + o.warmVms) / VMS_PER_HOST));
  const perDay = hosts * 24;
  return { hosts, hostHoursPerDay: perDay, hostHoursPerJob: o.jobsPerHour > 0 ? perDay / (o.jobsPerHour * 24) : perDay };
}
