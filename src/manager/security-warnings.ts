// Configurations that run, but that an operator must know are unsafe: logged at start-up and
// listed in the /readyz body, so neither a log reader nor a probe can miss them.
import type { ShardConfig } from '../config/types.js';

/** What the local provider does not isolate (docs/security.md). */
export const LOCAL_PROVIDER_WARNING =
  "the local provider runs jobs as the manager's own OS user on the manager's host: a job can read the manager's files, its database and the secrets key, and reach its network; use it for the demo and development, never for jobs you do not trust";

/** The warnings of a shard config; `demo` knows what it runs and warns of nothing here. */
export function securityWarnings(config: ShardConfig, demo: boolean): string[] {
  if (demo) return [];
  const local = Object.values(config.classes).filter((c) => c.provider === 'local').map((c) => c.name);
  return local.length ? [`${LOCAL_PROVIDER_WARNING} (classes: ${local.join(', ')})`] : [];
}
