// The mac provider against the EC2 emulator through the real EC2Client: a Mac host is allocated
// and its macOS instance launched with the manager's own key in its user data; nested VMs are
// cloned with Tart (the test double on the host) and reached through the host as an SSH jump; a
// new provider over the same database (a restarted manager) finds the host and its VMs again.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh } from '../../src/connect/ssh.js';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { decryptSecret, deriveKey, encryptSecret } from '../../src/isolation/keys.js';
import { keysInUserData } from '../../src/providers/aws/run-input.js';
import { DbResourceStore } from '../../src/manager/resource-store.js';
import { parseMacConfig } from '../../src/providers/mac/config.js';
import { MacProvider } from '../../src/providers/mac/provider.js';
import { LABEL_SHARD, ProviderError, type CloudTelemetry, type ConnectInfo, type ProviderContext } from '../../src/providers/provider.js';
import { installTartDouble } from '../fixtures/tart/install.js';
import { makeSpec } from './local-fixture.js';

const CLASS = 'saas-macos-medium-m1';
const WHOLE = 'saas-macos-large-m2pro';
const SHARD = 'mac-t';
const machine = {
  instanceType: 'mac2.metal',
  hostImageId: 'ami-0123456789abcdef0',
  subnets: [{ id: 'subnet-0aaa1111', zone: 'us-east-1a' }],
  securityGroupIds: ['sg-0ccc3333'],
  hosts: { min: 1, max: 1 },
  vm: { image: 'macos-sequoia-xcode', username: 'runner', sshPort: 2222, cpu: 4, memoryMb: 8192 },
};
const wholeMachine = { ...machine, instanceType: 'mac2-m2pro.metal', perJob: 'instance', vm: {} };

describe('mac provider (EC2 emulator, Tart double on the host)', () => {
  let dir: string;
  let emu: Ec2Emulator;
  let closeDb: () => Promise<void>;
  let ctx: ProviderContext;
  let provider: MacProvider;
  const seen = { hosts: [] as Record<string, number>[], allocated: 0, used: 0, ready: [] as number[] };
  const telemetry: CloudTelemetry = {
    request() {},
    stockout() {},
    hosts: (_c, s) => void seen.hosts.push(s),
    hostSeconds: (_c, a, u) => {
      seen.allocated += a;
      seen.used += u;
    },
    nestedVmReady: (_c, s) => void seen.ready.push(s),
  };
  const spec = (className = CLASS) => {
    const t = makeSpec(SHARD, machine);
    // The pool's naming (rf-<shard>-<id>) is what lets a restarted manager map a VM to its row.
    const name = `rf-${SHARD}-${t.spec.vmId}`;
    return { ...t, spec: { ...t.spec, name, className } };
  };
  const make = () => new MacProvider(parseMacConfig({ region: 'us-east-1', endpoint: emu.url, retryBase: '10ms', hostPollInterval: '1s' }), ctx, { autoTick: false });
  async function untilReady(p: MacProvider, className = CLASS) {
    for (let i = 0; i < 200; i++) {
      await p.tick();
      if (p.capacity(className, 2) > 0) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('no Mac host became ready');
  }
  async function running(p: MacProvider, s: ReturnType<typeof spec>['spec'], cloudId: string) {
    for (let i = 0; i < 100; i++) {
      const [vm] = (await p.describe([{ vmId: s.vmId, name: s.name, cloudId }])).vms;
      if (vm?.state === 'running' && vm.internalIp) return vm;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${s.name} never ran`);
  }
  async function echo(info: ConnectInfo) {
    const s = await connectSsh(info, { timeoutMs: 10_000 });
    let out = '';
    try {
      await s.exec('echo "in $USER-vm"', { onData: (c) => void (out += String(c)) });
    } finally {
      s.close();
    }
    return out.trim();
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rf-mac-'));
    const tart = installTartDouble(dir, ['macos-sequoia-xcode']);
    emu = await startEc2Emulator({ dataDir: join(dir, 'ec2'), sandboxPathDir: tart.bin, scrubMs: 4_000 });
    const database = await openDatabase('pglite:memory', { log: pino({ level: 'silent' }) });
    await migrateToLatest(database.db, pino({ level: 'silent' }));
    closeDb = database.close;
    const key = deriveKey(randomBytes(32).toString('hex'));
    ctx = {
      shard: SHARD, dataDir: dir, log: pino({ level: process.env['MAC_TEST_LOG'] ?? 'silent' }), telemetry, connectOverride: emu.connectOverride,
      resources: new DbResourceStore(database.db, SHARD, 'mac'),
      classes: { [CLASS]: machine, [WHOLE]: wholeMachine },
      secrets: { seal: (s, c) => encryptSecret(s, key, c), open: (s, c) => decryptSecret(s, key, c) },
    };
    provider = make();
  });

  afterAll(async () => {
    await provider?.close();
    await emu?.close();
    await closeDb?.();
    rmSync(dir, { recursive: true, force: true });
  });

  it('allocates the host, launches its instance with a key of its own, and offers two VM slots', async () => {
    expect(provider.capacity(CLASS, 2)).toBe(0);
    await untilReady(provider);
    expect(provider.capacity(CLASS, 2)).toBe(2);
    const host = emu.hosts().find((h) => h.instanceType === 'mac2.metal');
    const inst = emu.instances().find((i) => i.id === host!.instanceId);
    expect(host).toMatchObject({ instanceType: 'mac2.metal', zone: 'us-east-1a', instanceId: inst!.id });
    const req = emu.runRequest(inst!.id)!;
    expect(req).toMatchObject({ 'Placement.Tenancy': 'host', 'Placement.HostId': host!.id, 'MetadataOptions.HttpTokens': 'required', 'NetworkInterface.1.AssociatePublicIpAddress': 'false' });
    const userData = Buffer.from(req['UserData']!, 'base64').toString();
    expect(keysInUserData(userData).get(0)).toMatch(/^ssh-ed25519 /);
    expect(userData).toContain('block drop quick from 192.168.64.0/24 to 169.254.169.254');
    expect(seen.hosts.at(-1)).toMatchObject({ ready: 1, allocating: 0, scrubbing: 0 });
  });

  it('clones a fresh VM per spec, reachable through the host with its own key; a third VM is refused', async () => {
    const a = spec();
    const b = spec();
    const ca = await provider.create(a.spec);
    const cb = await provider.create(b.spec);
    expect(ca.cloudId.split('/')[0]).toBe(cb.cloudId.split('/')[0]); // packed on the one host
    const va = await running(provider, a.spec, ca.cloudId);
    const info = provider.connectInfo(va, a.keys.privateKey);
    expect(info).toMatchObject({ os: 'macos', port: 2222, username: 'runner', jump: { os: 'macos', username: 'ec2-user' } });
    expect(await echo(info)).toMatch(/^in .+-vm$/);
    await expect(echo({ ...info, privateKey: b.keys.privateKey })).rejects.toThrow();
    expect(seen.ready.length).toBeGreaterThan(0);

    const c = spec();
    const err = await provider.create(c.spec).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProviderError);
    expect((err as ProviderError).kind).toBe('stockout');

    await provider.delete([{ vmId: a.spec.vmId, name: a.spec.name, cloudId: ca.cloudId }]);
    expect((await provider.describe([{ vmId: a.spec.vmId, name: a.spec.name, cloudId: ca.cloudId }])).vms).toEqual([]);
    const cc = await provider.create(c.spec); // the slot freed up
    await running(provider, c.spec, cc.cloudId);
    await provider.tick();
    expect(seen.used).toBeGreaterThan(0);
    expect(seen.allocated).toBeGreaterThanOrEqual(seen.used);
  });

  it('after a restart finds its host and nested VMs from the database and the host', async () => {
    await provider.close();
    provider = make();
    await provider.tick();
    const listed = (await provider.list({ [LABEL_SHARD]: SHARD })).vms;
    expect(listed).toHaveLength(2);
    for (const vm of listed) expect(vm.vmId).toMatch(/^[0-9a-f]{12}$/);
    // A VM known only by name (its create never recorded a cloud id) is found and deleted.
    await provider.delete(listed.map((v) => ({ vmId: v.vmId!, name: v.name })));
    expect((await provider.list({ [LABEL_SHARD]: SHARD })).vms).toEqual([]);
    expect(provider.tracked()).toMatchObject({ nested: 0, placing: 0, ips: 0, cloneStarted: 0 }); // per-VM maps: nothing left behind
    expect(emu.calls.AllocateHosts).toBe(2); // one host per class, none again
    expect(provider.capacity(CLASS, 2)).toBe(2);
  });

  it('perJob: instance runs a whole Mac instance per job on a free host; the host scrubs after it', async () => {
    await untilReady(provider, WHOLE);
    expect(provider.capacity(WHOLE, 1)).toBe(1);
    const host = emu.hosts().find((h) => h.instanceType === 'mac2-m2pro.metal')!;
    expect(host.instanceId).toBeUndefined(); // no long-lived instance in this mode
    const a = spec(WHOLE);
    const created = await provider.create(a.spec);
    expect(created.cloudId).toMatch(/^i-/);
    expect(emu.runRequest(created.cloudId)).toMatchObject({ 'Placement.HostId': host.id, InstanceInitiatedShutdownBehavior: 'terminate', 'MetadataOptions.HttpTokens': 'required' });
    const err = await provider.create(spec(WHOLE).spec).catch((e: unknown) => e);
    expect((err as ProviderError).kind).toBe('stockout'); // one instance per host
    const vm = await running(provider, a.spec, created.cloudId);
    const info = provider.connectInfo(vm, a.keys.privateKey);
    expect(info.jump).toBeUndefined();
    expect(await echo(info)).toBe('in ec2-user-vm');
    expect((await provider.list({ [LABEL_SHARD]: SHARD })).vms.map((v) => v.cloudId)).toContain(created.cloudId);

    await provider.delete([{ vmId: a.spec.vmId, name: a.spec.name, cloudId: created.cloudId }]);
    await provider.list({ [LABEL_SHARD]: SHARD }); // the terminated instance is still described a while
    expect(provider.tracked()).toMatchObject({ jobHosts: 0 });
    await provider.tick();
    expect(emu.hosts().find((h) => h.id === host.id)?.state).toBe('pending'); // EC2 scrubs it
    expect(provider.capacity(WHOLE, 1)).toBe(0);
    await untilReady(provider, WHOLE); // scrubbed: the host takes the next job
    expect(emu.calls.AllocateHosts).toBe(2);
  });
});
