// The runner network's Terraform, checked by what the manager checks: the generated firewall
// rules and security groups go through the isolation audit (pure, then the providers' real audit
// against the GCE and EC2 emulators, created through the real cloud clients) and must be clean;
// one rule opened up, and the audit must name it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthorizeSecurityGroupIngressCommand, CreateSecurityGroupCommand, EC2Client } from '@aws-sdk/client-ec2';
import { FirewallsClient } from '@google-cloud/compute/build/src/v1/firewalls_client.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { startGceEmulator, type GceEmulator } from '../../emulators/gce/server.js';
import { parseConfig } from '../../src/config/load.js';
import type { ShardConfig } from '../../src/config/types.js';
import { parseCidr } from '../../src/isolation/cidr.js';
import { auditClasses, fromEc2SecurityGroup, fromGceFirewall, type IngressRule } from '../../src/isolation/firewall-audit.js';
import { parseRegistry } from '../../src/isolation/network-plan.js';
import { createLogger } from '../../src/isolation/redact.js';
import { TerraformError, terraformFor } from '../../src/isolation/terraform.js';
import { auditIsolation } from '../../src/manager/isolation-audit.js';
import { createMetrics } from '../../src/manager/metrics.js';
import { parseAwsConfig } from '../../src/providers/aws/config.js';
import { AwsProvider } from '../../src/providers/aws/provider.js';
import { parseGcpConfig } from '../../src/providers/gcp/config.js';
import { GcpProvider, clientOptions } from '../../src/providers/gcp/provider.js';
import { ec2Groups, gceFirewalls, resources, type GceFirewallBody } from '../helpers/terraform.js';

const IMAGE = 'projects/debian-cloud/global/images/family/debian-12';
const MANAGER = '10.0.0.5/32';

const gcpYaml = (extra = '') => `
shard: tf-gcp
database: { url: "pglite:memory" }
gitlab: { url: "http://127.0.0.1:9000" }
isolation: { managerRanges: ["${MANAGER}"] }
providers:
  gcp: { project: tf-proj, network: runners, subnetwork: runners-us-central1${extra} }
classes:
  linux:
    runnerToken: t1
    provider: gcp
    pool: { idle: 0, max: 2 }
    machine: { machineType: n2d-standard-2, image: ${IMAGE}, zones: [us-central1-a, us-central1-b], networkTags: [runner-vm] }
  windows:
    runnerToken: t2
    provider: gcp
    pool: { idle: 0, max: 2 }
    machine: { machineType: n2d-standard-2, image: projects/windows-cloud/global/images/family/windows-2022-core, os: windows, windowsAccess: ssh, zones: [us-central1-c], networkTags: [runner-vm-windows] }
`;

const awsYaml = (extra = '') => `
shard: tf-aws
database: { url: "pglite:memory" }
gitlab: { url: "http://127.0.0.1:9000" }
isolation: { managerRanges: ["${MANAGER}", "10.0.1.0/28"] }
providers:
  aws: { region: us-east-1${extra} }
  mac: { region: us-east-1 }
classes:
  linux:
    runnerToken: t1
    provider: aws
    pool: { idle: 0, max: 2 }
    machine: { instanceType: c6i.large, imageId: ami-0123456789abcdef0, subnets: [subnet-0aaa1111], securityGroupIds: [sg-0ccc3333] }
  macos:
    runnerToken: t2
    provider: mac
    pool: { idle: 0, max: 2 }
    machine:
      instanceType: mac2.metal
      hostImageId: ami-0a1b2c3d4e5f60718
      subnets: [{ id: subnet-0aaa1111bbb22222c, zone: us-east-1a }]
      securityGroupIds: [sg-0123456789abcdef0]
      vm: { image: "ghcr.io/cirruslabs/macos-sequoia-xcode:latest" }
`;

const REGISTRY = parseRegistry(`environment,network,cidr
GCP/other,runners/elsewhere,10.12.0.0/21
GCP/tf-proj,runners/runners-us-central1,10.12.8.0/21
AWS/us-east-1,tf-aws/aws,10.20.0.0/21
AWS/us-east-1,tf-aws/mac,10.20.8.0/21
`);

const managers = (c: ShardConfig) => c.isolation.managerRanges.map(parseCidr);

/** What a GCP project's `default` network comes with: the openings the generated denies must shadow. */
const DEFAULT_RULES: GceFirewallBody[] = [
  { name: 'default-allow-internal', network: 'global/networks/runners', priority: 65534, direction: 'INGRESS', sourceRanges: ['10.128.0.0/9'], allowed: [{ IPProtocol: 'tcp', ports: ['0-65535'] }, { IPProtocol: 'udp', ports: ['0-65535'] }, { IPProtocol: 'icmp' }] },
  { name: 'default-allow-ssh', network: 'global/networks/runners', priority: 65534, direction: 'INGRESS', sourceRanges: ['0.0.0.0/0'], allowed: [{ IPProtocol: 'tcp', ports: ['22'] }] },
];

/** The pure audit of every gcp class (its own network tags) against a set of firewall bodies. */
function auditGce(config: ShardConfig, bodies: GceFirewallBody[], ports = [22]) {
  const rules = bodies.map(fromGceFirewall).filter((r): r is IngressRule => r !== null);
  const classes = Object.values(config.classes).map((c) => ({ className: c.name, rules, vmTags: c.machine['networkTags'] as string[] }));
  return auditClasses(classes, managers(config), ports);
}

function auditEc2(config: ShardConfig, doc: Record<string, unknown>, mutate?: (g: ReturnType<typeof ec2Groups>) => void) {
  const groups = ec2Groups(doc, (k) => k);
  mutate?.(groups);
  const rulesOf = new Map(groups.map((g) => [g.key, fromEc2SecurityGroup({ GroupId: g.key, GroupName: g.name, IpPermissions: g.permissions })]));
  // Each class's VMs are in its provider's generated group, and in no other.
  const classes = Object.values(config.classes).map((c) => ({ className: c.name, rules: rulesOf.get(`${c.provider}_jobs`) ?? [], vmTags: [`${c.provider}_jobs`] }));
  return auditClasses(classes, managers(config), [22]);
}

describe('network terraform: gcp', () => {
  const config = parseConfig(gcpYaml());
  const doc = terraformFor({ config, rows: REGISTRY });

  it('writes the subnet with the registry CIDR of the shard network, in the classes\' region', () => {
    expect(resources(doc, 'google_compute_subnetwork')).toEqual([[
      'gcp_runners',
      expect.objectContaining({ project: 'tf-proj', network: 'runners', name: 'runners-us-central1', region: 'us-central1', ip_cidr_range: '10.12.8.0/21' }),
    ]]);
    expect(Object.keys(doc['terraform'] as object)).toEqual(['required_providers']);
    expect(doc['output']).toEqual({ gcp_subnetwork: expect.objectContaining({ value: '${google_compute_subnetwork.gcp_runners.self_link}' }) });
  });

  it('the rules pass the audit for every class, and shadow the network\'s own wider allows', () => {
    const rules = gceFirewalls(doc);
    expect(rules.map((r) => [r.name, r.direction, r.priority])).toEqual([
      ['rf-tf-gcp-allow-manager', 'INGRESS', 100],
      ['rf-tf-gcp-deny-vm-to-vm', 'INGRESS', 110],
      ['rf-tf-gcp-deny-ingress', 'INGRESS', 110],
      ['rf-tf-gcp-allow-egress', 'EGRESS', 1000],
    ]);
    expect(rules[0]).toMatchObject({ sourceRanges: [MANAGER], targetTags: ['runner-vm', 'runner-vm-windows'], allowed: [{ IPProtocol: 'tcp', ports: ['22'] }] });
    // The default rules alone are openings; with the generated ones in front they are not.
    expect(auditGce(config, DEFAULT_RULES).map((f) => f.rule)).toEqual(expect.arrayContaining(['default-allow-internal', 'default-allow-ssh']));
    expect(auditGce(config, rules)).toEqual([]);
    expect(auditGce(config, [...rules, ...DEFAULT_RULES])).toEqual([]);
  });

  it('the audit names a rule opened to the world, one letting job VMs in, and a missing deny', () => {
    const rules = () => gceFirewalls(doc);
    const world = rules().map((r) => (r.name.endsWith('allow-manager') ? { ...r, sourceRanges: ['0.0.0.0/0'] } : r));
    expect(auditGce(config, world).map((f) => [f.kind, f.rule, f.classes])).toEqual([['others-can-reach', 'rf-tf-gcp-allow-manager', ['linux', 'windows']]]);
    const mesh = rules().map((r) => (r.name.endsWith('allow-manager') ? { ...r, sourceTags: ['runner-vm'] } : r));
    expect(auditGce(config, mesh).map((f) => [f.kind, f.rule, f.classes])).toEqual([
      ['vm-to-vm', 'rf-tf-gcp-allow-manager', ['linux']],
      ['others-can-reach', 'rf-tf-gcp-allow-manager', ['windows']],
    ]);
    const noDeny = rules().filter((r) => !r.name.endsWith('deny-ingress'));
    expect(auditGce(config, [...noDeny, ...DEFAULT_RULES]).map((f) => f.rule)).toEqual(['default-allow-internal', 'default-allow-ssh']);
  });

  it('a Shared VPC network named by path: the subnet and rules go to its host project', () => {
    const shared = parseConfig(gcpYaml().replace('network: runners,', 'network: projects/host-proj/global/networks/runners,'));
    const d = terraformFor({ config: shared, rows: REGISTRY });
    expect([...resources(d, 'google_compute_subnetwork'), ...resources(d, 'google_compute_firewall')].map(([, r]) => [r['project'], r['network']])).toEqual(Array(5).fill(['host-proj', 'runners']));
  });

  it('a Windows class reached over WinRM gets 5985-5986 from the manager too, aimed at its tags only', () => {
    const winrm = parseConfig(gcpYaml());
    winrm.classes['windows']!.machine['windowsAccess'] = 'password';
    const rules = gceFirewalls(terraformFor({ config: winrm, rows: REGISTRY }));
    expect(rules.filter((r) => r.name.includes('allow-manager')).map((r) => [r.name, r.targetTags, r.allowed])).toEqual([
      ['rf-tf-gcp-allow-manager', ['runner-vm'], [{ IPProtocol: 'tcp', ports: ['22'] }]],
      ['rf-tf-gcp-allow-manager-winrm', ['runner-vm-windows'], [{ IPProtocol: 'tcp', ports: ['22', '5985', '5986'] }]],
    ]);
    expect(auditGce(winrm, rules, [22, 5985, 5986]).map((f) => [f.kind, f.classes, f.message])).toEqual([
      ['manager-cannot-reach', ['linux'], expect.stringContaining('tcp:5985')],
      ['manager-cannot-reach', ['linux'], expect.stringContaining('tcp:5986')],
    ]);
  });
});

describe('network terraform: aws and mac', () => {
  const config = parseConfig(awsYaml());
  const doc = terraformFor({ config, rows: REGISTRY });

  it('writes one subnet and one security group per provider, each with its registry CIDR', () => {
    expect(resources(doc, 'aws_subnet').map(([k, s]) => [k, s['cidr_block'], s['vpc_id']])).toEqual([
      ['aws_runners', '10.20.0.0/21', '${var.aws_vpc_id}'],
      ['mac_runners', '10.20.8.0/21', '${var.mac_vpc_id}'],
    ]);
    expect(resources(doc, 'aws_security_group').map(([k, g]) => [k, g['name']])).toEqual([['aws_jobs', 'rf-tf-aws-aws-jobs'], ['mac_jobs', 'rf-tf-aws-mac-jobs']]);
    expect(resources(doc, 'aws_vpc_security_group_egress_rule').map(([, r]) => [r['security_group_id'], r['cidr_ipv4'], r['ip_protocol']])).toEqual([
      ['${aws_security_group.aws_jobs.id}', '0.0.0.0/0', '-1'],
      ['${aws_security_group.mac_jobs.id}', '0.0.0.0/0', '-1'],
    ]);
    expect(doc['provider']).toEqual({ aws: [{ region: 'us-east-1' }] });
    expect(Object.keys(doc['variable'] as object)).toEqual(['aws_vpc_id', 'mac_vpc_id']);
  });

  it('the groups pass the audit; one opened to the world or to its own members does not', () => {
    expect(ec2Groups(doc, (k) => k).map((g) => g.permissions.map((p) => [p.IpProtocol, p.FromPort, p.ToPort, p.IpRanges]))).toEqual([
      [['tcp', 22, 22, [{ CidrIp: MANAGER }]], ['tcp', 22, 22, [{ CidrIp: '10.0.1.0/28' }]]],
      [['tcp', 22, 22, [{ CidrIp: MANAGER }]], ['tcp', 22, 22, [{ CidrIp: '10.0.1.0/28' }]]],
    ]);
    expect(auditEc2(config, doc)).toEqual([]);
    const world = auditEc2(config, doc, (gs) => (gs[0]!.permissions[0]!.IpRanges = [{ CidrIp: '0.0.0.0/0' }]));
    expect(world.map((f) => [f.kind, f.classes])).toEqual([['others-can-reach', ['linux']]]);
    const mesh = auditEc2(config, doc, (gs) => gs[1]!.permissions.push({ IpProtocol: '-1', IpRanges: [], UserIdGroupPairs: [{ GroupId: 'mac_jobs' }] }));
    expect(mesh.map((f) => [f.kind, f.classes])).toEqual([['vm-to-vm', ['macos']]]);
  });

  it('a mac provider in another region gets an aliased aws provider', () => {
    const c = parseConfig(awsYaml().replace('mac: { region: us-east-1 }', 'mac: { region: eu-west-1 }'));
    const rows = parseRegistry(`environment,network,cidr\nAWS/us-east-1,tf-aws/aws,10.20.0.0/21\nAWS/eu-west-1,tf-aws/mac,10.21.0.0/21\n`);
    const d = terraformFor({ config: c, rows });
    expect(d['provider']).toEqual({ aws: [{ region: 'us-east-1' }, { alias: 'eu_west_1', region: 'eu-west-1' }] });
    expect(resources(d, 'aws_subnet').map(([, s]) => s['provider'])).toEqual([undefined, 'aws.eu_west_1']);
  });
});

describe('network terraform: errors name the field', () => {
  const errorsOf = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      if (err instanceof TerraformError) return err.errors;
      throw err;
    }
    throw new Error('no error');
  };

  it('no registry entry for the shard network', () => {
    expect(errorsOf(() => terraformFor({ config: parseConfig(gcpYaml()), rows: REGISTRY.filter((r) => r.environment !== 'GCP/tf-proj') }))).toEqual([
      'registry: no entry for environment "GCP/tf-proj" network "runners/runners-us-central1" (GCP/<providers.gcp.project>, <providers.gcp.network>/<providers.gcp.subnetwork>); '
      + 'allocate one with: runner-fleet network allocate --registry FILE --environment GCP/tf-proj --network runners/runners-us-central1 --write',
    ]);
    // A row named explicitly is looked up instead.
    const d = terraformFor({ config: parseConfig(gcpYaml()), rows: REGISTRY, key: { environment: 'GCP/other', network: 'runners/elsewhere' } });
    expect(resources(d, 'google_compute_subnetwork')[0]![1]['ip_cidr_range']).toBe('10.12.0.0/21');
    expect(errorsOf(() => terraformFor({ config: parseConfig(awsYaml()), rows: REGISTRY, key: { environment: 'GCP/other', network: 'runners/elsewhere' } }))[0]).toMatch(/^--environment\/--network name one registry row, but the shard's classes use aws, mac/);
  });

  it('classes with no network settings, and no manager ranges', () => {
    const c = parseConfig(gcpYaml().replace(', networkTags: [runner-vm-windows]', '').replace(', subnetwork: runners-us-central1', '').replace('managerRanges: ["10.0.0.5/32"]', 'managerRanges: []'));
    expect(errorsOf(() => terraformFor({ config: c, rows: REGISTRY }))).toEqual(['isolation.managerRanges: expected the CIDRs the manager connects from (the only sources let into job VMs), got none']);
    c.isolation.managerRanges = [MANAGER];
    expect(errorsOf(() => terraformFor({ config: c, rows: REGISTRY }))).toEqual([
      'providers.gcp.subnetwork: expected the runner subnet\'s name (the subnet this command writes), got nothing',
      'classes.windows.machine.networkTags: expected the tags the runner firewall rules aim at, got none',
    ]);
    const spread = parseConfig(gcpYaml().replace('zones: [us-central1-c]', 'zones: [europe-west4-a]'));
    expect(errorsOf(() => terraformFor({ config: spread, rows: REGISTRY }))).toEqual(['classes.linux.machine.zones: a subnet lives in one region, but the gcp classes\' zones span europe-west4, us-central1']);
  });

  it('local has no cloud network; an unknown provider is named', () => {
    const local = parseConfig(`
shard: tf-local
database: { url: "pglite:memory" }
gitlab: { url: "http://127.0.0.1:9000" }
isolation: { managerRanges: ["${MANAGER}"] }
providers: { local: {} }
classes:
  small: { runnerToken: t, provider: local, pool: { idle: 0, max: 1 } }
`);
    expect(errorsOf(() => terraformFor({ config: local, rows: REGISTRY }))).toEqual(['classes.small.provider: local has no cloud network (its VMs are SSH sandboxes on the manager\'s host): nothing to write']);
    local.classes['small']!.provider = 'vsphere';
    expect(errorsOf(() => terraformFor({ config: local, rows: REGISTRY }))).toEqual(['classes.small.provider: "vsphere" has no network terraform (supported: gcp, aws, mac)']);
  });
});

describe('network terraform through the emulators and the manager\'s audit', () => {
  let dir: string;
  let gce: GceEmulator;
  let ec2: Ec2Emulator;
  const log = createLogger({ level: 'silent' });
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rf-tf-'));
    [gce, ec2] = await Promise.all([startGceEmulator({ dataDir: join(dir, 'gce') }), startEc2Emulator({ dataDir: join(dir, 'ec2'), bootDelayMs: 0 })]);
  });
  afterAll(async () => {
    await Promise.allSettled([gce?.close(), ec2?.close()]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('gcp: the firewalls created with FirewallsClient leave the audit clean, on a network with the default rules', async () => {
    const config = parseConfig(gcpYaml(`, endpoint: "${gce.url}", callTimeout: 5s, retryBase: 20ms`));
    const gcpCfg = parseGcpConfig(config.providers['gcp']);
    gce.setFirewalls('tf-proj', DEFAULT_RULES as unknown as Record<string, unknown>[]);
    const firewalls = new FirewallsClient(clientOptions(gcpCfg));
    const provider = new GcpProvider(gcpCfg, { shard: config.shard, dataDir: dir, log, classes: Object.fromEntries(Object.values(config.classes).map((c) => [c.name, c.machine])) });
    const audit = () => auditIsolation({ config, providers: new Map([['gcp', provider]]), metrics: createMetrics({ shard: config.shard, defaultMetrics: false }), log });
    try {
      expect((await audit()).findings.get('gcp')!.map((f) => f.rule)).toEqual(['default-allow-internal', 'default-allow-ssh']);
      for (const body of gceFirewalls(terraformFor({ config, rows: REGISTRY }))) {
        const [op] = await firewalls.insert({ project: 'tf-proj', firewallResource: body });
        expect(op.latestResponse).toMatchObject({ status: 'DONE' });
      }
      expect(gce.calls.firewallsInsert).toBe(4);
      expect(await audit()).toEqual({ findings: new Map([['gcp', []]]), failed: [] });
      // The same rule twice is refused, as GCE does.
      await expect(firewalls.insert({ project: 'tf-proj', firewallResource: gceFirewalls(terraformFor({ config, rows: REGISTRY }))[0]! })).rejects.toThrow(/already exists/);
      // Bodies GCE refuses are refused here too, naming the field.
      await expect(firewalls.insert({ project: 'tf-proj', firewallResource: { name: 'Bad_Name', allowed: [{ IPProtocol: 'tcp' }] } })).rejects.toThrow(/resource\.name/);
      await expect(firewalls.insert({ project: 'tf-proj', firewallResource: { name: 'both', allowed: [{ IPProtocol: 'tcp' }], denied: [{ IPProtocol: 'udp' }] } })).rejects.toThrow(/exactly one of 'allowed' or 'denied'/);
      // An allow between job VMs outranking the generated denies is found.
      await firewalls.insert({ project: 'tf-proj', firewallResource: { name: 'mesh', network: 'global/networks/runners', priority: 50, sourceTags: ['runner-vm'], targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'all' }] } });
      expect((await audit()).findings.get('gcp')!.map((f) => [f.kind, f.rule, f.classes])).toEqual([['vm-to-vm', 'mesh', ['linux']]]);
    } finally {
      await Promise.allSettled([firewalls.close(), provider.close()]);
    }
  });

  it('aws: the security groups created with EC2Client leave the audit clean; a self-reference is found', async () => {
    const config = parseConfig(awsYaml(`, endpoint: "${ec2.url}", callTimeout: 5s, retryBase: 20ms`));
    const doc = terraformFor({ config, rows: REGISTRY });
    const client = new EC2Client({ region: 'us-east-1', endpoint: ec2.url, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
    try {
      const ids = new Map<string, string>();
      for (const g of ec2Groups(doc, (k) => k)) {
        const made = await client.send(new CreateSecurityGroupCommand({ GroupName: g.name, Description: g.description, VpcId: 'vpc-0aaa1111' }));
        ids.set(g.key, made.GroupId!);
      }
      for (const g of ec2Groups(doc, (k) => ids.get(k)!)) await client.send(new AuthorizeSecurityGroupIngressCommand({ GroupId: ids.get(g.key)!, IpPermissions: g.permissions }));
      // The classes point at the generated groups (the outputs), in place of their old ones.
      const awsCfg = parseAwsConfig(config.providers['aws']);
      const machine = { ...config.classes['linux']!.machine, securityGroupIds: [ids.get('aws_jobs')!] };
      const provider = new AwsProvider(awsCfg, { shard: config.shard, dataDir: dir, log, classes: { linux: machine } });
      const audit = () => auditIsolation({ config, providers: new Map([['aws', provider]]), metrics: createMetrics({ shard: config.shard, defaultMetrics: false }), log });
      try {
        expect(await audit()).toEqual({ findings: new Map([['aws', []]]), failed: [] });
        await client.send(new AuthorizeSecurityGroupIngressCommand({ GroupId: ids.get('aws_jobs')!, IpPermissions: [{ IpProtocol: '-1', UserIdGroupPairs: [{ GroupId: ids.get('aws_jobs')! }] }] }));
        expect((await audit()).findings.get('aws')!.map((f) => [f.kind, f.classes])).toEqual([['vm-to-vm', ['linux']]]);
      } finally {
        await provider.close();
      }
      await expect(client.send(new CreateSecurityGroupCommand({ GroupName: 'rf-tf-aws-aws-jobs', Description: 'again', VpcId: 'vpc-0aaa1111' }))).rejects.toThrow(/already exists/);
    } finally {
      client.destroy();
    }
  });
});
