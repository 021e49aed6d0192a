// `runner-fleet network terraform` as an operator runs it: a real process, its output, exit codes
// and messages.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseCidr } from '../../src/isolation/cidr.js';
import { auditIngress, fromGceFirewall, type IngressRule } from '../../src/isolation/firewall-audit.js';
import { gceFirewalls, resources } from '../helpers/terraform.js';

const dir = mkdtempSync(join(tmpdir(), 'rf-cli-tf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', 'network', 'terraform', ...args], { encoding: 'utf8', env: { ...process.env, TF_TOKEN: 'x' }, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

const shard = (provider: string) => `
shard: cli-tf
database: { url: "pglite:memory" }
gitlab: { url: "http://127.0.0.1:9000" }
isolation: { managerRanges: ["10.0.0.5/32"] }
providers:
  gcp: { project: cli-proj, network: runners, subnetwork: runners-europe-west4 }
  local: {}
classes:
  small:
    runnerToken: "\${TF_TOKEN}"
    provider: ${provider}
    pool: { idle: 0, max: 2 }
${provider === 'gcp' ? '    machine: { machineType: n2d-standard-2, image: projects/debian-cloud/global/images/family/debian-12, zones: [europe-west4-a], networkTags: [runner-vm] }\n' : ''}`;

const registry = file('cidrs.csv', 'environment,network,cidr\nGCP/cli-proj,runners/runners-europe-west4,10.30.0.0/21\nGCP/cli-proj,runners/spare,10.30.8.0/21\n');
const gcpShard = file('gcp.yaml', shard('gcp'));

describe('runner-fleet network terraform', () => {
  it('prints Terraform JSON whose rules pass the isolation audit, or writes it to --out', () => {
    const r = cli(['--config', gcpShard, '--registry', registry]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(resources(doc, 'google_compute_subnetwork')[0]![1]).toMatchObject({ name: 'runners-europe-west4', region: 'europe-west4', ip_cidr_range: '10.30.0.0/21' });
    const rules = gceFirewalls(doc).map(fromGceFirewall).filter((x): x is IngressRule => x !== null);
    expect(auditIngress({ rules, vmTags: ['runner-vm'], managerRanges: [parseCidr('10.0.0.5/32')], accessPorts: [22] })).toEqual([]);

    const out = join(dir, 'runners.tf.json');
    const w = cli(['--config', gcpShard, '--registry', registry, '--environment', 'GCP/cli-proj', '--network', 'runners/spare', '--out', out]);
    expect([w.code, w.stdout, w.stderr]).toEqual([0, '', `wrote ${out}\n`]);
    expect(resources(JSON.parse(readFileSync(out, 'utf8')), 'google_compute_subnetwork')[0]![1]['ip_cidr_range']).toBe('10.30.8.0/21');
  });

  it('names the missing registry entry, and a provider with no cloud network; exit 1', () => {
    const missing = cli(['--config', gcpShard, '--registry', file('empty.csv', 'environment,network,cidr\n')]);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe('');
    expect(missing.stderr).toContain(`${gcpShard}: no runner network to write\n`);
    expect(missing.stderr).toContain(`${join(dir, 'empty.csv')}: no entry for environment "GCP/cli-proj" network "runners/runners-europe-west4"`);
    expect(missing.stderr).toContain(`runner-fleet network allocate --registry ${join(dir, 'empty.csv')} --environment GCP/cli-proj --network runners/runners-europe-west4 --write`);

    const local = cli(['--config', file('local.yaml', shard('local')), '--registry', registry]);
    expect(local.code).toBe(1);
    expect(local.stderr).toContain('classes.small.provider: local has no cloud network');
  });

  it('a command line it cannot run is a usage error (exit 2) naming the flag', () => {
    const noConfig = cli(['--registry', registry]);
    expect(noConfig.code).toBe(2);
    expect(noConfig.stderr).toMatch(/^--config FILE is required\n\nrunner-fleet: .*\n[\s\S]*runner-fleet network terraform --config SHARD.yaml --registry CIDRS.csv/);
    expect(cli(['--config', gcpShard, '--registry', registry, '--within', '10.0.0.0/8']).stderr).toMatch(/^--within: not an option of network terraform\n/);
    expect(cli(['--config', gcpShard, '--registry', registry, '--environment', 'GCP/cli-proj']).stderr).toMatch(/^--environment and --network name a registry row together: give both or neither\n/);
  });
});
