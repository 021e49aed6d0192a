// The Mac host fleet against the EC2 emulator (real EC2Client) on a virtual clock, with host
// records in the database: allocation, launch, reachability, the 24-hour rule, scrubbing,
// release, and picking up after a crash between the record and the EC2 call.
import { EC2Client } from '@aws-sdk/client-ec2';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { DbResourceStore } from '../../src/manager/resource-store.js';
import { parseMacMachine } from '../../src/providers/mac/config.js';
import { HOST_KIND, HostFleet, type HostRecord } from '../../src/providers/mac/host-fleet.js';

const H = 3600_000;
const hostPublicKey = generateVmKeyPair('host').publicKey;
const machine = parseMacMachine('macos-m1', {
  instanceType: 'mac2.metal',
  hostImageId: 'ami-0123456789abcdef0',
  subnets: [{ id: 'subnet-0aaa1111', zone: 'us-east-1a' }, { id: 'subnet-0bbb2222', zone: 'us-east-1b' }],
  securityGroupIds: ['sg-0ccc3333'],
  hosts: { min: 1, max: 3 },
  vm: { image: 'macos-sequoia-base' },
});

describe('Mac host fleet', () => {
  let emu: Ec2Emulator;
  let ec2: EC2Client;
  let close: () => Promise<void>;
  let store: DbResourceStore;
  let clock = 1_800_000_000_000;
  const none = new Map<string, { vms: number; busy: number }>();

  const fleet = (m = machine) =>
    new HostFleet({
      shard: 'mac-shard', className: 'macos-m1', machine: m, ec2, resources: store, log: pino({ level: 'silent' }), now: () => clock,
      call: (_action, fn) => fn(new AbortController().signal),
      probe: async (rec: HostRecord) => !!rec.data.privateIp,
      hostLaunchTimeoutMs: 30 * 60_000,
      newHostKey: (id) => ({ publicKey: hostPublicKey, sealedPrivateKey: `sealed-key-of-${id}` }),
    });
  const states = async () => (await fleet().records()).map((r) => r.state).sort();
  async function settle(f: HostFleet, wantedSlots: number, until: (r: HostRecord[]) => boolean) {
    for (let i = 0; i < 50; i++) {
      const recs = await f.tick({ wantedSlots, nested: none });
      if (until(recs)) return recs;
      await new Promise((r) => setTimeout(r, 30));
    }
    throw new Error(`fleet did not settle: ${(await f.records()).map((r) => r.state).join(',')}`);
  }

  beforeAll(async () => {
    emu = await startEc2Emulator({ now: () => clock, scrubMs: 2 * H });
    ec2 = new EC2Client({ endpoint: emu.url, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' }, maxAttempts: 1 });
    const database = await openDatabase('pglite:memory', { log: pino({ level: 'silent' }) });
    await migrateToLatest(database.db, pino({ level: 'silent' }));
    close = database.close;
    store = new DbResourceStore(database.db, 'mac-shard', 'mac');
  });
  afterAll(async () => {
    ec2?.destroy();
    await emu?.close();
    await close?.();
  });

  it('allocates min hosts, launches their instance and marks them ready once reachable', async () => {
    const recs = await settle(fleet(), 0, (r) => r.length === 1 && r[0]!.state === 'ready');
    const host = emu.hosts().find((h) => h.id === recs[0]!.data.hostId)!;
    expect(host).toMatchObject({ state: 'available', instanceType: 'mac2.metal', zone: 'us-east-1a', instanceId: recs[0]!.data.instanceId });
    expect(emu.calls.AllocateHosts).toBe(1);
  });

  it('grows to what the wanted slots need (two VMs per host), spreading zones', async () => {
    const recs = await settle(fleet(), 4, (r) => r.filter((x) => x.state === 'ready').length === 2);
    expect(recs.map((r) => r.data.zone).sort()).toEqual(['us-east-1a', 'us-east-1b']);
  });

  it('finishes an allocation whose EC2 call was lost in a crash, without a second host', async () => {
    // The record was written, then the manager died before AllocateHosts.
    await store.insert(HOST_KIND, 'crashed-record-0001', 'allocating', { className: 'macos-m1', zone: 'us-east-1a', subnet: 'subnet-0aaa1111', instanceType: 'mac2.metal' });
    const before = emu.hosts().length;
    await settle(fleet(), 6, (r) => r.find((x) => x.id === 'crashed-record-0001')?.state === 'ready');
    expect(emu.hosts().length).toBe(before + 1);
  });

  it('keeps surplus hosts for their paid 24 hours, then sheds the instance, lets the host scrub and releases it', async () => {
    clock += 2 * H;
    await fleet().tick({ wantedSlots: 0, nested: none });
    expect(await states()).toEqual(['ready', 'ready', 'ready']);
    clock += 23 * H; // past 24 h since allocation
    await fleet().tick({ wantedSlots: 0, nested: none });
    expect((await states()).filter((s) => s === 'scrubbing')).toHaveLength(2); // min 1 stays
    expect(emu.hosts().filter((h) => h.state === 'pending')).toHaveLength(2);
    clock += 2 * H + 1; // scrubbing done
    const recs = await fleet().tick({ wantedSlots: 0, nested: none });
    expect(recs.map((r) => r.state).sort()).toEqual(['ready', 'released', 'released']);
    expect(emu.hosts().filter((h) => h.state === 'released')).toHaveLength(2);
    // A released host's instance key is erased; the live one keeps its own.
    for (const r of recs) expect(r.data.hostKeySealed ?? null).toBe(r.state === 'ready' ? `sealed-key-of-${r.id}` : null);
  });

  it('never sheds a host whose nested VMs run jobs', async () => {
    const [ready] = (await fleet().records()).filter((r) => r.state === 'ready');
    clock += 48 * H;
    const noMin = { ...machine, hosts: { min: 0, max: 3 } };
    await fleet(noMin).tick({ wantedSlots: 0, nested: new Map([[ready!.id, { vms: 1, busy: 1 }]]) });
    expect((await fleet().records()).find((r) => r.id === ready!.id)?.state).toBe('ready');
    // Once its job is done, the idle host past its minimum goes.
    await fleet(noMin).tick({ wantedSlots: 0, nested: none });
    expect((await fleet().records()).find((r) => r.id === ready!.id)?.state).toBe('scrubbing');
  });
});
