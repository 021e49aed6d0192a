// Fuzz of the cloud answers the providers parse: the GCE and EC2 emulators answer the real SDKs
// with mangled bodies (cut-off JSON/XML, wrong types, missing fields, huge values, odd statuses).
// Provider calls settle in bounded time, and the reconciler's sweep reads an answer it cannot
// trust as "unknown", never as "gone": no VM row failed, no VM deleted.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ShardConfig } from '../../src/config/types.js';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { startGceEmulator, type GceCall, type GceEmulator } from '../../emulators/gce/server.js';
import type { GitLabClient } from '../../src/gitlab/client.js';
import { createLogger } from '../../src/isolation/redact.js';
import { cloudTelemetry, createMetrics, type Metrics } from '../../src/manager/metrics.js';
import { Reconciler } from '../../src/manager/reconciler.js';
import { Store } from '../../src/manager/store.js';
import { parseAwsConfig } from '../../src/providers/aws/config.js';
import { AwsProvider } from '../../src/providers/aws/provider.js';
import { parseGcpConfig } from '../../src/providers/gcp/config.js';
import { GcpProvider } from '../../src/providers/gcp/provider.js';
import { absentFrom, LABEL_SHARD, type CloudListing, type Provider, type VmSpec } from '../../src/providers/provider.js';
import { migratedDatabase } from '../helpers/database.js';
import { makeSpec } from '../providers/local-fixture.js';
import { Gen } from './gen.js';

export const GCE_CASES = 90;
export const EC2_CASES = 90;
const log = createLogger({ level: 'silent' });
const SHARD = 'cfz';
const gceMachine = (zone: string) => ({ machineType: 'e2-standard-2', image: 'projects/debian-cloud/global/images/family/debian-12', zones: [zone] });
const ec2Machine = { instanceType: 'c6i.large', imageId: 'ami-0123456789abcdef0', subnets: ['subnet-0aaa1111'], securityGroupIds: ['sg-0ccc3333'] };

/** `broken`: no real answer looks like this (cut off, wrong type, a missing set): must read as unknown. */
type Mangled = { status?: number; body: string; contentType?: string; broken: boolean };
const failing = (status: number) => status < 200 || status >= 300 || status === 204;

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A broken JSON answer made from the real one. */
function mangleJson(g: Gen, real: string): Mangled {
  const status = g.chance(0.8) ? 200 : g.pick([201, 204, 302, 400, 404, 409, 410, 412, 429, 500, 503, 999]);
  const [body, broken] = g.pick<() => [string, boolean]>([
    () => [g.truncate(real), true],
    () => ['{}', true],
    () => ['{"items":{}}', true],
    () => ['{"kind":"compute#instanceAggregatedList","items":{"zones/europe-west1-b":{"instances":[]}}}', true],
    () => [(() => {
      try {
        let v: unknown = JSON.parse(real);
        for (let k = g.int(1, 3); k > 0; k--) v = g.mutate(v).value;
        return JSON.stringify(v) ?? '';
      } catch {
        return real;
      }
    })(), false],
    () => [JSON.stringify(g.hostileValue()) ?? '', true],
    () => ['', true],
    () => ['<html><body>Bad Gateway</body></html>', true],
    () => [real.replace(/"name": ?"/g, `"name":"${'n'.repeat(g.int(1000, 200_000))}`), false],
    () => ['['.repeat(g.int(100, 100_000)), true],
  ])();
  return { status, body, broken: broken || failing(status), ...(g.chance(0.1) ? { contentType: 'text/html' } : {}) };
}

/** A broken EC2 Query (XML) answer made from the real one. */
function mangleXml(g: Gen, real: string): Mangled {
  const status = g.chance(0.8) ? 200 : g.pick([201, 204, 302, 400, 403, 404, 429, 500, 503, 999]);
  const tag = g.pick(['instanceId', 'tagSet', 'instanceState', 'reservationSet', 'instancesSet', 'item', 'placement', 'privateIpAddress', 'name', 'code', 'key', 'value', 'requestId', 'nextToken']);
  const element = new RegExp(`<${tag}>[\\s\\S]*?</${tag}>`, g.chance(0.5) ? 'g' : '');
  const [body, broken] = g.pick<() => [string, boolean]>([
    () => [g.truncate(real), true],
    () => [real.replace(element, ''), tag === 'reservationSet' || tag === 'instanceId'],
    () => [real.replace(element, `<${tag}>${g.chance(0.5) ? xmlEscape(g.hostileString()) : g.hostileString()}</${tag}>`), false],
    () => [real.replace(element, `<${tag}><${tag}>${'x'.repeat(g.int(10, 100_000))}</${tag}></${tag}>`), false],
    () => ['<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r-1</requestId></DescribeInstancesResponse>', true],
    // A well-formed empty answer: "no instances" is a real answer, nothing to assert about it.
    () => ['<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r-1</requestId><reservationSet/></DescribeInstancesResponse>', false],
    () => [JSON.stringify({ Reservations: [] }), true],
    () => ['', true],
    () => ['<html><body>Bad Gateway</body></html>', true],
    () => [`<a>${'<b>'.repeat(g.int(100, 20_000))}`, true],
    () => [real.replace(/<\/\w+>/g, (m) => (g.chance(0.1) ? '' : m)), false],
  ])();
  return { status, body, broken: broken || failing(status) };
}

/** Every VM of ours is present, or in a scope the listing did not answer for: never "gone". */
function expectNoneGone(listing: CloudListing, vms: VmSpec[], where: string): void {
  for (const vm of vms) {
    const zone = (vm.machine['zones'] as string[] | undefined)?.[0] ?? null;
    expect(absentFrom(listing, { vmId: vm.vmId, name: vm.name, zone }), `${where}: ${vm.name} read as gone from ${JSON.stringify(listing).slice(0, 500)}`).toBe(false);
  }
}

describe('cloud answers fuzz', () => {
  let store: Store;
  let metrics: Metrics;
  let closeDb: () => Promise<void>;
  const dataDir = mkdtempSync(join(tmpdir(), 'rf-cloud-fuzz-'));
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);
  // The providers' clock: moved past the list cache before each case, so each case calls the cloud.
  let fakeNow = Date.now();
  const now = () => fakeNow;

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    const database = await migratedDatabase('pglite');
    closeDb = database.close;
    store = new Store(database.db, SHARD, Buffer.alloc(32, 9));
    metrics = createMetrics({ shard: SHARD, defaultMetrics: false });
  });
  afterAll(async () => {
    await closeDb?.();
    rmSync(dataDir, { recursive: true, force: true });
    process.off('unhandledRejection', onUnhandled);
  });

  const reconciler = (name: string, provider: Provider) =>
    new Reconciler({
      config: { shard: SHARD, classes: { small: { bootTimeoutMs: 10 * 60_000 } }, providers: { [name]: {} } } as unknown as ShardConfig,
      store, providers: new Map([[name, provider]]), gitlab: {} as GitLabClient, metrics, log, clock: { now: () => Date.now(), sleep: async () => {} }, lostGraceMs: 0,
    });

  /** A live VM: its row (ready), then the real create. */
  async function vm(provider: Provider, machine: Record<string, unknown>): Promise<VmSpec> {
    const { spec } = makeSpec(SHARD, machine);
    const s: VmSpec = { ...spec, className: 'small' };
    await store.insertVm({ id: s.vmId, class: 'small', provider: provider.name, name: s.name, publicKey: s.publicKey, privateKey: 'k' });
    await store.transition(s.vmId, 'requested', 'creating');
    const created = await provider.create(s);
    await store.transition(s.vmId, 'creating', 'booting', { cloud_id: created.cloudId, zone: created.zone ?? null });
    await store.transition(s.vmId, 'booting', 'ready');
    return s;
  }

  /**
   * The cases of one cloud: each mangles the answers of one call, runs list/describe (which must
   * never read our VMs as gone) or a delete of a VM that does not exist, then a sweep.
   */
  async function run(o: {
    cases: number; seed: number; provider: Provider; vms: VmSpec[]; setMangle: (m: ((call: string, body: string) => Mangled | undefined) | undefined) => void;
    listCalls: string[]; otherCalls: string[]; mangle: (g: Gen, real: string) => Mangled; stillThere: () => string[];
  }) {
    const g = new Gen(o.seed);
    const sweeper = reconciler(o.provider.name, o.provider);
    const tally = { resolved: 0, rejected: 0, broken: 0 };
    for (let i = 0; i < o.cases; i++) {
      fakeNow += 5000;
      const listCase = g.chance(0.75);
      const target = g.pick(listCase ? o.listCalls : o.otherCalls);
      // One mangled answer per case, served to every attempt (retries included).
      let m: Mangled | undefined;
      const served: string[] = [];
      o.setMangle((call, body) => {
        if (call !== target) return undefined;
        m ??= o.mangle(g, body);
        served.push(`${m.status ?? 200} ${m.body.slice(0, 300)}`);
        return m;
      });
      const at = `${o.provider.name} case ${i} (seed ${o.seed}) ${target}`;
      const where = { toString: () => `${at} answered ${JSON.stringify(served)}` } as unknown as string;
      const started = Date.now();
      try {
        if (listCase) {
          const listing = g.chance(0.5)
            ? await o.provider.list({ [LABEL_SHARD]: SHARD })
            : await o.provider.describe(o.vms.map((v) => ({ vmId: v.vmId, name: v.name })));
          if (m?.broken) expectNoneGone(listing, o.vms, where);
        } else {
          const { spec } = makeSpec(SHARD, o.provider.name === 'gcp' ? gceMachine('us-central1-a') : ec2Machine);
          await o.provider.delete([{ vmId: spec.vmId, name: spec.name, zone: o.provider.name === 'gcp' ? 'us-central1-a' : null }]);
        }
        tally.resolved++;
      } catch (err) {
        if ((err as Error).name === 'AssertionError') throw err;
        tally.rejected++;
        expect(err, where).toBeInstanceOf(Error);
      }
      expect(Date.now() - started, where).toBeLessThan(10_000);
      if (listCase && m?.broken) {
        tally.broken++;
        fakeNow += 5000;
        await sweeper.sweep();
      }
      o.setMangle(undefined);
      for (const v of o.vms) expect((await store.vm(v.vmId))?.state, `${where}: row of ${v.name}`).toBe('ready');
      expect(o.stillThere().sort(), `${where}: instances`).toEqual(o.vms.map((v) => v.name).sort());
    }
    expect(tally.rejected).toBeGreaterThan(o.cases / 4);
    expect(tally.broken).toBeGreaterThan(o.cases / 4);
    expect(unhandled).toEqual([]);
  }

  it(`${GCE_CASES} generated GCE answers: calls settle, a broken list is "unknown", never "gone"`, async () => {
    const emu: GceEmulator = await startGceEmulator({ dataDir: join(dataDir, 'gce') });
    const provider = new GcpProvider(
      parseGcpConfig({ project: 'fuzz-proj', endpoint: emu.url, callTimeout: '2s', retryBase: '5ms', retries: 1, requestsPerSecond: 10_000, operationTimeout: '3s' }),
      { shard: SHARD, dataDir, log, telemetry: cloudTelemetry(metrics, 'gcp') },
      { now },
    );
    try {
      const vms = [await vm(provider, gceMachine('us-central1-a')), await vm(provider, gceMachine('us-central1-b'))];
      await run({
        cases: GCE_CASES, seed: 11, provider, vms,
        setMangle: (m) => {
          if (m) emu.faults.mangle = (call: GceCall, body: string) => m(call, body);
          else delete emu.faults.mangle;
        },
        listCalls: ['aggregatedList'], otherCalls: ['delete', 'operationsWait', 'operationsGet', 'get'],
        mangle: mangleJson,
        stillThere: () => emu.instances().map((i) => String(i['name'])),
      });
    } finally {
      await provider.close();
      await emu.close();
    }
  }, 180_000);

  it(`${EC2_CASES} generated EC2 answers: calls settle, a broken list is "unknown", never "gone"`, async () => {
    const emu: Ec2Emulator = await startEc2Emulator({ bootDelayMs: 0, dataDir: join(dataDir, 'ec2') });
    const provider = new AwsProvider(
      parseAwsConfig({ region: 'us-east-1', endpoint: emu.url, callTimeout: '2s', retryBase: '5ms', retries: 1, requestsPerSecond: 10_000 }),
      { shard: SHARD, dataDir: '/nonexistent', log, telemetry: cloudTelemetry(metrics, 'aws') },
      { now },
    );
    try {
      const vms = [await vm(provider, ec2Machine), await vm(provider, ec2Machine)];
      await run({
        cases: EC2_CASES, seed: 12, provider, vms,
        setMangle: (m) => {
          if (m) emu.faults.mangle = m;
          else delete emu.faults.mangle;
        },
        listCalls: ['DescribeInstances'], otherCalls: ['TerminateInstances'],
        mangle: mangleXml,
        stillThere: () => emu.instances().filter((i) => i.state !== 'terminated' && i.state !== 'shutting-down').map((i) => i.tags['Name'] ?? i.id),
      });
    } finally {
      await provider.close();
      await emu.close();
    }
  }, 180_000);
});
