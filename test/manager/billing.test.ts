import { describe, expect, it } from 'vitest';
import { billingEventId, buildBillingEvent, computeMinutes } from '../../src/manager/billing.js';

describe('computeMinutes', () => {
  it('is duration / 60 x cost factor as a 6-place decimal string', () => {
    expect(computeMinutes(60_000, 1)).toBe('1.000000');
    expect(computeMinutes(90_000, 2)).toBe('3.000000');
    expect(computeMinutes(1_000, 1)).toBe('0.016667'); // 1/60 rounds half up
    expect(computeMinutes(45_500, 6)).toBe('4.550000');
    expect(computeMinutes(0, 12)).toBe('0.000000');
  });

  it('handles fractional cost factors without float error', () => {
    expect(computeMinutes(600_000, 0.5)).toBe('5.000000');
    expect(computeMinutes(3 * 3600_000, 12)).toBe('2160.000000');
  });
});

describe('buildBillingEvent', () => {
  const input = {
    shard: 's1', jobId: 42, pipelineId: 7, projectId: 3, namespaceId: 2, rootNamespaceId: 1,
    runnerClass: 'saas-linux-small-amd64', costFactor: 2, provider: 'local', machineType: null,
    startedAt: new Date('2026-01-01T00:00:00Z'), finishedAt: new Date('2026-01-01T00:02:30Z'),
    outcome: 'success' as const, failureReason: null,
  };

  it('carries the job identity, duration and minutes', () => {
    const ev = buildBillingEvent(input);
    expect(ev).toMatchObject({ type: 'compute_minutes.v1', jobId: 42, durationSeconds: 150, computeMinutes: '5.000000', billable: true });
  });

  it('is not billable when the job failed through our fault', () => {
    expect(buildBillingEvent({ ...input, outcome: 'failed', failureReason: 'runner_system_failure' }).billable).toBe(false);
    expect(buildBillingEvent({ ...input, outcome: 'failed', failureReason: 'script_failure' }).billable).toBe(true);
  });

  it('has a stable id per shard and job', () => {
    expect(billingEventId('s1', 42)).toBe(billingEventId('s1', 42));
    expect(billingEventId('s1', 42)).not.toBe(billingEventId('s2', 42));
    expect(billingEventId('s1', 42)).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});
