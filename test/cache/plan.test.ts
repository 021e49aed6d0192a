// The cache plan (pure): object names as gitlab-runner names them, key hygiene, fallback order,
// policies, and the protected-ref rule for fallback keys.
import { describe, expect, it } from 'vitest';
import { cachePlan, cleanKey, objectName } from '../../src/cache/plan.js';
import { parseJobPayload, type JobPayload } from '../../src/gitlab/job-payload.js';

function job(cache: unknown[], vars: { key: string; value: string }[] = []): JobPayload {
  const p = parseJobPayload({ id: 5, token: 'tok', job_info: { project_id: 42 }, variables: vars, steps: [{ name: 'script', script: ['true'] }], cache });
  if (!p.ok) throw new Error(p.error);
  return p.job;
}

describe('cache plan', () => {
  it('cleans keys and refuses those that leave the prefix', () => {
    expect(cleanKey('deps-1-non_protected')).toBe('deps-1-non_protected');
    expect(cleanKey('a/./b//c/')).toBe('a/b/c');
    expect(cleanKey('/abs')).toBe('abs');
    for (const bad of ['..', '../x', 'a/../../x', '', '   ', '/']) expect(cleanKey(bad)).toBeNull();
    expect(objectName('pre/fix', '42', 'k')).toBe('pre/fix/project/42/k');
    expect(objectName('', '42', 'k')).toBe('project/42/k');
  });

  it('restores the key, then fallback_keys, then CACHE_FALLBACK_KEY, and saves the key (pull-push)', () => {
    const { entries } = cachePlan(job([{ key: 'k-1-non_protected', paths: ['v/'], fallback_keys: ['main-1-non_protected'] }], [{ key: 'CACHE_FALLBACK_KEY', value: 'any-1-non_protected' }]), 'p');
    expect(entries[0]!.restore.map((r) => r.object)).toEqual(['p/project/42/k-1-non_protected', 'p/project/42/main-1-non_protected', 'p/project/42/any-1-non_protected']);
    expect(entries[0]!.save).toEqual({ key: 'k-1-non_protected', object: 'p/project/42/k-1-non_protected' });
    expect(entries[0]!.when).toBe('on_success');
  });

  it('pull never saves, push never restores', () => {
    const { entries } = cachePlan(job([{ key: 'a', policy: 'pull' }, { key: 'b', policy: 'push' }]), '');
    expect([entries[0]!.restore.length, entries[0]!.save]).toEqual([1, null]);
    expect([entries[1]!.restore.length, entries[1]!.save?.object]).toEqual([0, 'project/42/b']);
  });

  it('drops a fallback key naming a protected cache on an unprotected ref, even disguised, and keeps it on a protected one', () => {
    const cache = [{ key: 'mr-1-non_protected', fallback_keys: ['main-1-protected', 'main-1-protected/', './main-1-protected'] }];
    const open = cachePlan(job(cache, [{ key: 'CI_COMMIT_REF_PROTECTED', value: 'false' }]), '');
    expect(open.entries[0]!.restore.map((r) => r.key)).toEqual(['mr-1-non_protected']);
    expect(open.warnings).toHaveLength(3);
    // A job's own variable cannot make its ref protected: GitLab's predefined value comes first.
    const forged = cachePlan(job(cache, [{ key: 'CI_COMMIT_REF_PROTECTED', value: 'false' }, { key: 'CI_COMMIT_REF_PROTECTED', value: 'true' }]), '');
    expect(forged.entries[0]!.restore.map((r) => r.key)).toEqual(['mr-1-non_protected']);
    const prot = cachePlan(job(cache, [{ key: 'CI_COMMIT_REF_PROTECTED', value: 'true' }]), '');
    expect(prot.entries[0]!.restore.map((r) => r.key)).toEqual(['mr-1-non_protected', 'main-1-protected']);
  });

  it('skips an entry whose key is unusable, naming the field', () => {
    const { entries, warnings } = cachePlan(job([{ key: '../../etc' }, { key: 'ok' }]), '');
    expect(entries.map((e) => e.key)).toEqual(['ok']);
    expect(warnings).toEqual(['cache[0].key: "../../etc" is not a usable cache key; this cache is skipped']);
  });
});
