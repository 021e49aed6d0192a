// Shared by the pool tests: a scriptable in-memory cloud and a one-class shard config.
import { poolConfig } from '../../src/config/pool-defaults.js';
import type { ShardConfig } from '../../src/config/types.js';
import type { SshSession } from '../../src/connect/ssh.js';
import { ProviderError, createEach, type CloudVm, type Provider, type VmRef, type VmSpec } from '../../src/providers/provider.js';

/** A cloud in memory: VMs run at once; failures are switched on per test. */
export class MemoryCloud implements Provider {
  readonly name = 'memory';
  readonly capabilities = { batchCreate: false, stopStart: false, gpu: false, windows: false, nestedVms: false };
  vms = new Map<string, CloudVm>();
  failCreate: ProviderError | null = null;
  failDelete = 0;
  neverRunning = false;
  creates = 0;
  deletes = 0;
  async create(spec: VmSpec) {
    this.creates++;
    if (this.failCreate) throw this.failCreate;
    this.vms.set(spec.name, { vmId: spec.vmId, name: spec.name, cloudId: spec.name, state: this.neverRunning ? 'pending' : 'running', internalIp: '127.0.0.1', labels: spec.labels });
    return { vmId: spec.vmId, cloudId: spec.name };
  }
  createMany(specs: VmSpec[]) {
    return createEach(this, specs);
  }
  async describe(refs: VmRef[]) {
    return { vms: refs.flatMap((r) => (this.vms.has(r.name) ? [this.vms.get(r.name)!] : [])), unreachable: [] };
  }
  async list() {
    return { vms: [...this.vms.values()], unreachable: [] };
  }
  async delete(refs: VmRef[]) {
    this.deletes++;
    if (this.failDelete > 0) {
      this.failDelete--;
      throw new ProviderError('retryable', 'injected delete failure');
    }
    for (const r of refs) this.vms.delete(r.name);
  }
  connectInfo(vm: { internalIp?: string }) {
    return { protocol: 'ssh' as const, os: 'linux' as const, host: vm.internalIp ?? '', port: 22, username: 'runner', privateKey: 'k' };
  }
  async close() {}
}

export const fakeSession = { close() {}, closed: false } as unknown as SshSession;

export function config(pool: { idle: number; max: number }, bootTimeoutMs = 30_000): ShardConfig {
  return {
    shard: 'pool-test',
    database: { url: 'pglite:memory' },
    http: { listen: { host: '127.0.0.1', port: 0 }, adminToken: null },
    gitlab: { url: 'http://127.0.0.1:9', pollIntervalMs: 1000, requestTimeoutMs: 1000 },
    classes: { small: { name: 'small', runnerToken: 't', provider: 'memory', costFactor: 1, pool: poolConfig(pool), jobTimeoutMs: 3600_000, machine: {}, bootTimeoutMs } },
    providers: { memory: {} },
    dataDir: '/tmp',
    secrets: { key: null },
    billing: { token: null, webhooks: [] },
    isolation: { managerRanges: [], audit: 'off', auditIntervalMs: 600_000 },
    log: { level: 'silent' },
  };
}
