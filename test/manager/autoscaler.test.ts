import { describe, expect, it } from 'vitest';
import { poolConfig } from '../../src/config/pool-defaults.js';
import { decideScale, intakeMode, staticSettings, staticTargets, type ScaleInput } from '../../src/manager/autoscaler.js';

const base: ScaleInput = {
  targets: { hot: 2, standby: 0 },
  max: 5,
  counts: { pending: 0, ready: 0, busy: 0, leaving: 0 },
  readyVms: [],
  frozen: false,
  idleTimeMs: 60_000,
  standbyCapable: false,
  now: 1_000_000,
};
const none = { createStandby: 0, resume: 0, redirect: 0, stop: [], retireStandby: 0 };

describe('decideScale', () => {
  it('fills an empty pool up to the hot target', () => {
    expect(decideScale(base)).toEqual({ ...none, create: 2, retire: [], capped: false });
  });

  it('counts VMs still booting as on their way to warm', () => {
    expect(decideScale({ ...base, counts: { ...base.counts, pending: 1 } }).create).toBe(1);
    expect(decideScale({ ...base, counts: { ...base.counts, pending: 1, ready: 1 } }).create).toBe(0);
  });

  it('replaces warm VMs taken by jobs, within max', () => {
    const d = decideScale({ ...base, counts: { pending: 0, ready: 0, busy: 4, leaving: 0 } });
    expect(d).toEqual({ ...none, create: 1, retire: [], capped: true });
  });

  it('counts VMs still being deleted toward max', () => {
    expect(decideScale({ ...base, counts: { pending: 0, ready: 0, busy: 3, leaving: 2 } }).create).toBe(0);
  });

  it('retires surplus warm VMs only after they idled idleTime, oldest first', () => {
    const readyVms = [
      { id: 'old', readyAt: base.now - 120_000 },
      { id: 'mid', readyAt: base.now - 90_000 },
      { id: 'new', readyAt: base.now - 1_000 },
      { id: 'newer', readyAt: base.now - 500 },
    ];
    const d = decideScale({ ...base, counts: { pending: 0, ready: 4, busy: 0, leaving: 0 }, readyVms });
    expect(d.retire).toEqual(['old', 'mid']);
    expect(d.create).toBe(0);
  });

  it('retires every never-used VM and creates none when frozen (draining)', () => {
    const readyVms = [{ id: 'a', readyAt: base.now }, { id: 'b', readyAt: base.now }];
    const d = decideScale({ ...base, frozen: true, standbyCapable: true, counts: { pending: 0, ready: 2, busy: 1, leaving: 0, standby: 3 }, readyVms });
    expect(d).toEqual({ ...none, create: 0, retire: ['a', 'b'], retireStandby: 3, capped: false });
  });

  it('creates nothing while the class is blocked (quota, stockout), keeps its warm VMs and resumes standby instead', () => {
    const readyVms = [{ id: 'a', readyAt: base.now - 3600_000 }];
    const d = decideScale({ ...base, blocked: true, standbyCapable: true, targets: { hot: 3, standby: 0 }, counts: { pending: 0, ready: 1, busy: 0, leaving: 0, standby: 1 }, readyVms });
    expect(d).toMatchObject({ create: 0, createStandby: 0, resume: 1, retire: [], retireStandby: 0, capped: true });
  });

  it('fills hot from standby first (a resume, not a boot), and keeps the standby tier at its target', () => {
    const d = decideScale({ ...base, standbyCapable: true, max: 20, targets: { hot: 4, standby: 3 }, counts: { pending: 0, ready: 1, busy: 0, leaving: 0, standby: 2 } });
    expect(d).toMatchObject({ resume: 2, create: 1, createStandby: 3 });
  });

  it('keeps VMs booting for standby hot when hot is short and standby is empty, and refills standby with new ones', () => {
    // Hot wants 5 (has 1), no stopped VM to resume, 3 VMs still booting for standby (target 3).
    const counts = { pending: 0, ready: 1, busy: 0, leaving: 0, standby: 0, pendingStandby: 3, bootingStandby: 3 };
    const d = decideScale({ ...base, standbyCapable: true, max: 20, targets: { hot: 5, standby: 3 }, counts });
    expect(d).toMatchObject({ resume: 0, redirect: 3, create: 1, createStandby: 3 });
    // Only what hot lacks: the rest still go to standby.
    expect(decideScale({ ...base, standbyCapable: true, max: 20, targets: { hot: 2, standby: 3 }, counts })).toMatchObject({ redirect: 1, create: 0, createStandby: 1 });
    // A VM stopping (no longer booting) is not taken back.
    expect(decideScale({ ...base, standbyCapable: true, max: 20, targets: { hot: 5, standby: 3 }, counts: { ...counts, bootingStandby: 0 } })).toMatchObject({ redirect: 0, create: 4, createStandby: 0 });
  });

  it('stops surplus hot VMs into a short standby tier, deletes the rest', () => {
    const readyVms = ['a', 'b', 'c'].map((id) => ({ id, readyAt: base.now - 120_000 }));
    const d = decideScale({ ...base, standbyCapable: true, targets: { hot: 0, standby: 2 }, counts: { pending: 0, ready: 3, busy: 0, leaving: 0, standby: 1 }, readyVms });
    expect(d).toMatchObject({ stop: ['a'], retire: ['b', 'c'], createStandby: 0 });
  });

  it('holds no standby where the provider cannot stop and start', () => {
    expect(decideScale({ ...base, targets: { hot: 1, standby: 5 } })).toMatchObject({ create: 1, createStandby: 0 });
  });
});

describe('static policy (GitLab autoscaler semantics)', () => {
  it('holds max(idle, scaleFactor x busy), the factor capped by scaleFactorLimit', () => {
    const s = staticSettings(poolConfig({ idle: 2, max: 100, scaleFactor: 0.5, scaleFactorLimit: 10 }), 0);
    expect(staticTargets(s, 0).hot).toBe(2);
    expect(staticTargets(s, 9).hot).toBe(5);
    expect(staticTargets(s, 100).hot).toBe(10);
  });

  it('lets the last matching period win, in its time zone', () => {
    const pool = poolConfig({
      idle: 1, max: 50, standby: 0,
      periods: [
        { cron: '* 8-17 * * mon-fri', timezone: 'Europe/Berlin', idle: 10, standby: 4 },
        { cron: '* 12 * * *', timezone: 'Europe/Berlin', idle: 20 },
      ],
    });
    const at = (iso: string) => staticSettings(pool, Date.parse(iso));
    expect(at('2026-11-24T06:30:00Z')).toMatchObject({ idle: 1, standby: 0 }); // 07:30 in Berlin
    expect(at('2026-11-24T07:30:00Z')).toMatchObject({ idle: 10, standby: 4 }); // 08:30 Tuesday
    expect(at('2026-11-24T11:15:00Z')).toMatchObject({ idle: 20, standby: 4 }); // 12:15: both match, last wins
    expect(at('2026-11-28T11:15:00Z')).toMatchObject({ idle: 20, standby: 0 }); // Saturday noon
  });
});

describe('intake mode', () => {
  it('asks with a VM when one is warm or coming, cold-starts when the class holds none', () => {
    const empty = { pending: 0, ready: 0, busy: 3, leaving: 0 };
    expect(intakeMode('auto', empty)).toBe('coldStart');
    expect(intakeMode('auto', { ...empty, pending: 1 })).toBe('preemptive');
    expect(intakeMode('auto', { ...empty, standby: 1 })).toBe('preemptive');
    expect(intakeMode('preemptive', empty)).toBe('preemptive');
    expect(intakeMode('coldStart', { ...empty, ready: 5 })).toBe('coldStart');
  });
});
