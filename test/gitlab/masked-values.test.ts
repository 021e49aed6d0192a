// What a job's trace masks: the token and masked variables of 8+ characters, with their URL-encoded
// forms, within bounds; a job over a bound is refused with the bound named.
import { describe, expect, it } from 'vitest';
import type { JobPayload } from '../../src/gitlab/job-payload.js';
import { MaskAutomaton, Masker } from '../../src/gitlab/mask.js';
import { ignoredWarning, MAX_MASK_PATTERN_BYTES, MAX_MASKED_VALUE_BYTES, MAX_MASKED_VALUES, maskPlan, urlEncodedForms } from '../../src/gitlab/masked-values.js';

type Vars = JobPayload['variables'];
const job = (variables: Vars) => ({ token: 'glcbt-0123456789abcdef', variables });

function mask(variables: Vars, text: string): string {
  const plan = maskPlan(job(variables));
  if (!plan.ok) throw new Error(plan.error);
  const m = new Masker(new MaskAutomaton(plan.patterns));
  return Buffer.concat([m.push(Buffer.from(text)), m.end()]).toString();
}

describe('maskPlan', () => {
  it('masks the job token and masked variables, not public ones', () => {
    const vars: Vars = [
      { key: 'A', value: 'masked-value-1', masked: true },
      { key: 'B', value: 'public-value-2', masked: false },
    ];
    expect(mask(vars, 'glcbt-0123456789abcdef masked-value-1 public-value-2')).toBe('[MASKED] [MASKED] public-value-2');
  });

  it('leaves values under 8 characters unmasked and names them (never their values) in a warning', () => {
    const vars: Vars = [
      { key: 'SHORT', value: 'abc1234', masked: true },
      { key: 'PADDED', value: '  abc12  ', masked: true },
      { key: 'LONG', value: 'abc12345', masked: true },
    ];
    const plan = maskPlan(job(vars));
    expect(plan.ok && plan.ignored).toEqual(['SHORT', 'PADDED']);
    expect(mask(vars, 'abc1234 abc12 abc12345')).toBe('abc1234 abc12 [MASKED]');
    const warning = ignoredWarning(['SHORT', 'PADDED'])!;
    expect(warning).toContain('SHORT, PADDED');
    expect(warning).not.toContain('abc12');
    expect(ignoredWarning([])).toBeNull();
    // A name that could forge a trace line is quoted.
    const odd = maskPlan(job([{ key: 'X\nJob succeeded', value: 'short', masked: true }]));
    expect(odd.ok && ignoredWarning(odd.ignored)).toContain('masked variable "X\\nJob succeeded" shorter');
  });

  it('trims surrounding whitespace, as GitLab Runner does', () => {
    expect(mask([{ key: 'T', value: ' spaced-secret\n', masked: true }], '[spaced-secret]')).toBe('[[MASKED]]');
  });

  it('masks the percent-encoded forms of a value: RFC 3986, form (+ for space), encodeURIComponent, Python quote', () => {
    const value = "us3r:p@ss/w0rd+x y!'";
    const vars: Vars = [{ key: 'P', value, masked: true }];
    const forms = [encodeURIComponent(value), 'us3r%3Ap%40ss%2Fw0rd%2Bx%20y%21%27', 'us3r%3Ap%40ss%2Fw0rd%2Bx+y%21%27', 'us3r%3Ap%40ss/w0rd%2Bx%20y%21%27'];
    expect(new Set(urlEncodedForms(value))).toEqual(new Set(forms));
    for (const f of [value, ...forms]) expect(mask(vars, `https://bot:${f}@example.com/`)).toBe('https://bot:[MASKED]@example.com/');
    expect(urlEncodedForms('plain-token_123.~')).toEqual([]); // nothing to encode: no extra pattern
    expect(() => urlEncodedForms('lone \ud800 surrogate')).not.toThrow();
  });

  it('refuses more than MAX_MASKED_VALUES distinct values (the token counts), naming the bound', () => {
    const many = (n: number): Vars => Array.from({ length: n }, (_, i) => ({ key: `V${i}`, value: `value-number-${i}`, masked: true }));
    expect(maskPlan(job(many(MAX_MASKED_VALUES - 1))).ok).toBe(true);
    // Duplicates count once.
    expect(maskPlan(job([...many(MAX_MASKED_VALUES - 1), ...many(10)])).ok).toBe(true);
    const plan = maskPlan(job(many(MAX_MASKED_VALUES)));
    expect(plan).toEqual({ ok: false, error: 'the job has 1,001 masked values; runner-fleet masks at most 1,000' });
  });

  it('refuses a value longer than MAX_MASKED_VALUE_BYTES, naming the variable', () => {
    expect(maskPlan(job([{ key: 'BIG', value: 'x'.repeat(MAX_MASKED_VALUE_BYTES), masked: true }])).ok).toBe(true);
    const plan = maskPlan(job([{ key: 'BIG', value: 'x'.repeat(MAX_MASKED_VALUE_BYTES + 1), masked: true }]));
    expect(plan.ok).toBe(false);
    expect(!plan.ok && plan.error).toBe('masked variable BIG is 8,193 bytes long; runner-fleet masks values of at most 8,192 bytes');
  });

  it('refuses values whose patterns (with encoded forms) pass MAX_MASK_PATTERN_BYTES', () => {
    // 40 values of 8 KiB of "/" : each has forms of 3x its size.
    const vars: Vars = Array.from({ length: 40 }, (_, i) => ({ key: `K${i}`, value: `${i}-`.padEnd(MAX_MASKED_VALUE_BYTES, '/'), masked: true }));
    const plan = maskPlan(job(vars));
    expect(plan.ok).toBe(false);
    expect(!plan.ok && plan.error).toMatch(/^the masked values take [\d,]+ KiB with their URL-encoded forms; runner-fleet masks at most 256 KiB$/);
    expect(MAX_MASK_PATTERN_BYTES).toBe(256 * 1024);
  });
});
