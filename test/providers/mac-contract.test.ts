// The provider contract over the mac provider: nested VMs (Tart double) on two Mac hosts of the
// EC2 emulator, host records in PGlite. Another shard gets hosts of its own, as in production.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { startEc2Emulator } from '../../emulators/ec2/server.js';
import { openDatabase } from '../../src/db/connect.js';
import { migrateToLatest } from '../../src/db/migrate.js';
import { decryptSecret, deriveKey, encryptSecret } from '../../src/isolation/keys.js';
import { DbResourceStore } from '../../src/manager/resource-store.js';
import { parseMacConfig } from '../../src/providers/mac/config.js';
import { MacProvider } from '../../src/providers/mac/provider.js';
import type { ProviderContext } from '../../src/providers/provider.js';
import { installTartDouble } from '../fixtures/tart/install.js';
import { providerContract } from './contract.js';

// The contract's specs are of class test-class (local-fixture.ts makeSpec).
const CLASS = 'test-class';
const HOSTLESS = 'test-class-hostless';
const machine = (hosts: number) => ({
  instanceType: 'mac2.metal',
  hostImageId: 'ami-0123456789abcdef0',
  subnets: [{ id: 'subnet-0aaa1111', zone: 'us-east-1a' }],
  securityGroupIds: ['sg-0ccc3333'],
  hosts: { min: hosts, max: Math.max(1, hosts) },
  vm: { image: 'macos-sequoia-xcode', username: 'runner', sshPort: 2222 },
});

providerContract('mac', async (shard) => {
  const dir = mkdtempSync(join(tmpdir(), 'rf-mac-contract-'));
  const tart = installTartDouble(dir, ['macos-sequoia-xcode']);
  const emu = await startEc2Emulator({ dataDir: join(dir, 'ec2'), sandboxPathDir: tart.bin, bootDelayMs: 0 });
  const database = await openDatabase('pglite:memory', { log: pino({ level: 'silent' }) });
  await migrateToLatest(database.db, pino({ level: 'silent' }));
  const key = deriveKey(randomBytes(32).toString('hex'));
  const cfg = parseMacConfig({ region: 'us-east-1', endpoint: emu.url, retryBase: '10ms', hostPollInterval: '1s' });
  const ctxOf = (s: string, hosts: number): ProviderContext => ({
    shard: s, dataDir: dir, log: pino({ level: 'silent' }), connectOverride: emu.connectOverride,
    resources: new DbResourceStore(database.db, s, 'mac'),
    // A class with no hosts: its creates meet a stockout.
    classes: { [CLASS]: machine(hosts), [HOSTLESS]: machine(0) },
    secrets: { seal: (t, c) => encryptSecret(t, key, c), open: (t, c) => decryptSecret(t, key, c) },
  });
  /** A provider whose hosts are up, each with its two VM slots. */
  const ready = async (s: string, hosts: number) => {
    const p = new MacProvider(cfg, ctxOf(s, hosts), { autoTick: false });
    for (let i = 0; p.capacity(CLASS, 0) < 2 * hosts; i++) {
      if (i > 300) throw new Error(`the Mac hosts of ${s} did not become ready`);
      await p.tick();
      await new Promise((r) => setTimeout(r, 50));
    }
    return p;
  };
  // Two hosts: four VM slots, as many as any contract test holds at once.
  const provider = await ready(shard, 2);
  return {
    provider,
    async cleanup() {
      await provider.close();
      await emu.close();
      await database.close();
      rmSync(dir, { recursive: true, force: true });
    },
    otherShard: (s) => ready(s, 1),
    restart: async () => new MacProvider(cfg, ctxOf(shard, 2), { autoTick: false }),
    failures: { stockout: (spec) => ({ spec: { ...spec, className: HOSTLESS }, restore() {} }) },
    badSpec: (spec) => ({ ...spec, className: 'not-a-mac-class' }),
  };
});
