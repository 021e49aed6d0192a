// What every provider must do (docs/architecture.md "Provider contract": one suite, run by each provider's test file).
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, waitForSsh } from '../../src/connect/ssh.js';
import { LABEL_SHARD, LABEL_VM, absentFrom, type Provider, type VmRef, type VmSpec } from '../../src/providers/provider.js';
import { makeSpec, waitRunning } from './local-fixture.js';

export interface ContractSetup {
  provider: Provider;
  cleanup(): Promise<void>;
  /** Machine profile for the specs (zones, machine type... whatever the provider needs). */
  machine?: Record<string, unknown>;
  /** False for providers whose VMs cannot be reached over SSH in tests (emulated clouds). Default true. */
  reachable?: boolean;
  /**
   * Labels (besides the shard's) of a resource that shares the shard label but is no job VM of
   * this provider, e.g. a Mac host's instance in an EC2 shard. Default: none.
   */
  foreignLabels?: Record<string, string>;
  /**
   * Makes the cloud's lists stop answering for a zone until the returned function is called;
   * absent for clouds that answer whole or not at all.
   */
  partial?(zone: string): () => void;
}

const ref = (s: VmSpec): VmRef => ({ vmId: s.vmId, name: s.name });

export function providerContract(name: string, setup: () => Promise<ContractSetup>): void {
  describe(`provider contract: ${name}`, () => {
    let env: ContractSetup;
    let provider: Provider;
    const shard = `c${randomBytes(3).toString('hex')}`;
    const otherShard = `${shard}x`;
    const created: VmSpec[] = [];
    const spec = (s = shard) => {
      const t = makeSpec(s, env.machine ?? {});
      created.push(t.spec);
      return t;
    };

    beforeAll(async () => {
      env = await setup();
      provider = env.provider;
    });
    afterEach(async () => {
      await provider.delete(created.splice(0).map(ref));
    });
    afterAll(async () => {
      await env?.cleanup();
    });

    it('creates idempotently: the same spec twice is one VM', async () => {
      const { spec: s } = spec();
      const [a, b] = [await provider.create(s), await provider.create(s)];
      expect(b.cloudId).toBe(a.cloudId);
      expect(a.vmId).toBe(s.vmId);
      expect((await provider.list({ [LABEL_VM]: s.vmId })).vms).toHaveLength(1);
    });

    it('returns createMany results in the order of the specs', async () => {
      const specs = [spec().spec, spec().spec, spec().spec];
      const results = await provider.createMany(specs);
      expect(results.map((r) => (r.ok ? r.vm.vmId : r.vmId))).toEqual(specs.map((s) => s.vmId));
      expect(results.every((r) => r.ok)).toBe(true);
    });

    it('describes many VMs in one call and omits the ones it does not know', async () => {
      const specs = [spec().spec, spec().spec];
      await provider.createMany(specs);
      const ghost: VmRef = { vmId: 'ghost', name: `${shard}-ghost` };
      const vms = (await provider.describe([...specs.map(ref), ghost])).vms;
      expect(vms.map((v) => v.name).sort()).toEqual(specs.map((s) => s.name).sort());
    });

    it('labels every VM with its shard and VM id', async () => {
      const { spec: s } = spec();
      await provider.create(s);
      const [vm] = (await provider.describe([ref(s)])).vms;
      expect(vm?.labels[LABEL_SHARD]).toBe(shard);
      expect(vm?.labels[LABEL_VM]).toBe(s.vmId);
      expect(vm?.vmId).toBe(s.vmId);
    });

    it("lists by labels: only this shard's VMs", async () => {
      const mine = [spec().spec, spec().spec];
      const theirs = spec(otherShard).spec;
      await provider.createMany([...mine, theirs]);
      const listed = (await provider.list({ [LABEL_SHARD]: shard })).vms;
      expect(listed.map((v) => v.vmId).sort()).toEqual(mine.map((s) => s.vmId).sort());
      expect((await provider.list({ [LABEL_SHARD]: otherShard })).vms.map((v) => v.vmId)).toEqual([theirs.vmId]);
    });

    it('lists only the job VMs it owns, never a resource of the shard without its VM label', async () => {
      const mine = spec().spec;
      const other = spec().spec;
      const foreign: VmSpec = { ...other, name: `bastion-${other.vmId}`, labels: { [LABEL_SHARD]: shard, ...(env.foreignLabels ?? {}) } };
      await provider.create(mine);
      await provider.create(foreign);
      const listed = (await provider.list({ [LABEL_SHARD]: shard })).vms.map((v) => v.name);
      expect(listed).toContain(mine.name);
      expect(listed).not.toContain(foreign.name);
    });

    it('never reports a VM gone from a partial answer: a zone that did not answer is unknown', async (ctx) => {
      if (!env.partial) return ctx.skip();
      const { spec: s } = spec();
      const vm = await provider.create(s);
      const restore = env.partial(vm.zone!);
      try {
        for (const listing of [await provider.list({ [LABEL_SHARD]: shard }), await provider.describe([ref(s)])]) {
          expect(listing.vms.map((v) => v.name)).not.toContain(s.name);
          expect(listing.unreachable).not.toEqual([]);
          expect(absentFrom(listing, { vmId: s.vmId, name: s.name, zone: vm.zone ?? null })).toBe(false);
          expect(absentFrom(listing, { vmId: s.vmId, name: s.name })).toBe(false); // zone unknown: unknown
        }
      } finally {
        restore();
      }
    });

    it('deletes, and deleting again (or a VM that never existed) is fine', async () => {
      const { spec: s } = spec();
      await provider.create(s);
      await provider.delete([ref(s)]);
      await provider.delete([ref(s), { vmId: 'never', name: `${shard}-never` }]);
      const left = (await provider.describe([ref(s)])).vms;
      expect(left.filter((v) => v.state !== 'terminated')).toEqual([]);
    });

    it('gives connect info that reaches a running VM over SSH', async (ctx) => {
      if (env.reachable === false) return ctx.skip();
      const t = spec();
      await provider.create(t.spec);
      const vm = await waitRunning(provider, t.spec);
      const info = provider.connectInfo(vm, t.keys.privateKey);
      const session = await waitForSsh(info, { deadlineMs: Date.now() + 20_000 });
      try {
        let out = '';
        const r = await session.exec('echo hello', { onData: (c) => (out += c.toString()) });
        expect(r.exitCode).toBe(0);
        expect(out).toBe('hello\n');
        expect((await session.exec('exit 3')).exitCode).toBe(3);
      } finally {
        session.close();
      }
      // The address the provider reports is the one connect info uses.
      expect(info.host).toBe(vm.internalIp);
      await expect(connectSsh({ ...info, privateKey: undefined, password: 'x' }, { timeoutMs: 5000 })).rejects.toThrow();
    });
  });
}
