// Reads generated Terraform JSON back into the cloud APIs' own shapes, as the Terraform google and
// aws providers map their arguments: google_compute_firewall -> a Compute `Firewall` body,
// aws_security_group + aws_vpc_security_group_ingress_rule -> EC2 `IpPermissions`. An argument
// this reader does not know fails the test, so nothing the generator writes goes unchecked.

type Json = Record<string, unknown>;

function known(what: string, body: Json, keys: string[]): void {
  const extra = Object.keys(body).filter((k) => !keys.includes(k));
  if (extra.length) throw new Error(`${what}: arguments this test does not map: ${extra.join(', ')}`);
}

export function resources(doc: Json, type: string): [string, Json][] {
  return Object.entries(((doc['resource'] as Record<string, Record<string, Json>> | undefined)?.[type]) ?? {});
}

export interface GceFirewallBody {
  name: string;
  network: string;
  priority: number;
  direction: string;
  sourceRanges?: string[];
  sourceTags?: string[];
  targetTags?: string[];
  destinationRanges?: string[];
  allowed?: { IPProtocol: string; ports?: string[] }[];
  denied?: { IPProtocol: string; ports?: string[] }[];
  description?: string;
}

const FIREWALL_ARGS = ['project', 'network', 'name', 'description', 'direction', 'priority', 'source_ranges', 'source_tags', 'target_tags', 'destination_ranges', 'allow', 'deny'];

/** The generated firewall rules as `firewalls.insert` bodies. */
export function gceFirewalls(doc: Json): GceFirewallBody[] {
  const entries = (v: unknown) => (v as { protocol: string; ports?: string[] }[] | undefined)?.map((e) => {
    known('allow/deny entry', e as Json, ['protocol', 'ports']);
    return { IPProtocol: e.protocol, ...(e.ports ? { ports: e.ports } : {}) };
  });
  return resources(doc, 'google_compute_firewall').map(([key, r]) => {
    known(`google_compute_firewall.${key}`, r, FIREWALL_ARGS);
    const body: GceFirewallBody = { name: r['name'] as string, network: `global/networks/${r['network'] as string}`, priority: r['priority'] as number, direction: r['direction'] as string };
    const copy = (from: string, to: keyof GceFirewallBody) => {
      if (r[from] !== undefined) (body as unknown as Json)[to] = r[from];
    };
    copy('source_ranges', 'sourceRanges');
    copy('source_tags', 'sourceTags');
    copy('target_tags', 'targetTags');
    copy('destination_ranges', 'destinationRanges');
    copy('description', 'description');
    if (r['allow']) body.allowed = entries(r['allow']);
    if (r['deny']) body.denied = entries(r['deny']);
    return body;
  });
}

export interface Ec2Group {
  /** Terraform key of the aws_security_group. */
  key: string;
  name: string;
  description: string;
  permissions: { IpProtocol: string; FromPort?: number; ToPort?: number; IpRanges: { CidrIp: string }[]; UserIdGroupPairs: { GroupId: string }[] }[];
}

const INGRESS_ARGS = ['provider', 'security_group_id', 'description', 'cidr_ipv4', 'referenced_security_group_id', 'ip_protocol', 'from_port', 'to_port'];
const GROUP_ARGS = ['provider', 'name', 'description', 'vpc_id', 'tags'];

/**
 * The generated security groups with their inbound rules; a `${aws_security_group.K.id}`
 * reference becomes `idOf(K)` (the group's id once it exists).
 */
export function ec2Groups(doc: Json, idOf: (key: string) => string): Ec2Group[] {
  const ref = (v: string) => {
    const m = /^\$\{aws_security_group\.([A-Za-z0-9_-]+)\.id\}$/.exec(v);
    if (!m) throw new Error(`not a security group reference: ${v}`);
    return m[1]!;
  };
  const rules = resources(doc, 'aws_vpc_security_group_ingress_rule');
  return resources(doc, 'aws_security_group').map(([key, g]) => {
    known(`aws_security_group.${key}`, g, GROUP_ARGS);
    const permissions = rules.filter(([, r]) => ref(r['security_group_id'] as string) === key).map(([k, r]) => {
      known(`aws_vpc_security_group_ingress_rule.${k}`, r, INGRESS_ARGS);
      const ported = r['ip_protocol'] !== '-1';
      return {
        IpProtocol: r['ip_protocol'] as string,
        ...(ported ? { FromPort: r['from_port'] as number, ToPort: r['to_port'] as number } : {}),
        IpRanges: r['cidr_ipv4'] ? [{ CidrIp: r['cidr_ipv4'] as string }] : [],
        UserIdGroupPairs: r['referenced_security_group_id'] ? [{ GroupId: idOf(ref(r['referenced_security_group_id'] as string)) }] : [],
      };
    });
    return { key, name: g['name'] as string, description: g['description'] as string, permissions };
  });
}
