// Provider configs take ${VAR} numbers the way the shard schema does: the loader expands every
// string before validation, so a number from the environment arrives as "3" and must count as 3.
import { describe, expect, it } from 'vitest';
import { checkConfig } from '../../src/config/load.js';
import { parseAwsConfig, parseAwsMachine } from '../../src/providers/aws/config.js';
import { parseGcpConfig, parseGcpMachine } from '../../src/providers/gcp/config.js';
import { parseLocalConfig } from '../../src/providers/local/config.js';
import { parseMacConfig, parseMacMachine } from '../../src/providers/mac/config.js';

const env = { RETRIES: '7', RATE: '2.5', DISK: '80', BULK: '3', DELAY: '250', CPU: '4', PORT: '2222', HOSTS_MAX: '3', BAD: 'lots' };

/** A shard file with one class on `provider`, its provider section and machine as given (YAML flow). */
function shard(provider: string, providerYaml: string, machineYaml: string): string {
  return [
    'shard: s1',
    'gitlab: { url: "http://127.0.0.1:9" }',
    'classes:',
    `  c: { runnerToken: t, provider: ${provider}, pool: { idle: 0, max: "\${RETRIES}" }, machine: ${machineYaml} }`,
    `providers: { ${provider}: ${providerYaml} }`,
  ].join('\n');
}

function load(yaml: string, vars: Record<string, string> = env) {
  const res = checkConfig(yaml, { env: vars, baseDir: '/tmp' });
  if (!res.ok) throw new Error(res.errors.join('\n'));
  return res.config;
}

const errors = (yaml: string) => {
  const res = checkConfig(yaml, { env, baseDir: '/tmp' });
  return res.ok ? [] : res.errors;
};

describe('provider configs with ${VAR} numbers', () => {
  it('gcp: retries, rate, bulkInsertMin and diskSizeGb from the environment', () => {
    const cfg = load(shard('gcp', '{ project: my-proj-1, retries: "${RETRIES}", requestsPerSecond: "${RATE}", bulkInsertMin: "${BULK}" }', '{ machineType: e2-standard-2, image: projects/debian-cloud/global/images/family/debian-12, zones: [us-central1-a], diskSizeGb: "${DISK}" }'));
    expect(parseGcpConfig(cfg.providers['gcp'])).toMatchObject({ retries: 7, requestsPerSecond: 2.5, bulkInsertMin: 3 });
    expect(parseGcpMachine('c', cfg.classes['c']!.machine).diskSizeGb).toBe(80);
    expect(errors(shard('gcp', '{ project: my-proj-1, retries: "${BAD}" }', '{ machineType: e2-standard-2, image: projects/debian-cloud/global/images/family/debian-12, zones: [us-central1-a, "x"] }'))).toEqual([
      'classes.c.machine.zones[1]: expected a zone like us-central1-a, got "x"',
      'providers.gcp.retries: expected an integer 0..10, got "lots"',
    ]);
  });

  it('aws: retries and diskSizeGb from the environment', () => {
    const cfg = load(shard('aws', '{ region: us-east-1, retries: "${RETRIES}", callTimeout: "${DELAY}" }', '{ instanceType: c6i.large, imageId: ami-0123456789abcdef0, subnets: [subnet-0aaa1111], securityGroupIds: [sg-0ccc3333], diskSizeGb: "${DISK}" }'));
    expect(parseAwsConfig(cfg.providers['aws'])).toMatchObject({ retries: 7, callTimeoutMs: 250 });
    expect(parseAwsMachine('c', cfg.classes['c']!.machine).diskSizeGb).toBe(80);
    expect(errors(shard('aws', '{ region: us-east-1, retries: "${BAD}" }', '{ instanceType: c6i.large, imageId: ami-0123456789abcdef0, subnets: [subnet-0aaa1111], securityGroupIds: [sg-0ccc3333] }'))).toEqual([
      'providers.aws.retries: expected an integer 0..10, got "lots"',
    ]);
  });

  it('mac: retries, hosts and the nested VM from the environment', () => {
    const machine = '{ instanceType: mac2.metal, hostImageId: ami-0123456789abcdef0, subnets: [{ id: subnet-0aaa1111, zone: us-east-1a }], securityGroupIds: [sg-0ccc3333], hosts: { max: "${HOSTS_MAX}" }, vm: { image: sequoia, cpu: "${CPU}", sshPort: "${PORT}" } }';
    const cfg = load(shard('mac', '{ region: us-east-1, retries: "${RETRIES}" }', machine));
    expect(parseMacConfig(cfg.providers['mac'])).toMatchObject({ retries: 7, hostLaunchTimeoutMs: 30 * 60_000 });
    expect(parseMacMachine('c', cfg.classes['c']!.machine)).toMatchObject({ hosts: { min: 0, max: 3 }, vm: { cpu: 4, sshPort: 2222 } });
    expect(errors(shard('mac', '{ region: us-east-1, retries: "${BAD}" }', machine))).toEqual(['providers.mac.retries: expected an integer 0..10, got "lots"']);
  });

  it('local: bootDelayMs from the environment', () => {
    const cfg = load(shard('local', '{ bootDelayMs: "${DELAY}" }', '{}'));
    expect(parseLocalConfig(cfg.providers['local'])).toEqual({ bootDelayMs: 250 });
    expect(errors(shard('local', '{ bootDelayMs: "${BAD}" }', '{}'))).toEqual(['providers.local.bootDelayMs: expected a non-negative number of milliseconds, got "lots"']);
  });
});
