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

describe('compute_minutes.v1 JSON Schema (deploy/billing)', async () => {
  const { readFileSync } = await import('node:fs');
  const { resolve } = await import('node:path');
  const { Ajv2020 } = await import('ajv/dist/2020.js');
  // A CommonJS module: its default export is the plugin function (typed as the module here).
  const addFormats = (await import('ajv-formats')).default as unknown as (ajv: InstanceType<typeof Ajv2020>) => void;
  const schema = JSON.parse(readFileSync(resolve(import.meta.dirname, '../../deploy/billing/compute_minutes.v1.schema.json'), 'utf8'));
  const ajv = new Ajv2020({ allErrors: true, strict: true });
  addFormats(ajv);
  const validate = ajv.compile(schema);
  const base = {
    shard: 'gcp-us-1', jobId: 1234, pipelineId: 99, projectId: 7, namespaceId: 70, rootNamespaceId: 7,
    runnerClass: 'saas-linux-small-amd64', costFactor: 2, provider: 'gcp', machineType: 'n2d-standard-2',
    startedAt: new Date('2026-11-24T10:00:00.000Z'), finishedAt: new Date('2026-11-24T10:03:20.250Z'), outcome: 'success' as const, failureReason: null,
  };

  it('describes every event the manager builds', () => {
    for (const ev of [
      buildBillingEvent(base),
      buildBillingEvent({ ...base, outcome: 'failed', failureReason: 'runner_system_failure', machineType: null, pipelineId: null, projectId: null, namespaceId: null, rootNamespaceId: null }),
      buildBillingEvent({ ...base, outcome: 'canceled', costFactor: 0.5, finishedAt: base.startedAt }),
    ]) {
      expect(validate(JSON.parse(JSON.stringify(ev))), JSON.stringify(validate.errors)).toBe(true);
    }
  });

  it('rejects what is not a v1 event', () => {
    const ev = JSON.parse(JSON.stringify(buildBillingEvent(base)));
    expect(validate({ ...ev, computeMinutes: 6.67 })).toBe(false);
    expect(validate({ ...ev, type: 'compute_minutes.v2' })).toBe(false);
    expect(validate({ ...ev, extra: 1 })).toBe(false);
    const { billable: _, ...missing } = ev;
    expect(validate(missing)).toBe(false);
  });
});
