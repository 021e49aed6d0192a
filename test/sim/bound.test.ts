// The overhead floor (src/sim/bound.ts): the least availability keeping a promise, worked by hand
// on small traces, and how it moves with the bound, a standby tier, the hours judged and the boots.
import { describe, expect, it } from 'vitest';
import { overheadFloor, type FloorInput } from '../../src/sim/bound.js';

/** Pipelines of `b` jobs every `gapS` seconds, from `fromS`, for `n` pipelines. */
const pipelines = (n: number, b: number, gapS: number, fromS = 30) => Array.from({ length: n * b }, (_, i) => fromS + Math.floor(i / b) * gapS);
const base = (arrivalsS: number[], o: Partial<FloorInput> = {}): FloorInput => ({ arrivalsS, fromS: 0, targetS: 10, bound: 0.05, boot: { medianS: 20, p95S: 20 }, resume: null, ...o });

describe('overhead floor', () => {
  it('holds the share of a pipeline the promise allows to wait, in expectation in every judged hour', () => {
    // 4 jobs a minute for 2 hours: each hour 60 pipelines, 240 jobs, at most 12 late, so
    // 60 x (4 - A) <= 12: A = 3.8 VMs available all along, 3.8 x 7200 VM-s.
    const f = overheadFloor(base(pipelines(120, 4, 60), { expectedOnly: true }));
    expect(f.availabilityVmSeconds).toBeCloseTo(3.8 * 7200, 3);
    // Each job's own boot lends the target (10 s x 480) for free; boots are the oracle's (no spread).
    expect(f.oracleVmSeconds).toBe(480 * 20);
    expect(f.overheadVmSeconds).toBeCloseTo(480 * 20 + 3.8 * 7200 - 4800, 3);
    expect(f.overheadVsOracle).toBeCloseTo((9600 + 27360 - 4800) / 9600, 6);
    expect(f.lateIfMissed).toBe(1);
  });

  it('holds less with a standby tier whose resume is in time half the time', () => {
    // q = 1/2 (resume median = target): 0.5 x 60 x (4 - A) <= 12, A = 3.6.
    const f = overheadFloor(base(pipelines(120, 4, 60), { resume: { medianS: 10, p95S: 15 }, expectedOnly: true }));
    expect(f.lateIfMissed).toBeCloseTo(0.5, 6);
    expect(f.availabilityVmSeconds).toBeCloseTo(3.6 * 7200, 3);
  });

  it('credits the policy with the rate, not the moments a sparse class has its pipelines', () => {
    // One job an hour for 8 hours (no hour judged alone; 0.4 of 8 jobs may be late over the day).
    // Knowing the slots would hold a VM only in the 8 slots with a job (8 x 300 VM-s); knowing the
    // rate, a VM stays most of the 7 hours the jobs span.
    const f = overheadFloor(base(Array.from({ length: 8 }, (_, i) => 30 + i * 3600), { expectedOnly: true }));
    expect(f.availabilityVmSeconds).toBeGreaterThan(6 * 3600);
    expect(f.availabilityVmSeconds).toBeLessThanOrEqual(85 * 300);
    expect(f.overheadVmSeconds).toBeCloseTo(8 * 20 + f.availabilityVmSeconds - 80, 6);
  });

  it('rises with a stricter bound, a shorter target and slower boots', () => {
    const arrivals = pipelines(600, 6, 12);
    const f = overheadFloor(base(arrivals, { expectedOnly: true }));
    expect(overheadFloor(base(arrivals, { bound: 0.01, expectedOnly: true })).availabilityVmSeconds).toBeGreaterThan(f.availabilityVmSeconds);
    expect(overheadFloor(base(arrivals, { targetS: 5, expectedOnly: true })).overheadVmSeconds).toBeGreaterThan(f.overheadVmSeconds);
    const slower = overheadFloor(base(arrivals, { bootScale: (t) => (t > 3600 ? 2 : 1), expectedOnly: true }));
    expect(slower.overheadVmSeconds - f.overheadVmSeconds).toBeCloseTo(20 * arrivals.filter((t) => t > 3600).length, 3);
    // A spread of boots costs its mean, not its median.
    expect(overheadFloor(base(arrivals, { boot: { medianS: 20, p95S: 40 }, expectedOnly: true })).overheadVmSeconds).toBeGreaterThan(f.overheadVmSeconds);
  });

  it('holds what keeps the realised hour within the bound, not only its expectation', () => {
    // One judged hour: 200 pipelines, 5% of them 3 jobs, the rest 1 (220 jobs, 11 may be late).
    // In expectation 1.9 VMs do (each big pipeline 1.1 jobs over); but with 1 VM the hour passes
    // only if at most 5 of the 200 are big (P ~ 0.06, < 1/2), with 2 if at most 11 are (~0.70).
    const arrivals = Array.from({ length: 200 }, (_, i) => 30 + i * 17).flatMap((t, i) => (i % 20 === 7 ? [t, t, t] : [t]));
    expect(arrivals.length).toBe(220);
    const expected = overheadFloor(base(arrivals, { expectedOnly: true }));
    expect(expected.availabilityVmSeconds).toBeGreaterThan(1.8 * 3600);
    expect(expected.availabilityVmSeconds).toBeLessThan(2 * 3600);
    expect(overheadFloor(base(arrivals)).availabilityVmSeconds).toBeCloseTo(2 * 3600, 6);
    // Fan-outs of one size: every pipeline beyond the stock overflows, so the stock is the size.
    expect(overheadFloor(base(pipelines(120, 4, 60))).availabilityByHour).toEqual([4 * 3600, 4 * 3600]);
  });

  it('is nothing for no jobs', () => {
    expect(overheadFloor(base([])).overheadVsOracle).toBe(0);
  });
});
