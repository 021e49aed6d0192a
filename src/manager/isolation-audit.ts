// The isolation audit, run at start-up and every `isolation.auditInterval`: each provider reads its
// runner networks' ingress rules and the pure audit (src/isolation/firewall-audit.ts) names every
// opening, that is, any way into a job VM other than from the manager. Findings are logged and
// exported as `runner_fleet_isolation_findings`; with `audit: enforce` the manager will not start
// while there are any.
import type { Logger } from 'pino';
import type { ShardConfig } from '../config/types.js';
import { parseCidr } from '../isolation/cidr.js';
import { FINDING_KINDS } from '../isolation/firewall-audit.js';
import type { ClassFinding, Provider } from '../providers/provider.js';
import type { Metrics } from './metrics.js';

export class IsolationAuditError extends Error {
  override name = 'IsolationAuditError';
}

export interface AuditDeps {
  config: ShardConfig;
  providers: ReadonlyMap<string, Provider>;
  metrics: Metrics;
  log: Logger;
  /** Keeps the last audit's answer for the status page. */
  record?: AuditRecord;
}

/** One finding with the provider whose network it is in. */
export interface ProviderFinding extends ClassFinding {
  provider: string;
}

/** The last audit as the status page shows it; `at` null: none has run (yet, or ever: `off`). */
export interface AuditSnapshot {
  at: Date | null;
  findings: ProviderFinding[];
  /** Providers whose audit could not run, with the reason. */
  failed: string[];
}

/**
 * The last audit's answer, kept across activations: the status page reads it between audits,
 * and a standby shows what it found while it was active (or nothing, having never run one).
 */
export class AuditRecord {
  private last: AuditSnapshot = { at: null, findings: [], failed: [] };

  record(at: Date, findings: ReadonlyMap<string, ClassFinding[]>, failed: string[]): void {
    this.last = { at, findings: [...findings].flatMap(([provider, fs]) => fs.map((f) => ({ ...f, provider }))), failed: [...failed] };
  }

  snapshot(): AuditSnapshot {
    return this.last;
  }
}

/** One audit of every provider that can audit; a provider whose audit fails is logged and left out of the answer. */
export async function auditIsolation(d: AuditDeps): Promise<{ findings: Map<string, ClassFinding[]>; failed: string[] }> {
  const out = new Map<string, ClassFinding[]>();
  const failed: string[] = [];
  const managers = d.config.isolation.managerRanges.map(parseCidr);
  for (const [name, provider] of d.providers) {
    if (!provider.auditIsolation) continue;
    let findings: ClassFinding[];
    try {
      findings = await provider.auditIsolation(managers);
    } catch (err) {
      d.log.warn({ provider: name, err: (err as Error).message }, 'isolation audit failed; will try again');
      failed.push(`${name}: ${(err as Error).message}`);
      continue;
    }
    out.set(name, findings);
    for (const kind of FINDING_KINDS) d.metrics.isolationFindings.set({ provider: name, kind }, findings.filter((f) => f.kind === kind).length);
    d.metrics.isolationAuditTimestamp.set({ provider: name }, Date.now() / 1000);
    for (const f of findings) d.log.warn({ provider: name, kind: f.kind, rule: f.rule, classes: f.classes }, `isolation: ${f.message}`);
    if (findings.length === 0) d.log.info({ provider: name }, 'isolation audit: only the manager reaches the job VMs');
  }
  d.record?.record(new Date(), out, failed);
  return { findings: out, failed };
}

/**
 * The start-up audit, then one every interval. With `enforce`, findings at start-up (or an audit
 * that cannot run) refuse the start, with an error listing them; later findings are logged and exported: jobs in flight are not
 * stopped by a firewall change, but SREs get the alert. Returns the stop function.
 */
export async function startIsolationAudits(d: AuditDeps): Promise<() => void> {
  const { audit, managerRanges, auditIntervalMs } = d.config.isolation;
  if (audit === 'off') return () => {};
  const auditable = [...d.providers.values()].some((p) => p.auditIsolation);
  if (managerRanges.length === 0) {
    if (auditable) d.log.info('isolation audit off: set isolation.managerRanges to the addresses the manager connects from');
    return () => {};
  }
  // No provider has a firewall to audit (local, mac): an empty audit would read as a clean one.
  if (!auditable) return () => {};
  const first = await auditIsolation(d);
  const all = [...first.findings.values()].flat();
  if (audit === 'enforce' && all.length) {
    throw new IsolationAuditError(`isolation audit (isolation.audit: enforce) found ${all.length} opening${all.length === 1 ? '' : 's'} into job VMs:\n  ${all.map((f) => f.message).join('\n  ')}`);
  }
  // Enforce means the start waits for a clean audit: one that could not run proves nothing.
  if (audit === 'enforce' && first.failed.length) throw new IsolationAuditError(`isolation audit (isolation.audit: enforce) could not run:\n  ${first.failed.join('\n  ')}`);
  const timer = setInterval(() => void auditIsolation(d).catch((err) => d.log.warn({ err }, 'isolation audit failed')), auditIntervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
