// The Mac host pool policy on a virtual clock: allocation, the 24-hour rule, scrubbing, packing.
import { describe, expect, it } from 'vitest';
import { MIN_ALLOCATION_MS, hostHoursPerDay, pickHost, planHosts, type HostView } from '../../src/providers/mac/host-pool.js';

const H = 3600_000;
const config = { minHosts: 1, maxHosts: 4, zones: ['us-east-1a', 'us-east-1b'] };
const host = (id: string, o: Partial<HostView> = {}): HostView => ({ id, state: 'ready', availabilityZone: 'us-east-1a', allocatedAt: 0, nestedVms: 0, busyVms: 0, ...o });

describe('Mac host pool policy', () => {
  it('allocates up to what the wanted slots need, two VMs per host, spread over zones', () => {
    expect(planHosts({ hosts: [], config, wantedSlots: 0, now: 0 }).allocate).toEqual([{ zone: 'us-east-1a', count: 1 }]);
    const p = planHosts({ hosts: [], config, wantedSlots: 5, now: 0 });
    expect(p.allocate).toEqual([{ zone: 'us-east-1a', count: 2 }, { zone: 'us-east-1b', count: 1 }]);
    expect(p.capped).toBe(false);
  });

  it('never goes past maxHosts and says so', () => {
    const p = planHosts({ hosts: [host('h1'), host('h2', { state: 'allocating' })], config, wantedSlots: 20, now: 0 });
    expect(p.allocate.reduce((n, a) => n + a.count, 0)).toBe(2);
    expect(p.capped).toBe(true);
  });

  it('counts a scrubbing host against max and as capacity that comes back, not as a free slot', () => {
    const hosts = [host('h1', { state: 'scrubbing' }), host('h2', { state: 'busy', nestedVms: 2, busyVms: 2 })];
    expect(planHosts({ hosts, config, wantedSlots: 4, now: H }).allocate).toEqual([]);
    expect(pickHost(hosts)).toBeUndefined();
    expect(planHosts({ hosts, config, wantedSlots: 6, now: H }).allocate).toEqual([{ zone: 'us-east-1b', count: 1 }]);
  });

  it('keeps a surplus host until its 24-hour minimum has passed, then sheds its instance', () => {
    const hosts = [host('h1'), host('h2', { allocatedAt: 2 * H })];
    expect(planHosts({ hosts, config, wantedSlots: 0, now: 23 * H })).toMatchObject({ retire: [], release: [] });
    // h1 is past 24 h; h2 (allocated later) is not: only h1 goes, and first loses its instance.
    expect(planHosts({ hosts, config, wantedSlots: 0, now: MIN_ALLOCATION_MS + H })).toMatchObject({ retire: ['h1'], release: [] });
  });

  it('releases a scrubbing surplus host past its minimum, and never one that runs a job', () => {
    const hosts = [host('h1', { state: 'scrubbing' }), host('h2', { busyVms: 1, nestedVms: 1 }), host('h3', { busyVms: 1, nestedVms: 2, state: 'busy' })];
    const p = planHosts({ hosts, config: { ...config, minHosts: 0 }, wantedSlots: 0, now: 30 * H });
    expect(p.release).toEqual(['h1']);
    expect(p.retire).toEqual([]);
  });

  it('releases a releasable host once past the minimum', () => {
    const hosts = [host('h1', { state: 'releasable', allocatedAt: 10 * H })];
    expect(planHosts({ hosts, config: { ...config, minHosts: 0 }, wantedSlots: 0, now: 30 * H }).release).toEqual([]);
    expect(planHosts({ hosts, config: { ...config, minHosts: 0 }, wantedSlots: 0, now: 34 * H }).release).toEqual(['h1']);
  });

  it('skips zones that refused hosts recently', () => {
    const p = planHosts({ hosts: [], config, wantedSlots: 4, zonesCoolingDown: new Set(['us-east-1a']), now: 0 });
    expect(p.allocate).toEqual([{ zone: 'us-east-1b', count: 2 }]);
  });

  it('packs nested VMs onto the fullest host with a free slot', () => {
    const hosts = [host('h1', { nestedVms: 0 }), host('h2', { nestedVms: 1 }), host('h3', { nestedVms: 2 })];
    expect(pickHost(hosts)?.id).toBe('h2');
  });

  it('computes host-hours for a job rate', () => {
    // 6 jobs/h x (20 + 2) min = 2.2 busy slots, + 2 warm = 4.2 slots -> 3 hosts -> 72 host-h/day.
    expect(hostHoursPerDay({ jobsPerHour: 6, jobMinutes: 20, cloneMinutes: 2, warmVms: 2 })).toEqual({ hosts: 3, hostHoursPerDay: 72, hostHoursPerJob: 0.5 });
  });
});
