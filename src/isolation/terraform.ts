// Terraform JSON (`*.tf.json`) for a shard's runner network (pure: config and registry rows in,
// a JSON object out). Per cloud provider of the shard's classes: the runner subnet, with its CIDR
// from the registry, and the ingress rules the isolation audit (firewall-audit.ts) accepts: only
// the manager (isolation.managerRanges) reaches job VMs, on the ports the provider connects to;
// nothing reaches them from another job VM; egress is allowed. Cloud metadata is not a network
// matter on either cloud (neither GCE firewall rules nor security groups see the link-local
// metadata server): job VMs get no service account / instance profile, and the aws user data
// drops the job user's traffic to it, so no rule here claims to block it.
import type { ShardConfig } from '../config/types.js';
import { parseAwsConfig, parseAwsMachine } from '../providers/aws/config.js';
import { parseGcpConfig, parseGcpMachine } from '../providers/gcp/config.js';
import { parseMacConfig, parseMacMachine } from '../providers/mac/config.js';
import { formatCidr, parseCidr } from './cidr.js';
import type { RegistryRow } from './network-plan.js';

export class TerraformError extends Error {
  override name = 'TerraformError';
  constructor(readonly errors: string[]) {
    super(errors.join('\n'));
  }
}

/** Where a provider's runner subnet is looked up in the registry. */
export interface RegistryKey {
  environment: string;
  network: string;
}

export interface TerraformInput {
  config: ShardConfig;
  rows: readonly RegistryRow[];
  /** Names the registry row instead of the default key (one cloud provider only). */
  key?: RegistryKey;
}

type Json = Record<string, unknown>;

/** GCE rule priorities: the manager's allow must outrank the denies (a deny wins ties), and both outrank the network's own rules (default 1000). */
export const GCE_PRIORITY = { allowManager: 100, denyOthers: 110, allowEgress: 1000 } as const;

/**
 * The registry row a provider's subnet is looked up by, when not named explicitly:
 * gcp `GCP/<project>` + `<network>/<subnetwork>`; aws and mac `AWS/<region>` + `<shard>/<provider>`.
 */
export function defaultRegistryKey(config: ShardConfig, provider: string): RegistryKey {
  const raw = config.providers[provider] ?? {};
  if (provider === 'gcp') {
    const gcp = parseGcpConfig(raw);
    return { environment: `GCP/${gcp.project}`, network: `${lastSegment(gcp.network ?? 'default')}/${lastSegment(gcp.subnetwork ?? '')}` };
  }
  const region = (provider === 'mac' ? parseMacConfig(raw) : parseAwsConfig(raw)).region;
  return { environment: `AWS/${region}`, network: `${config.shard}/${provider}` };
}

export function terraformFor(input: TerraformInput): Json {
  const { config } = input;
  const errors: string[] = [];
  const byProvider = new Map<string, string[]>();
  for (const [name, c] of Object.entries(config.classes)) byProvider.set(c.provider, [...(byProvider.get(c.provider) ?? []), name]);
  for (const [provider, classes] of byProvider) {
    if (provider === 'local') errors.push(`classes.${classes[0]}.provider: local has no cloud network (its VMs are SSH sandboxes on the manager's host): nothing to write`);
    else if (!['gcp', 'aws', 'mac'].includes(provider)) errors.push(`classes.${classes[0]}.provider: ${JSON.stringify(provider)} has no network terraform (supported: gcp, aws, mac)`);
  }
  if (config.isolation.managerRanges.length === 0) errors.push('isolation.managerRanges: expected the CIDRs the manager connects from (the only sources let into job VMs), got none');
  if (input.key && byProvider.size > 1) errors.push(`--environment/--network name one registry row, but the shard's classes use ${[...byProvider.keys()].join(', ')}: each needs its own subnet (leave them out to use each provider's default key)`);
  if (errors.length) throw new TerraformError(errors);

  const out = new Tf(config.shard);
  for (const [provider, classes] of byProvider) {
    try {
      const key = input.key ?? defaultRegistryKey(config, provider);
      if (provider === 'gcp') gcpNetwork(out, input, classes, key, errors);
      else ec2Network(out, input, provider, classes, key, errors);
    } catch (err) {
      if (err instanceof TerraformError) throw err;
      // A provider parser's field errors (the config loader has normally reported them already).
      errors.push(...String((err as Error).message).split('\n').filter(Boolean));
    }
  }
  if (errors.length) throw new TerraformError(errors);
  return out.json();
}

/** The registry row for a key, or an error naming the key and where it comes from. */
function lookUp(rows: readonly RegistryRow[], key: RegistryKey, from: string, errors: string[]): string | null {
  const row = rows.find((r) => r.environment === key.environment && r.network === key.network);
  if (row) return formatCidr(row.cidr);
  errors.push(
    `registry: no entry for environment ${JSON.stringify(key.environment)} network ${JSON.stringify(key.network)} (${from}); `
    + `allocate one with: runner-fleet network allocate --registry FILE --environment ${key.environment} --network ${key.network} --write`,
  );
  return null;
}

function gcpNetwork(out: Tf, input: TerraformInput, classes: string[], key: RegistryKey, errors: string[]): void {
  const { config } = input;
  const before = errors.length;
  const gcp = parseGcpConfig(config.providers['gcp'] ?? {});
  const from = input.key ? '--environment/--network' : 'GCP/<providers.gcp.project>, <providers.gcp.network>/<providers.gcp.subnetwork>';
  if (!gcp.subnetwork) errors.push('providers.gcp.subnetwork: expected the runner subnet\'s name (the subnet this command writes), got nothing');
  const machines = classes.map((c) => ({ name: c, m: parseGcpMachine(c, config.classes[c]!.machine) }));
  for (const { name, m } of machines) {
    // A rule without target tags applies to every VM of the network: the manager's own included.
    if (m.networkTags.length === 0) errors.push(`classes.${name}.machine.networkTags: expected the tags the runner firewall rules aim at, got none`);
  }
  const regionOf = (zone: string) => zone.replace(/-[a-z]$/, '');
  const urlRegion = /\/regions\/([^/]+)\//.exec(gcp.subnetwork ?? '')?.[1];
  const regions = new Set(machines.flatMap(({ m }) => m.zones.map(regionOf)));
  if (urlRegion) regions.add(urlRegion);
  if (regions.size > 1) errors.push(`classes.${machines[0]!.name}.machine.zones: a subnet lives in one region, but the gcp classes' zones${urlRegion ? ' and providers.gcp.subnetwork' : ''} span ${[...regions].sort().join(', ')}`);
  // The key is made of the subnetwork's name: look it up only once the settings are sound.
  const cidr = errors.length > before ? null : lookUp(input.rows, key, from, errors);
  if (!cidr || !gcp.subnetwork) return;

  // A network named by path may be a Shared VPC's: its subnets and rules live in its host project.
  const base = { project: /projects\/([^/]+)\//.exec(gcp.network ?? '')?.[1] ?? gcp.project, network: lastSegment(gcp.network ?? 'default') };
  const tags = unique(machines.flatMap(({ m }) => m.networkTags));
  out.require('google', { source: 'hashicorp/google', version: '>= 5.0' });
  out.resource('google_compute_subnetwork', 'gcp_runners', { ...base, name: lastSegment(gcp.subnetwork), region: [...regions][0], ip_cidr_range: cidr, description: `runner-fleet shard ${config.shard}: job VMs (registry: ${key.environment} ${key.network})` });
  // One allow per set of access ports, aimed at the tags of the classes that need it.
  for (const [ports, tagsOfPorts] of groupBy(machines, ({ m }) => accessPorts(m.os === 'windows' && m.windowsAccess === 'password'), ({ m }) => m.networkTags)) {
    const winrm = ports.length > 1;
    out.resource('google_compute_firewall', `gcp_allow_manager${winrm ? '_winrm' : ''}`, {
      ...base, name: `rf-${config.shard}-allow-manager${winrm ? '-winrm' : ''}`, description: 'runner-fleet: only the manager reaches job VMs, on their access ports',
      direction: 'INGRESS', priority: GCE_PRIORITY.allowManager, source_ranges: config.isolation.managerRanges, target_tags: unique(tagsOfPorts),
      allow: [{ protocol: 'tcp', ports: ports.map(String) }],
    });
  }
  // Explicit denies: without them the network's wider allows (default-allow-internal, ...) reach job VMs.
  out.resource('google_compute_firewall', 'gcp_deny_vm_to_vm', {
    ...base, name: `rf-${config.shard}-deny-vm-to-vm`, description: 'runner-fleet: no traffic between job VMs',
    direction: 'INGRESS', priority: GCE_PRIORITY.denyOthers, source_tags: tags, target_tags: tags, deny: [{ protocol: 'all' }],
  });
  out.resource('google_compute_firewall', 'gcp_deny_ingress', {
    ...base, name: `rf-${config.shard}-deny-ingress`, description: 'runner-fleet: nothing but the manager reaches job VMs',
    direction: 'INGRESS', priority: GCE_PRIORITY.denyOthers, source_ranges: ['0.0.0.0/0'], target_tags: tags, deny: [{ protocol: 'all' }],
  });
  out.resource('google_compute_firewall', 'gcp_allow_egress', {
    ...base, name: `rf-${config.shard}-allow-egress`, description: 'runner-fleet: jobs reach the internet (through Cloud NAT: the VMs have no external IP)',
    direction: 'EGRESS', priority: GCE_PRIORITY.allowEgress, destination_ranges: ['0.0.0.0/0'], target_tags: tags, allow: [{ protocol: 'all' }],
  });
  out.output('gcp_subnetwork', '${google_compute_subnetwork.gcp_runners.self_link}', 'providers.gcp.subnetwork');
}

function ec2Network(out: Tf, input: TerraformInput, provider: string, classes: string[], key: RegistryKey, errors: string[]): void {
  const { config } = input;
  const region = (provider === 'mac' ? parseMacConfig : parseAwsConfig)(config.providers[provider] ?? {}).region;
  // The manager reaches aws VMs and mac hosts (the jump to their nested VMs) on SSH.
  for (const c of classes) (provider === 'mac' ? parseMacMachine : parseAwsMachine)(c, config.classes[c]!.machine);
  const from = input.key ? '--environment/--network' : `AWS/<providers.${provider}.region>, <shard>/${provider}`;
  const cidr = lookUp(input.rows, key, from, errors);
  if (!cidr) return;

  out.require('aws', { source: 'hashicorp/aws', version: '>= 5.0' });
  const via = out.awsRegion(region);
  const tags = { Name: `rf-${config.shard}-${provider}`, 'runner-fleet-shard': config.shard };
  const sg = `${provider}_jobs`;
  const sgId = `\${aws_security_group.${sg}.id}`;
  out.variable(`${provider}_vpc_id`, `VPC of the shard's ${provider} runner subnet (${region})`);
  out.resource('aws_subnet', `${provider}_runners`, { ...via, vpc_id: `\${var.${provider}_vpc_id}`, cidr_block: cidr, map_public_ip_on_launch: false, tags: { ...tags, 'runner-fleet-registry': `${key.environment} ${key.network}` } });
  // Security groups allow only what a rule lets in, and no rule references the group itself: job VMs cannot reach each other.
  out.resource('aws_security_group', sg, { ...via, name: `rf-${config.shard}-${provider}-jobs`, description: `runner-fleet ${config.shard}: SSH from the manager only`, vpc_id: `\${var.${provider}_vpc_id}`, tags });
  config.isolation.managerRanges.forEach((range, i) => {
    for (const port of accessPorts(false)) {
      out.resource('aws_vpc_security_group_ingress_rule', `${sg}_manager_${i + 1}_${port}`, {
        ...via, security_group_id: sgId, description: 'runner-fleet manager', cidr_ipv4: formatCidr(parseCidr(range)), ip_protocol: 'tcp', from_port: port, to_port: port,
      });
    }
  });
  // Terraform removes the default allow-all egress rule of groups it creates: state it again.
  out.resource('aws_vpc_security_group_egress_rule', `${sg}_egress`, { ...via, security_group_id: sgId, description: 'jobs reach the internet', cidr_ipv4: '0.0.0.0/0', ip_protocol: '-1' });
  out.output(`${provider}_subnet_id`, `\${aws_subnet.${provider}_runners.id}`, `classes.*.machine.subnets of the ${provider} classes`);
  out.output(`${provider}_security_group_id`, sgId, `classes.*.machine.securityGroupIds of the ${provider} classes (in place of any other group)`);
}

/** TCP ports the manager connects to: SSH; WinRM too for Windows password access. */
function accessPorts(winrm: boolean): number[] {
  return winrm ? [22, 5985, 5986] : [22];
}

/** The Terraform JSON document being built. */
class Tf {
  private readonly resources: Record<string, Record<string, Json>> = {};
  private readonly variables: Record<string, Json> = {};
  private readonly outputs: Record<string, Json> = {};
  private readonly providers: Record<string, Json> = {};
  private readonly awsRegions: string[] = [];

  constructor(private readonly shard: string) {}

  require(name: string, spec: Json): void {
    this.providers[name] = spec;
  }

  resource(type: string, name: string, body: Json): void {
    (this.resources[type] ??= {})[name] = body;
  }

  variable(name: string, description: string): void {
    this.variables[name] = { type: 'string', description };
  }

  output(name: string, value: string, useFor: string): void {
    this.outputs[name] = { value, description: `set ${useFor} to this` };
  }

  /** The first region is the default aws provider; another (mac elsewhere than aws) gets an alias. */
  awsRegion(region: string): Json {
    if (!this.awsRegions.includes(region)) this.awsRegions.push(region);
    return this.awsRegions[0] === region ? {} : { provider: `aws.${alias(region)}` };
  }

  json(): Json {
    const doc: Json = {
      '//': `runner-fleet network terraform: the runner network of shard ${this.shard}. Generated: edit the shard config or the CIDR registry, not this file.`,
      terraform: { required_providers: this.providers },
    };
    if (this.awsRegions.length) doc['provider'] = { aws: this.awsRegions.map((r, i) => (i === 0 ? { region: r } : { alias: alias(r), region: r })) };
    if (Object.keys(this.variables).length) doc['variable'] = this.variables;
    doc['resource'] = this.resources;
    doc['output'] = this.outputs;
    return doc;
  }
}

const alias = (region: string) => region.replace(/-/g, '_');

function lastSegment(s: string): string {
  return s.split('/').filter(Boolean).pop() ?? s;
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}

/** Groups items by a key (compared as JSON), collecting values of each group. */
function groupBy<T, K, V>(items: T[], key: (t: T) => K, values: (t: T) => V[]): [K, V[]][] {
  const groups = new Map<string, [K, V[]]>();
  for (const t of items) {
    const k = key(t);
    const g = groups.get(JSON.stringify(k)) ?? [k, []];
    g[1].push(...values(t));
    groups.set(JSON.stringify(k), g);
  }
  return [...groups.values()];
}
