import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connectSsh, waitForSsh } from '../../src/connect/ssh.js';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { createLogger } from '../../src/isolation/redact.js';
import { parseLocalConfig } from '../../src/providers/local/config.js';
import { LocalProvider } from '../../src/providers/local/provider.js';
import '../../src/providers/local/index.js';
import { loopbackAddress, isAlive } from '../../src/providers/local/layout.js';
import { providerFactory } from '../../src/providers/provider.js';
import { providerContract } from './contract.js';
import { localFixture, makeSpec, waitRunning, type LocalFixture } from './local-fixture.js';

providerContract('local', async () => {
  const fx = localFixture();
  return {
    provider: fx.provider,
    cleanup: fx.cleanup,
    restart: async () => new LocalProvider(parseLocalConfig({}), { shard: fx.shard, dataDir: fx.dataDir, log: createLogger({ level: 'silent' }) }),
    badSpec: (spec) => ({ ...spec, machine: { bootDelay: 'soon' } }),
  };
});

const deadline = () => Date.now() + 15_000;

async function until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('local provider', () => {
  const fixtures: LocalFixture[] = [];
  const fixture = (config: Record<string, unknown> = {}) => {
    const fx = localFixture(config);
    fixtures.push(fx);
    return fx;
  };
  afterEach(async () => {
    for (const fx of fixtures.splice(0)) await fx.cleanup();
  });

  it('is registered under "local" and validates its config with field paths', async () => {
    expect(providerFactory('local')).toBeTypeOf('function');
    expect(parseLocalConfig({ bootDelay: '2s' }).bootDelayMs).toBe(2000);
    expect(parseLocalConfig({ bootDelay: '500ms', dir: '/x' })).toEqual({ bootDelayMs: 500, dir: '/x' });
    expect(parseLocalConfig({ bootDelayMs: 250 }).bootDelayMs).toBe(250);
    expect(parseLocalConfig(undefined).bootDelayMs).toBe(0);
    expect(() => parseLocalConfig({ bootDelay: 'soon' })).toThrow(/providers\.local\.bootDelay/);
    expect(() => parseLocalConfig({ bootDelayMs: -1 })).toThrow(/providers\.local\.bootDelayMs/);
    expect(() => parseLocalConfig({ dir: 3 })).toThrow(/providers\.local\.dir/);
    expect(() => parseLocalConfig({ bootDelai: '1s' })).toThrow(/providers\.local\.bootDelai/);
  });

  it('serves each VM on its own loopback address, never 127.0.0.1', async () => {
    const fx = fixture();
    const a = await fx.startVm();
    expect(a.vm.internalIp).toBe(loopbackAddress(a.spec.name));
    expect(a.vm.internalIp).toMatch(/^127\.(?!0\.)\d+\.\d+\.\d+$/);
    const names = Array.from({ length: 200 }, (_, i) => loopbackAddress(`vm-${i}`));
    expect(names).not.toContain('127.0.0.1');
  });

  it("accepts only the VM's own key for user runner", async () => {
    const fx = fixture();
    const { info } = await fx.startVm();
    const other = generateVmKeyPair('intruder');
    await expect(connectSsh({ ...info, privateKey: other.privateKey }, { timeoutMs: 5000 })).rejects.toThrow(/authentication rejected/);
    await expect(connectSsh({ ...info, username: 'root' }, { timeoutMs: 5000 })).rejects.toThrow(/authentication rejected/);
    await expect(connectSsh({ ...info, privateKey: undefined, password: 'runner' }, { timeoutMs: 5000 })).rejects.toThrow(/authentication rejected/);
    const ok = await connectSsh(info, { timeoutMs: 5000 });
    ok.close();
  });

  it('runs commands in the sandbox home with HOME and TMPDIR inside the VM', async () => {
    const fx = fixture();
    const { info, spec } = await fx.startVm();
    const s = await connectSsh(info);
    try {
      let out = '';
      await s.exec('pwd; echo "$HOME"; echo "$TMPDIR"; echo "${RUNNER_FLEET_SECRET:-unset}"', { onData: (c) => (out += c) });
      const dir = join(fx.provider.root, spec.name);
      expect(out.trim().split('\n')).toEqual([join(dir, 'home'), join(dir, 'home'), join(dir, 'tmp'), 'unset']);
    } finally {
      s.close();
    }
  });

  it('respects the boot delay: pending first, running once it listens; a class can override it', async () => {
    // Wide margins: a loaded machine starts even an undelayed sandbox slowly.
    const fx = fixture({ bootDelay: '3s' });
    const t = makeSpec(fx.shard);
    const started = Date.now();
    await fx.provider.create(t.spec);
    expect(Date.now() - started).toBeLessThan(1000); // create does not wait for boot
    const [first] = (await fx.provider.describe([t.spec])).vms;
    expect(first?.state).toBe('pending');
    expect(first?.internalIp).toBeUndefined();
    expect(() => fx.provider.connectInfo({ ...t.spec, internalIp: 'x' }, t.keys.privateKey)).toThrow(/not listening yet/);
    await waitRunning(fx.provider, t.spec);
    expect(Date.now() - started).toBeGreaterThanOrEqual(2900);

    const fast = makeSpec(fx.shard, { bootDelayMs: 0 });
    const t0 = Date.now();
    await fx.provider.create(fast.spec);
    await waitRunning(fx.provider, fast.spec);
    expect(Date.now() - t0).toBeLessThan(2900);
  });

  it('keeps the sandbox running after the process that created it is SIGKILLed', async () => {
    const fx = fixture();
    const t = makeSpec(fx.shard);
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/providers/fixtures/create-vm.ts', fx.dataDir, JSON.stringify(t.spec)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (c) => String(c).includes('created') && resolve());
        child.once('exit', (code) => reject(new Error(`creator exited early (${code})`)));
      });
    } finally {
      child.kill('SIGKILL');
    }
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)));

    const vm = await waitRunning(fx.provider, t.spec);
    expect((await fx.provider.list({ [`runner-fleet-vm`]: t.spec.vmId })).vms.map((v) => v.state)).toEqual(['running']);
    const s = await waitForSsh(fx.provider.connectInfo(vm, t.keys.privateKey), { deadlineMs: deadline() });
    let out = '';
    await s.exec('echo alive', { onData: (c) => (out += c) });
    s.close();
    expect(out).toBe('alive\n');
  });

  it('delete kills the sandbox and the commands it runs, and removes its directory', async () => {
    const fx = fixture();
    const { info, spec } = await fx.startVm();
    const dir = join(fx.provider.root, spec.name);
    const pid = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')).pid as number;
    const s = await connectSsh(info);
    const closed = new Promise((r) => s.once('close', r));
    const running = s.exec('sleep 45.678');
    running.catch(() => {});
    await until(() => readdirSync(join(dir, 'procs')).length > 0, 5000, 'the command to start');
    const pgid = Number(readdirSync(join(dir, 'procs'))[0]);
    expect(isAlive(pid)).toBe(true);
    expect(isAlive(pgid)).toBe(true);

    await fx.provider.delete([spec]);
    await until(() => !isAlive(pid) && !isAlive(pgid), 15_000, 'sandbox and command to die');
    expect(existsSync(dir)).toBe(false);
    expect((await fx.provider.describe([spec])).vms).toEqual([]);
    // The session notices: no hang.
    await expect(running).rejects.toThrow(/closed/);
    await closed;
  });

  it('reports a sandbox whose process died as terminated', async () => {
    const fx = fixture();
    const { spec } = await fx.startVm();
    const pid = JSON.parse(readFileSync(join(fx.provider.root, spec.name, 'state.json'), 'utf8')).pid as number;
    process.kill(pid, 'SIGKILL');
    await until(() => !isAlive(pid), 5000, 'sandbox to die');
    const [vm] = (await fx.provider.describe([spec])).vms;
    expect(vm?.state).toBe('terminated');
    expect(vm?.internalIp).toBeUndefined();
  });

  it('a sandbox whose directory is removed behind its back exits (no leaked processes)', async () => {
    const fx = fixture();
    const { spec } = await fx.startVm();
    const dir = join(fx.provider.root, spec.name);
    const pid = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')).pid as number;
    rmSync(dir, { recursive: true, force: true });
    await until(() => !isAlive(pid), 5000, 'orphaned sandbox to exit');
  });

  it('refuses to reuse a name for another VM id', async () => {
    const fx = fixture();
    const a = makeSpec(fx.shard);
    await fx.provider.create(a.spec);
    await expect(fx.provider.create({ ...a.spec, vmId: 'other' })).rejects.toThrow(/taken by VM/);
  });
});
