// A throwaway local provider with sandboxes that are always cleaned up (processes killed).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../src/isolation/redact.js';
import { generateVmKeyPair, type VmKeyPair } from '../../src/isolation/keys.js';
import { vmName } from '../../src/manager/pool.js';
import { LocalProvider } from '../../src/providers/local/provider.js';
import { parseLocalConfig } from '../../src/providers/local/config.js';
import { LABEL_SHARD, LABEL_VM, type CloudVm, type ConnectInfo, type Provider, type VmSpec } from '../../src/providers/provider.js';

export interface TestVm {
  spec: VmSpec;
  keys: VmKeyPair;
}

export function makeSpec(shard: string, machine: Record<string, unknown> = {}): TestVm {
  // Named as the manager names job VMs (pool.ts vmName): a bulk-created GCE VM is known by its name.
  const vmId = randomBytes(6).toString('hex');
  const name = vmName(shard, vmId);
  const keys = generateVmKeyPair(name);
  return {
    keys,
    spec: {
      vmId,
      name,
      shard,
      className: 'test-class',
      labels: { [LABEL_SHARD]: shard, [LABEL_VM]: vmId },
      publicKey: keys.publicKey,
      machine,
      maxRunSeconds: 600,
    },
  };
}

/** Polls describe until the VM is running with an address. */
export async function waitRunning(provider: Provider, spec: VmSpec, timeoutMs = 30_000): Promise<CloudVm> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const [vm] = (await provider.describe([{ vmId: spec.vmId, name: spec.name }])).vms;
    if (vm?.state === 'running' && vm.internalIp) return vm;
    if (Date.now() > end) throw new Error(`VM ${spec.name} not running after ${timeoutMs} ms (last: ${JSON.stringify(vm)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface LocalFixture {
  provider: LocalProvider;
  dataDir: string;
  shard: string;
  /** Creates a VM, waits until it listens, returns how to reach it. */
  startVm(machine?: Record<string, unknown>): Promise<TestVm & { vm: CloudVm; info: ConnectInfo }>;
  cleanup(): Promise<void>;
}

export function localFixture(config: Record<string, unknown> = {}): LocalFixture {
  const dataDir = mkdtempSync(join(tmpdir(), 'rf-local-'));
  const shard = `t${randomBytes(3).toString('hex')}`;
  const provider = new LocalProvider(parseLocalConfig(config), { shard, dataDir, log: createLogger({ level: 'silent' }) });
  return {
    provider,
    dataDir,
    shard,
    async startVm(machine = {}) {
      const t = makeSpec(shard, machine);
      await provider.create(t.spec);
      const vm = await waitRunning(provider, t.spec);
      return { ...t, vm, info: provider.connectInfo(vm, t.keys.privateKey) };
    },
    async cleanup() {
      // Every sandbox under this root, whatever shard: delete kills the processes.
      const all = (await provider.list({})).vms;
      await provider.delete(all.map((vm) => ({ vmId: vm.vmId ?? vm.name, name: vm.name, cloudId: vm.cloudId })));
      await provider.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
