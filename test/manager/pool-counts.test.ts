// The pool's counting of a class's VMs by tier: pure functions over rows and the pool's marks
// (task in flight, reserved, made for standby), as the tick and intake's cold-start judgement read them.
import { describe, expect, it } from 'vitest';
import type { VmRow } from '../../src/db/schema.js';
import { WARM_MAX_AGE_MS, bootingForStandby, byClass, classTiers, overAge, pickWarm, readyForStandby, readyIds, splitJobVms, stateTally, type TierMarks } from '../../src/manager/pool/counts.js';

const T0 = new Date('2026-12-07T10:00:00Z');
let seq = 0;
function vm(state: string, over: Partial<VmRow> = {}): VmRow {
  const id = over.id ?? `vm${++seq}`;
  return {
    id,
    shard: 's',
    class: 'small',
    provider: 'memory',
    name: `rf-s-${id}`,
    state,
    cloud_id: null,
    zone: null,
    internal_ip: null,
    public_key: 'pk',
    private_key_enc: null,
    host_key_fingerprint: null,
    job_id: null,
    failure: null,
    created_at: T0,
    ready_at: state === 'ready' ? T0 : null,
    updated_at: T0,
    ...over,
  };
}
const marks = (m: Partial<Record<keyof TierMarks, string[]>> = {}): TierMarks => ({
  busy: new Set(m.busy ?? []),
  reserved: new Set(m.reserved ?? []),
  toStandby: new Set(m.toStandby ?? []),
});
const zero = { pending: 0, ready: 0, busy: 0, leaving: 0, standby: 0, pendingStandby: 0, bootingStandby: 0, resuming: 0 };

describe('classTiers', () => {
  it('counts each state into its tier', () => {
    const rows = [vm('requested'), vm('creating'), vm('booting'), vm('ready'), vm('ready'), vm('assigned'), vm('running'), vm('deleting'), vm('failed'), vm('stopped')];
    const t = classTiers(rows, 0, marks());
    expect(t.counts).toEqual({ pending: 3, ready: 2, busy: 2, leaving: 2, standby: 1, pendingStandby: 0, bootingStandby: 0, resuming: 0 });
    expect(t.warm.map((r) => r.state)).toEqual(['ready', 'ready']);
    expect(t.free).toEqual(t.warm);
  });

  it('keeps a reserved VM warm but not free: a job request in flight mostly answers "no job"', () => {
    const a = vm('ready');
    const b = vm('ready');
    const t = classTiers([a, b], 0, marks({ reserved: [a.id] }));
    expect(t.counts.ready).toBe(2);
    expect(t.free.map((r) => r.id)).toEqual([b.id]);
  });

  it('counts a ready VM with a task in flight as busy, and a stopped one being stopped as on its way to standby', () => {
    const ready = vm('ready');
    const stopping = vm('stopped');
    const t = classTiers([ready, stopping], 0, marks({ busy: [ready.id, stopping.id] }));
    expect(t.counts).toEqual({ ...zero, busy: 1, pendingStandby: 1 });
    expect(t.standby).toEqual([]);
  });

  it('counts a booting VM that was ready before as resuming, not pending', () => {
    const t = classTiers([vm('booting', { ready_at: T0 }), vm('booting')], 0, marks());
    expect(t.counts).toEqual({ ...zero, pending: 1, resuming: 1 });
  });

  it('counts VMs made for standby, booting or up, as pending standby and not warm (the booting one may still be kept hot)', () => {
    const booting = vm('creating');
    const up = vm('ready');
    const t = classTiers([booting, up], 0, marks({ toStandby: [booting.id, up.id] }));
    expect(t.counts).toEqual({ ...zero, pendingStandby: 2, bootingStandby: 1 });
    expect(t.warm).toEqual([]);
  });

  it('adds the cold-start VMs as busy, and orders standby longest-stopped first', () => {
    const late = vm('stopped', { updated_at: new Date(T0.getTime() + 5000) });
    const early = vm('stopped', { updated_at: T0 });
    const t = classTiers([late, early], 3, marks());
    expect(t.counts).toEqual({ ...zero, busy: 3, standby: 2 });
    expect(t.standby.map((r) => r.id)).toEqual([early.id, late.id]);
  });

  it('counts nothing in an empty class', () => {
    expect(classTiers([], 0, marks()).counts).toEqual(zero);
  });
});

describe('splitJobVms', () => {
  it('takes out the VMs bound to a job before they run, whatever their state, and keeps the rest', () => {
    const rows = [vm('requested', { job_id: '7' }), vm('booting', { job_id: '8' }), vm('ready', { job_id: '9' }), vm('running', { job_id: '10' }), vm('ready'), vm('deleting', { job_id: '11' })];
    const { own, forJob } = splitJobVms(rows);
    expect(forJob).toBe(3);
    expect(own.map((r) => `${r.state}:${r.job_id}`)).toEqual(['running:10', 'ready:null', 'deleting:11']);
  });
});

describe('pickWarm', () => {
  it('gives the first ready, unbound VM of the class that nothing else holds', () => {
    const rows = [
      vm('ready', { class: 'big' }),
      vm('booting'),
      vm('ready', { job_id: '1' }),
      vm('ready', { id: 'standby' }),
      vm('ready', { id: 'held' }),
      vm('ready', { id: 'probing' }),
      vm('ready', { id: 'free' }),
      vm('ready', { id: 'free2' }),
    ];
    const m = marks({ toStandby: ['standby'], reserved: ['held'], busy: ['probing'] });
    expect(pickWarm(rows, 'small', m)?.id).toBe('free');
    expect(pickWarm(rows, 'gpu', m)).toBeUndefined();
    expect(pickWarm(rows.slice(0, 6), 'small', m)).toBeUndefined();
  });
});

describe('bootingForStandby', () => {
  it('lists the VMs made for standby still on their way up, the first made first (the pool keeps those hot when hot is short)', () => {
    const t0 = Date.parse('2026-12-07T10:00:00Z');
    const rows = [
      vm('booting', { id: 'late', created_at: new Date(t0 + 20_000) }),
      vm('creating', { id: 'early', created_at: new Date(t0) }),
      vm('ready', { id: 'up', created_at: new Date(t0 - 5_000) }),
      vm('booting', { id: 'hot', created_at: new Date(t0 - 9_000) }),
    ];
    expect(bootingForStandby(rows, marks({ toStandby: ['late', 'early', 'up'] })).map((r) => r.id)).toEqual(['early', 'late']);
  });
});

describe('readyForStandby', () => {
  it('lists the VMs made for standby that are up and idle', () => {
    const rows = [vm('ready', { id: 'up' }), vm('booting', { id: 'boot' }), vm('ready', { id: 'held' }), vm('ready', { id: 'probing' }), vm('ready', { id: 'hot' })];
    const m = marks({ toStandby: ['up', 'boot', 'held', 'probing'], reserved: ['held'], busy: ['probing'] });
    expect(readyForStandby(rows, m).map((r) => r.id)).toEqual(['up']);
  });
});

describe('overAge', () => {
  it('recycles warm VMs ready longer than WARM_MAX_AGE_MS, by ready time (else creation)', () => {
    const now = T0.getTime() + WARM_MAX_AGE_MS + 1;
    const rows = [vm('ready', { id: 'old' }), vm('ready', { id: 'fresh', ready_at: new Date(T0.getTime() + 10) }), vm('ready', { id: 'never', ready_at: null })];
    expect(overAge(rows, now)).toEqual(['old', 'never']);
    expect(overAge(rows, now - 1)).toEqual([]);
  });
});

describe('byClass, readyIds, stateTally', () => {
  it('groups rows by class in their order', () => {
    const a = vm('ready');
    const b = vm('ready', { class: 'big' });
    const c = vm('booting');
    expect([...byClass([a, b, c])].map(([k, v]) => [k, v.map((r) => r.id)])).toEqual([
      ['small', [a.id, c.id]],
      ['big', [b.id]],
    ]);
  });

  it('gives the ids of ready VMs', () => {
    const a = vm('ready');
    expect(readyIds([a, vm('assigned'), vm('stopped')])).toEqual(new Set([a.id]));
  });

  it('tallies VMs per class and state, zeros for every live state of the configured classes', () => {
    const tally = stateTally([vm('ready'), vm('ready'), vm('booting'), vm('running', { class: 'gone' })], ['small', 'big']);
    const get = (c: string, s: string) => tally.find((e) => e.class === c && e.state === s)?.n;
    expect(get('small', 'ready')).toBe(2);
    expect(get('small', 'booting')).toBe(1);
    expect(get('small', 'failed')).toBe(0);
    expect(get('big', 'ready')).toBe(0);
    expect(get('gone', 'running')).toBe(1); // a class no longer configured still shows its VMs
    expect(get('small', 'deleted')).toBeUndefined();
    expect(tally.filter((e) => e.class === 'big')).toHaveLength(tally.filter((e) => e.class === 'small').length);
  });
});
