// What every provider must do (docs/architecture.md "Provider contract": one suite, run by each provider's test file).
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, waitForSsh } from '../../src/connect/ssh.js';
import { LABEL_SHARD, LABEL_VM, ProviderError, absentFrom, type CloudVmState, type Provider, type ProviderErrorKind, type VmRef, type VmSpec } from '../../src/providers/provider.js';
import { makeSpec, waitRunning } from './local-fixture.js';

export interface ContractSetup {
  provider: Provider;
  cleanup(): Promise<void>;
  /** Machine profile for the specs (zones, machine type... whatever the provider needs). */
  machine?: Record<string, unknown>;
  /**
   * A provider of another shard over the same cloud, for VMs of `shard` (the caller closes it).
   * Default: this provider, for clouds where one client sees every shard.
   */
  otherShard?(shard: string): Promise<Provider>;
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
  /**
   * A second provider over the same cloud and persisted state, as a restarted manager makes it
   * (the caller closes it). Creates across the restart must stay idempotent.
   */
  restart(): Promise<Provider>;
  /**
   * Makes the cloud act on mutating calls but lose every answer (the connection drops after the
   * cloud acted) until the returned function is called; absent where no cloud API is in the way.
   */
  loseAnswers?(): () => void;
  /**
   * Ways to make a create meet a cloud failure, by the failure: each returns the spec to create
   * (the given one, or one changed to hit the failure) and how to end the failure. A failure a
   * provider's cloud cannot have is absent, and its test is skipped naming it.
   */
  failures?: Partial<Record<CloudFailure, (spec: VmSpec) => { spec: VmSpec; restore(): void }>>;
  /** The spec changed so the provider cannot accept it (a machine profile it refuses): `fatal`. */
  badSpec(spec: VmSpec): VmSpec;
  /** How long a VM may take to reach a state (stop, start, suspend); default 30 s. */
  stateTimeoutMs?: number;
}

/** Cloud failures a create can meet, and the ProviderError kinds each must come out as. */
export type CloudFailure = 'transient' | 'stockout' | 'quota';
// Stockout last: a provider avoids a stocked-out zone for a while (its cooldown), so nothing after
// it in this provider's life could place a VM there.
const KINDS: Record<CloudFailure, ProviderErrorKind[]> = { transient: ['retryable', 'rateLimited'], quota: ['quota'], stockout: ['stockout'] };

const ref = (s: VmSpec): VmRef => ({ vmId: s.vmId, name: s.name });

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(() => new Error('expected a rejection, got an answer'), (err: unknown) => err);
}

/** `setup` gets the shard the suite's VMs belong to, for providers bound to one shard (mac). */
export function providerContract(name: string, setup: (shard: string) => Promise<ContractSetup>): void {
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
      env = await setup(shard);
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
      // Both made (else the answer below is about the create, and says so).
      expect((await provider.createMany(specs)).map((r) => (r.ok ? 'ok' : `${r.vmId}: ${r.error.kind} ${r.error.message}`))).toEqual(['ok', 'ok']);
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
      const other = env.otherShard ? await env.otherShard(otherShard) : provider;
      try {
        if (other === provider) await provider.createMany([...mine, theirs]);
        else await Promise.all([provider.createMany(mine), other.create(theirs)]);
        const listed = (await provider.list({ [LABEL_SHARD]: shard })).vms;
        expect(listed.map((v) => v.vmId).sort()).toEqual(mine.map((s) => s.vmId).sort());
        expect((await other.list({ [LABEL_SHARD]: otherShard })).vms.map((v) => v.vmId)).toEqual([theirs.vmId]);
      } finally {
        if (other !== provider) {
          await other.delete([ref(theirs)]);
          await other.close();
        }
      }
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

    it('creates idempotently across a restart: the same spec after a lost answer is the same VM', async () => {
      // VMs before it, so that a provider placing VMs by load (spreading or packing, two to a
      // Mac host) puts this one elsewhere than a fresh provider that knows no load would.
      await provider.createMany([spec().spec, spec().spec]);
      const { spec: s } = spec();
      const restore = env.loseAnswers?.();
      let first: string | undefined;
      try {
        // With answers lost the create fails (the cloud acted); without, its answer is ignored.
        first = await provider.create(s).then((vm) => vm.cloudId, () => undefined);
      } finally {
        restore?.();
      }
      if (env.loseAnswers) expect(first).toBeUndefined();
      const again = await env.restart();
      try {
        const vm = await again.create(s);
        if (first) expect(vm.cloudId).toBe(first);
        const listed = (await again.list({ [LABEL_VM]: s.vmId })).vms;
        expect(listed.map((v) => v.cloudId)).toEqual([vm.cloudId]);
        expect((await provider.list({ [LABEL_VM]: s.vmId })).vms.map((v) => v.cloudId)).toEqual([vm.cloudId]);
      } finally {
        await again.close();
      }
    });

    /** Polls describe until the VM is in `state` (and, when running, has its address). */
    async function until(s: VmSpec, state: CloudVmState): Promise<void> {
      const end = Date.now() + (env.stateTimeoutMs ?? 30_000);
      for (;;) {
        const [vm] = (await provider.describe([ref(s)])).vms;
        if (vm?.state === state && (state !== 'running' || vm.internalIp)) return;
        if (Date.now() > end) throw new Error(`${s.name} not ${state} (last: ${vm?.state ?? 'absent'})`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }

    it('stops and starts a VM where it declares capabilities.stopStart', async (ctx) => {
      if (!provider.capabilities.stopStart) return ctx.skip(`${name} does not declare capabilities.stopStart`);
      const { spec: s } = spec();
      await provider.create(s);
      await until(s, 'running');
      await provider.stop!([ref(s)]);
      await until(s, 'stopped');
      await provider.stop!([ref(s)]); // stopping a stopped VM is fine
      await provider.start!([ref(s)]);
      await until(s, 'running');
    });

    it('stops or starts a VM that does not exist as notFound or nothing, and makes none', async (ctx) => {
      if (!provider.capabilities.stopStart) return ctx.skip(`${name} does not declare capabilities.stopStart`);
      const ghost = spec().spec;
      for (const op of [provider.stop!, provider.start!]) {
        const err = await op.call(provider, [ref(ghost)]).then(() => undefined, (e: unknown) => e);
        if (err !== undefined) {
          expect(err).toBeInstanceOf(ProviderError);
          expect((err as ProviderError).kind).toBe('notFound');
        }
      }
      expect((await provider.describe([ref(ghost)])).vms).toEqual([]);
    });

    it('suspends and resumes a VM where it declares capabilities.suspend', async (ctx) => {
      if (!provider.capabilities.suspend) return ctx.skip(`${name} does not declare capabilities.suspend`);
      const { spec: s } = spec();
      await provider.create(s);
      await until(s, 'running');
      await provider.suspend!([ref(s)]);
      await until(s, 'stopped');
      await provider.start!([ref(s)]);
      await until(s, 'running');
    });

    for (const failure of Object.keys(KINDS) as CloudFailure[]) {
      it(`reports a ${failure} cloud failure as ${KINDS[failure].join(' or ')}, and makes no VM`, async (ctx) => {
        const fault = env.failures?.[failure];
        if (!fault) return ctx.skip(`${name} has no ${failure} failure to meet`);
        const { spec: s } = spec();
        const f = fault(s);
        let err: unknown;
        try {
          err = await rejection(provider.create(f.spec));
        } finally {
          f.restore();
        }
        expect(err).toBeInstanceOf(ProviderError);
        expect(KINDS[failure]).toContain((err as ProviderError).kind);
        expect((await provider.list({ [LABEL_VM]: f.spec.vmId })).vms.filter((v) => v.state !== 'terminated')).toEqual([]);
        if (failure === 'stockout') return; // the zones cool down first
        // Once the cloud recovers, so does the provider.
        const [r] = await provider.createMany([spec().spec]);
        expect(r).toMatchObject({ ok: true });
      });
    }

    it('refuses a spec it cannot make as fatal, in create and in createMany', async () => {
      const bad = env.badSpec(spec().spec);
      const err = await rejection(provider.create(bad));
      expect(err).toBeInstanceOf(ProviderError);
      expect((err as ProviderError).kind).toBe('fatal');
      const [r] = await provider.createMany([bad]);
      expect(r).toMatchObject({ ok: false, vmId: bad.vmId, error: { kind: 'fatal' } });
    });
  });
}
