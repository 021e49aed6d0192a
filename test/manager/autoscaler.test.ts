import { describe, expect, it } from 'vitest';
import { decideScale, type ScaleInput } from '../../src/manager/autoscaler.js';

const base: ScaleInput = {
  pool: { idle: 2, max: 5 },
  counts: { pending: 0, ready: 0, busy: 0, leaving: 0 },
  readyVms: [],
  frozen: false,
  idleTimeMs: 60_000,
  now: 1_000_000,
};

describe('decideScale', () => {
  it('fills an empty pool up to idle', () => {
    expect(decideScale(base)).toEqual({ create: 2, retire: [], capped: false });
  });

  it('counts VMs still booting as on their way to warm', () => {
    expect(decideScale({ ...base, counts: { ...base.counts, pending: 1 } }).create).toBe(1);
    expect(decideScale({ ...base, counts: { ...base.counts, pending: 1, ready: 1 } }).create).toBe(0);
  });

  it('replaces warm VMs taken by jobs, within max', () => {
    const d = decideScale({ ...base, counts: { pending: 0, ready: 0, busy: 4, leaving: 0 } });
    expect(d).toEqual({ create: 1, retire: [], capped: true });
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

  it('retires every warm VM and creates none when frozen (draining)', () => {
    const readyVms = [{ id: 'a', readyAt: base.now }, { id: 'b', readyAt: base.now }];
    const d = decideScale({ ...base, frozen: true, counts: { pending: 0, ready: 2, busy: 1, leaving: 0 }, readyVms });
    expect(d).toEqual({ create: 0, retire: ['a', 'b'], capped: false });
  });

  it('creates nothing while the class is blocked by quota, but keeps its warm VMs', () => {
    const readyVms = [{ id: 'a', readyAt: base.now - 3600_000 }];
    const d = decideScale({ ...base, blocked: true, counts: { pending: 0, ready: 1, busy: 0, leaving: 0 }, readyVms });
    expect(d.create).toBe(0);
    expect(d.retire).toEqual([]);
    expect(decideScale({ ...base, counts: { pending: 0, ready: 1, busy: 0, leaving: 0 }, readyVms }).create).toBeGreaterThan(0);
  });
});
