// The reconciler's sweep against the real providers and SDKs, on emulated clouds that misbehave
// as the real ones do: a GCE zone that aggregatedList cannot reach, EC2 lists that lag new
// instances, and a Mac host's instance sharing the shard's tag with the aws provider's VMs.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AllocateHostsCommand, EC2Client, RunInstancesCommand } from '@aws-sdk/client-ec2';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ShardConfig } from '../../src/config/types.js';
import { startEc2Emulator } from '../../emulators/ec2/server.js';
import { startGceEmulator } from '../../emulators/gce/server.js';
import type { GitLabClient } from '../../src/gitlab/client.js';
import { createLogger } from '../../src/isolation/redact.js';
import { realClock, type Clock } from '../../src/manager/clock.js';
import { cloudTelemetry, createMetrics, type Metrics } from '../../src/manager/metrics.js';
import { Reconciler } from '../../src/manager/reconciler.js';
import { Store } from '../../src/manager/store.js';
import { parseAwsConfig } from '../../src/providers/aws/config.js';
import { AwsProvider } from '../../src/providers/aws/provider.js';
import { TAG_HOST_RECORD } from '../../src/providers/aws/run-input.js';
import { parseGcpConfig } from '../../src/providers/gcp/config.js';
import { GcpProvider } from '../../src/providers/gcp/provider.js';
import { LABEL_SHARD, ProviderError, type Provider, type VmSpec } from '../../src/providers/provider.js';
import { databaseKinds, migratedDatabase } from '../helpers/database.js';
import { makeSpec } from '../providers/local-fixture.js';

const log = createLogger({ level: 'silent' });
const [ZONE_A, ZONE_B] = ['us-central1-a', 'us-central1-b'];
const gceMachine = (zone: string) => ({ machineType: 'e2-standard-2', image: 'projects/debian-cloud/global/images/family/debian-12', zones: [zone] });
const ec2Machine = { instanceType: 'c6i.large', imageId: 'ami-0123456789abcdef0', subnets: ['subnet-0aaa1111'], securityGroupIds: ['sg-0ccc3333'] };

describe.each(databaseKinds())('reconciler sweep against emulated clouds on %s', (kind) => {
  const cleanups: (() => Promise<unknown>)[] = [];
  let store: Store;
  let metrics: Metrics;
  let shard: string;
  let ahead: number;
  const clock: Clock = { now: () => Date.now() + ahead, sleep: realClock.sleep };

  beforeEach(async () => {
    const database = await migratedDatabase(kind);
    cleanups.push(database.close);
    shard = `r${randomBytes(3).toString('hex')}`;
    store = new Store(database.db, shard, Buffer.alloc(32, 5));
    metrics = createMetrics({ shard, defaultMetrics: false });
    ahead = 0;
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  });

  const reconciler = (name: string, provider: Provider, lostGraceMs?: number) =>
    new Reconciler({
      config: { shard, classes: { small: { bootTimeoutMs: 10 * 60_000 } }, providers: { [name]: {} } } as unknown as ShardConfig,
      store, providers: new Map([[name, provider]]), gitlab: {} as GitLabClient, metrics, log, clock, ...(lostGraceMs !== undefined ? { lostGraceMs } : {}),
    });

  /** A VM row written before its create (write-ahead), then the create, then the row's state. */
  async function vm(provider: Provider, machine: Record<string, unknown>, state: 'booting' | 'ready' | 'running'): Promise<VmSpec> {
    const { spec } = makeSpec(shard, machine);
    const s: VmSpec = { ...spec, className: 'small' };
    await store.insertVm({ id: s.vmId, class: 'small', provider: provider.name, name: s.name, publicKey: s.publicKey, privateKey: 'k', hostKeyFingerprint: 'SHA256:pinned' });
    await store.transition(s.vmId, 'requested', 'creating');
    const created = await provider.create(s);
    await store.transition(s.vmId, 'creating', 'booting', { cloud_id: created.cloudId, zone: created.zone ?? null });
    if (state !== 'booting') await store.transition(s.vmId, 'booting', 'ready');
    if (state === 'running') {
      await store.transition(s.vmId, 'ready', 'assigned');
      await store.transition(s.vmId, 'assigned', 'running');
    }
    return s;
  }
  const stateOf = async (id: string) => (await store.vm(id))?.state;

  async function gcp() {
    const dataDir = mkdtempSync(join(tmpdir(), 'rf-sweep-gce-'));
    const emu = await startGceEmulator({ dataDir });
    const make = () => new GcpProvider(
      parseGcpConfig({ project: 'sweep-proj', endpoint: emu.url, callTimeout: '3s', retryBase: '20ms', retries: 2, requestsPerSecond: 1000 }),
      { shard, dataDir, log, telemetry: cloudTelemetry(metrics, 'gcp'), connectOverride: emu.connectOverride },
    );
    const provider = make();
    cleanups.push(async () => {
      await provider.close();
      await emu.close();
      rmSync(dataDir, { recursive: true, force: true });
    });
    return { emu, provider, make };
  }

  it('gcp: while a zone is unreachable the sweep deletes nothing and fails no VM, counts it, and after it answers again nothing was lost', async () => {
    const { emu, provider } = await gcp();
    const a = await vm(provider, gceMachine(ZONE_A), 'ready');
    const b = await vm(provider, gceMachine(ZONE_B), 'running');
    const c = await vm(provider, gceMachine(ZONE_B), 'ready');
    emu.faults.unreachableZones.set(ZONE_B, Date.now() + 1500);
    const sweeper = reconciler('gcp', provider, 0); // no grace: only the partial answer protects them

    expect(await sweeper.sweep()).toBe(0);
    expect([await stateOf(a.vmId), await stateOf(b.vmId), await stateOf(c.vmId)]).toEqual(['ready', 'running', 'ready']);
    expect(emu.calls.delete).toBe(0);
    const partial = (await metrics.cloudPartialLists.get()).values.find((v) => v.labels.zone === ZONE_B && v.labels.provider === 'gcp');
    expect(partial?.value).toBe(1);

    await new Promise((r) => setTimeout(r, 1600)); // the zone answers again (and the list cache expired)
    expect(await sweeper.sweep()).toBe(0);
    expect([await stateOf(a.vmId), await stateOf(b.vmId), await stateOf(c.vmId)]).toEqual(['ready', 'running', 'ready']);
    expect(emu.instances().map((i) => i['name']).sort()).toEqual([a.name, b.name, c.name].sort());

    // From a complete answer, absence is evidence: a VM deleted behind the manager's back is lost.
    await provider.delete([{ vmId: c.vmId, name: c.name }]);
    await sweeper.sweep();
    expect(await stateOf(c.vmId)).toBe('failed');
    expect(await stateOf(b.vmId)).toBe('running');
  });

  it('gcp: a delete that must find the zone in a partial list fails retryably instead of taking the VM as gone', async () => {
    const { emu, provider, make } = await gcp();
    const { spec } = makeSpec(shard, gceMachine(ZONE_B));
    await provider.create(spec);
    const fresh = make(); // a restarted manager: it never saw the VM, the ref has no zone
    cleanups.push(() => fresh.close());
    emu.faults.unreachableZones.set(ZONE_B, Infinity);
    await expect(fresh.delete([{ vmId: spec.vmId, name: spec.name }])).rejects.toSatisfy((e: unknown) => e instanceof ProviderError && e.kind === 'retryable');
    expect(emu.instance(spec.name)).toBeDefined();
    emu.faults.unreachableZones.delete(ZONE_B);
    await new Promise((r) => setTimeout(r, 1100)); // the partial answer leaves the list cache
    await fresh.delete([{ vmId: spec.vmId, name: spec.name }]);
    expect(emu.instance(spec.name)).toBeUndefined();
  });

  async function aws() {
    const emu = await startEc2Emulator({ bootDelayMs: 0 });
    const provider = new AwsProvider(
      parseAwsConfig({ region: 'us-east-1', endpoint: emu.url, callTimeout: '3s', retryBase: '20ms', retries: 2, requestsPerSecond: 1000 }),
      { shard, dataDir: '/nonexistent', log, telemetry: cloudTelemetry(metrics, 'aws'), connectOverride: emu.connectOverride },
    );
    cleanups.push(async () => {
      await provider.close();
      await emu.close();
    });
    return { emu, provider };
  }

  it('aws: a fresh VM missing from an eventually consistent DescribeInstances is not failed within the grace period', async () => {
    const { emu, provider } = await aws();
    emu.faults.listLagMs = 60_000;
    const s = await vm(provider, ec2Machine, 'booting');
    expect((await provider.list({ [LABEL_SHARD]: shard })).vms).toEqual([]); // the list lags the launch
    await reconciler('aws', provider).sweep();
    expect(await stateOf(s.vmId)).toBe('booting');
    // The grace is what protects it: once the row is older than the grace, the same answer fails it.
    ahead = 4 * 60_000;
    await reconciler('aws', provider).sweep();
    expect(await stateOf(s.vmId)).toBe('failed');
  });

  it("aws: a Mac host's instance in the same shard is never listed or deleted by the aws sweep", async () => {
    const { emu, provider } = await aws();
    const ec2 = new EC2Client({ endpoint: emu.url, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' }, maxAttempts: 1 });
    cleanups.push(async () => ec2.destroy());
    const [hostId] = (await ec2.send(new AllocateHostsCommand({ InstanceType: 'mac2.metal', AvailabilityZone: 'us-east-1a', Quantity: 1 }))).HostIds!;
    const tags = [{ Key: LABEL_SHARD, Value: shard }, { Key: TAG_HOST_RECORD, Value: 'host-record-1' }, { Key: 'Name', Value: `rf-${shard}-host-abcdef01` }];
    const run = await ec2.send(new RunInstancesCommand({
      ImageId: 'ami-0123456789abcdef0', InstanceType: 'mac2.metal', MinCount: 1, MaxCount: 1, SubnetId: 'subnet-0aaa1111',
      Placement: { Tenancy: 'host', HostId: hostId }, TagSpecifications: [{ ResourceType: 'instance', Tags: tags }],
    }));
    const hostInstance = run.Instances![0]!.InstanceId!;
    const job = await vm(provider, ec2Machine, 'ready');

    expect((await provider.list({ [LABEL_SHARD]: shard })).vms.map((v) => v.cloudId)).not.toContain(hostInstance);
    expect(await reconciler('aws', provider, 0).sweep()).toBe(0);
    expect(emu.instances().find((i) => i.id === hostInstance)?.state).not.toBe('terminated');
    expect(emu.calls.TerminateInstances).toBe(0);
    expect(await stateOf(job.vmId)).toBe('ready');
  });
});
