// What a job's `cache:` asks of the distributed cache, decided without I/O: object names in the
// shard's bucket (`<prefix>/project/<id>/<key>`, as gitlab-runner names them), which keys to try
// on restore (the key, then `fallback_keys`, then CACHE_FALLBACK_KEY) and which to write on save.
// A fallback key is the job's own text, unlike the key GitLab computed: one that names a
// protected ref's cache (`-protected`) is dropped for a job on an unprotected ref, so an
// unprotected branch can never read what protected branches built (GitLab's cache separation).
import { posix } from 'node:path';
import type { JobPayload } from '../gitlab/job-payload.js';
import { predefinedValue, variableValue } from '../gitlab/job-payload.js';

export interface CacheEntryPlan {
  key: string;
  paths: string[];
  untracked: boolean;
  /** Object names to try in order on restore (empty: policy push). */
  restore: { key: string; object: string }[];
  /** Object name written on save (null: policy pull). */
  save: { key: string; object: string } | null;
  when: 'on_success' | 'on_failure' | 'always';
}

/** A cache key as an object path segment list: cleaned, trailing slashes dropped; null if it escapes or is empty. */
export function cleanKey(key: string): string | null {
  const trimmed = key.replace(/[\s/\\]+$/, '');
  if (!trimmed || trimmed.includes('\0') || trimmed.length > 512) return null;
  const norm = posix.normalize(trimmed).replace(/^\/+/, '');
  if (!norm || norm === '.' || norm.startsWith('..')) return null;
  return norm;
}

export function objectName(prefix: string, projectId: string, key: string): string {
  return [prefix, 'project', projectId, key].filter(Boolean).join('/');
}

export function cachePlan(job: JobPayload, prefix: string): { entries: CacheEntryPlan[]; warnings: string[] } {
  const warnings: string[] = [];
  const entries: CacheEntryPlan[] = [];
  const projectId = String(job.job_info?.project_id ?? predefinedValue(job, 'CI_PROJECT_ID') ?? '0').replace(/[^0-9]/g, '') || '0';
  const protectedRef = predefinedValue(job, 'CI_COMMIT_REF_PROTECTED') === 'true';
  const envFallback = variableValue(job, 'CACHE_FALLBACK_KEY');
  for (const [i, c] of (job.cache ?? []).entries()) {
    const key = cleanKey(c.key || 'default');
    if (!key) {
      warnings.push(`cache[${i}].key: ${JSON.stringify((c.key ?? '').slice(0, 80))} is not a usable cache key; this cache is skipped`);
      continue;
    }
    const policy = c.policy ?? 'pull-push';
    const restore: CacheEntryPlan['restore'] = [];
    if (policy !== 'push') {
      restore.push({ key, object: objectName(prefix, projectId, key) });
      for (const raw of [...(c.fallback_keys ?? []), ...(envFallback ? [envFallback] : [])]) {
        const fk = cleanKey(raw);
        if (!fk) {
          warnings.push(`cache[${i}].fallback_keys: ${JSON.stringify(raw.slice(0, 80))} is not a usable cache key; skipped`);
          continue;
        }
        if (fk.endsWith('-protected') && !protectedRef) {
          warnings.push(`cache[${i}]: fallback key ${JSON.stringify(fk.slice(0, 80))} names a protected ref's cache; not used on an unprotected ref`);
          continue;
        }
        if (!restore.some((r) => r.key === fk)) restore.push({ key: fk, object: objectName(prefix, projectId, fk) });
      }
    }
    entries.push({
      key,
      paths: c.paths ?? [],
      untracked: c.untracked === true,
      restore,
      save: policy === 'pull' ? null : { key, object: objectName(prefix, projectId, key) },
      when: c.when ?? 'on_success',
    });
  }
  return { entries, warnings };
}
