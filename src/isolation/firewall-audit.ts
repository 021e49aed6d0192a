// Isolation audit of a runner network's ingress rules (pure). The rule: only the manager may reach
// a job VM, on its access ports; nothing else, and never another job VM. Given the network's
// ingress rules (GCE firewall rules, normalised), the VMs' network tags and the manager's source
// ranges, it names every rule that lets anything else in, and says when the manager itself is
// shut out. Rules are weighed as the cloud does: a deny at the same or a higher priority (lower
// number) takes precedence over an allow for the sources and ports it covers.
import { type Cidr, contains, formatCidr, parseNetwork, subtract } from './cidr.js';

export interface PortRange {
  /** `tcp`, `udp`, `icmp`, ... or `all`. */
  protocol: string;
  from: number;
  to: number;
}

export interface IngressRule {
  name: string;
  /** Lower wins (GCE: 0-65535, default 1000). */
  priority: number;
  action: 'allow' | 'deny';
  sourceRanges: Cidr[];
  sourceTags: string[];
  sourceServiceAccounts: string[];
  /** Empty: the rule applies to every VM of the network. */
  targetTags: string[];
  /** Job VMs have no service account: a rule aimed at service accounts never applies to them. */
  targetServiceAccounts: string[];
  ports: PortRange[];
  /** Sources the audit cannot weigh (IPv6 ranges, prefix lists): always an opening. */
  otherSources?: string[];
  /** How findings name the rule (default `firewall rule "NAME" (priority N)`). */
  label?: string;
  /** How findings name the VMs of a source tag (default `VMs tagged`; EC2: `members of`). */
  groupNoun?: string;
}

export interface AuditInput {
  rules: IngressRule[];
  /** The job VMs' network tags. */
  vmTags: string[];
  managerRanges: Cidr[];
  /** TCP ports the manager needs (22; 5985-5986 for WinRM). */
  accessPorts: number[];
}

export const FINDING_KINDS = ['vm-to-vm', 'others-can-reach', 'manager-cannot-reach'] as const;
export type FindingKind = (typeof FINDING_KINDS)[number];

export interface IsolationFinding {
  kind: FindingKind;
  rule?: string;
  message: string;
}

/** A finding and the classes whose VMs it concerns. */
export interface ClassFinding extends IsolationFinding {
  classes: string[];
}

/** Audits each class against its rules; a finding shared by several classes is listed once, with all of them. */
export function auditClasses(classes: { className: string; rules: IngressRule[]; vmTags: string[] }[], managerRanges: Cidr[], accessPorts: number[]): ClassFinding[] {
  const found = new Map<string, ClassFinding>();
  for (const { className, rules, vmTags } of classes) {
    for (const f of auditIngress({ rules, vmTags, managerRanges, accessPorts })) {
      const key = `${f.kind}\0${f.message}`;
      const seen = found.get(key);
      if (seen) seen.classes.push(className);
      else found.set(key, { ...f, classes: [className] });
    }
  }
  return [...found.values()];
}

/** GCE `allowed`/`denied` entries (`{ IPProtocol: 'tcp', ports: ['22', '5985-5986'] }`) as ranges. */
function gcePorts(entries: { IPProtocol?: string | null; ports?: string[] | null }[]): PortRange[] {
  const out: PortRange[] = [];
  for (const e of entries) {
    const protocol = (e.IPProtocol ?? 'all').toLowerCase();
    if (!e.ports?.length) {
      out.push({ protocol, from: 0, to: 65535 });
      continue;
    }
    for (const p of e.ports) {
      const [a, b] = p.split('-').map(Number);
      out.push({ protocol, from: a!, to: b ?? a! });
    }
  }
  return out;
}

function formatPorts(ports: PortRange[]): string {
  return ports.map((p) => (p.protocol === 'all' ? 'all traffic' : p.from === 0 && p.to === 65535 ? `${p.protocol}:all` : `${p.protocol}:${p.from === p.to ? p.from : `${p.from}-${p.to}`}`)).join(', ');
}

function portsCover(outer: PortRange[], inner: PortRange[]): boolean {
  return inner.every((i) => outer.some((o) => (o.protocol === 'all' || o.protocol === i.protocol) && o.from <= i.from && o.to >= i.to));
}

function appliesToVms(r: IngressRule, vmTags: string[]): boolean {
  return r.targetServiceAccounts.length === 0 && (r.targetTags.length === 0 || r.targetTags.some((t) => vmTags.includes(t)));
}

export function auditIngress(input: AuditInput): IsolationFinding[] {
  const { vmTags, managerRanges } = input;
  const rules = input.rules.filter((r) => appliesToVms(r, vmTags)).sort((a, b) => a.priority - b.priority || (a.action === 'deny' ? -1 : 1));
  const findings: IsolationFinding[] = [];
  const managers = managerRanges.map(formatCidr).join(', ');
  for (const r of rules) {
    if (r.action !== 'allow') continue;
    const deniers = rules.filter((d) => d.action === 'deny' && d.priority <= r.priority && portsCover(d.ports, r.ports));
    const what = r.label ?? `firewall rule "${r.name}" (priority ${r.priority})`;
    const noun = r.groupNoun ?? 'VMs tagged';
    const to = `reach the job VMs on ${formatPorts(r.ports)}`;
    const deniedTags = new Set(deniers.flatMap((d) => d.sourceTags));
    const deniedRanges = deniers.flatMap((d) => d.sourceRanges);
    const tags = r.sourceTags.filter((t) => !deniedTags.has(t));
    const own = tags.filter((t) => vmTags.includes(t));
    if (own.length) findings.push({ kind: 'vm-to-vm', rule: r.name, message: `${what} lets ${noun} ${own.join(', ')} (the job VMs themselves) ${to}` });
    const others = tags.filter((t) => !vmTags.includes(t));
    if (others.length) findings.push({ kind: 'others-can-reach', rule: r.name, message: `${what} lets ${noun} ${others.join(', ')} ${to}` });
    if (r.sourceServiceAccounts.length) findings.push({ kind: 'others-can-reach', rule: r.name, message: `${what} lets VMs of ${r.sourceServiceAccounts.join(', ')} ${to}` });
    if (r.otherSources?.length) findings.push({ kind: 'others-can-reach', rule: r.name, message: `${what} lets ${r.otherSources.join(', ')} ${to}` });
    const open = r.sourceRanges.filter((s) => subtract(s, [...managerRanges, ...deniedRanges]).length > 0);
    if (open.length) {
      findings.push({ kind: 'others-can-reach', rule: r.name, message: `${what} lets ${open.map(formatCidr).join(', ')} ${to}; only the manager (${managers || 'isolation.managerRanges'}) should` });
    }
  }
  for (const port of input.accessPorts) {
    const need: PortRange[] = [{ protocol: 'tcp', from: port, to: port }];
    const reached = managerRanges.length > 0 && managerRanges.every((m) =>
      rules.some((r) => r.action === 'allow' && portsCover(r.ports, need) && r.sourceRanges.some((s) => contains(s, m))
        && !rules.some((d) => d.action === 'deny' && d.priority <= r.priority && portsCover(d.ports, need) && d.sourceRanges.some((s) => contains(s, m)))),
    );
    if (!reached) findings.push({ kind: 'manager-cannot-reach', message: `no firewall rule lets the manager (${managers || 'isolation.managerRanges'}) reach the job VMs on tcp:${port}: they would never become ready` });
  }
  return findings;
}

/** A GCE firewall resource (as the Compute API returns it) in the audit's terms; null for egress or disabled rules. */
export function fromGceFirewall(f: {
  name?: string | null; direction?: string | null; disabled?: boolean | null; priority?: number | null;
  sourceRanges?: string[] | null; sourceTags?: string[] | null; sourceServiceAccounts?: string[] | null;
  targetTags?: string[] | null; targetServiceAccounts?: string[] | null;
  allowed?: { IPProtocol?: string | null; ports?: string[] | null }[] | null; denied?: { IPProtocol?: string | null; ports?: string[] | null }[] | null;
}): IngressRule | null {
  if ((f.direction ?? 'INGRESS') !== 'INGRESS' || f.disabled) return null;
  const deny = (f.denied?.length ?? 0) > 0;
  // GCE: an ingress rule that names no source at all applies to every source (0.0.0.0/0).
  const sourceless = !f.sourceRanges?.length && !f.sourceTags?.length && !f.sourceServiceAccounts?.length;
  return {
    name: f.name ?? '(unnamed)',
    priority: f.priority ?? 1000,
    action: deny ? 'deny' : 'allow',
    // An unparseable range is treated as everything: the audit must not miss an opening.
    sourceRanges: sourceless ? [{ base: 0, prefix: 0 }] : (f.sourceRanges ?? []).map(rangeOrEverything),
    sourceTags: f.sourceTags ?? [],
    sourceServiceAccounts: f.sourceServiceAccounts ?? [],
    targetTags: f.targetTags ?? [],
    targetServiceAccounts: f.targetServiceAccounts ?? [],
    ports: gcePorts((deny ? f.denied : f.allowed) ?? []),
  };
}

/** An unreadable source range (IPv6, say) is treated as everything: the audit must not miss an opening. */
function rangeOrEverything(s: string): Cidr {
  try {
    return parseNetwork(s);
  } catch {
    return { base: 0, prefix: 0 };
  }
}

type Ec2Permission = {
  IpProtocol?: string; FromPort?: number; ToPort?: number;
  IpRanges?: { CidrIp?: string }[]; Ipv6Ranges?: { CidrIpv6?: string }[];
  PrefixListIds?: { PrefixListId?: string }[]; UserIdGroupPairs?: { GroupId?: string }[];
};

/**
 * An EC2 security group's inbound permissions in the audit's terms: allow-only rules that apply
 * to the group's members, where a referenced group is a source "tag" (a group referencing one of
 * the VMs' own groups lets job VMs reach each other).
 */
export function fromEc2SecurityGroup(sg: { GroupId?: string; GroupName?: string; IpPermissions?: Ec2Permission[] }): IngressRule[] {
  const id = sg.GroupId ?? '(unknown group)';
  return (sg.IpPermissions ?? []).map((p, i) => {
    const protocol = p.IpProtocol === '-1' || p.IpProtocol === undefined ? 'all' : ({ '6': 'tcp', '17': 'udp', '1': 'icmp' } as Record<string, string>)[p.IpProtocol] ?? p.IpProtocol.toLowerCase();
    // tcp/udp carry a port range; icmp's "ports" are type and code, and -1 means all of them.
    const ranged = (protocol === 'tcp' || protocol === 'udp') && p.FromPort !== undefined && p.FromPort !== -1;
    return {
      name: `${id}#${i + 1}`,
      priority: 0,
      action: 'allow' as const,
      sourceRanges: (p.IpRanges ?? []).map((r) => rangeOrEverything(r.CidrIp ?? '')),
      sourceTags: (p.UserIdGroupPairs ?? []).map((g) => g.GroupId ?? '(unknown group)'),
      sourceServiceAccounts: [],
      targetTags: [id],
      targetServiceAccounts: [],
      ports: [{ protocol, from: ranged ? p.FromPort! : 0, to: ranged ? p.ToPort ?? p.FromPort! : 65535 }],
      otherSources: [...(p.Ipv6Ranges ?? []).map((r) => r.CidrIpv6 ?? '?'), ...(p.PrefixListIds ?? []).map((r) => `prefix list ${r.PrefixListId ?? '?'}`)],
      label: `security group ${id}${sg.GroupName ? ` (${sg.GroupName})` : ''}`,
      groupNoun: 'members of',
    };
  });
}
