// Nested macOS VMs with Tart on a Mac host, over real SSH: the host is a local-provider sandbox
// whose `tart` is a test double (test/fixtures/tart/tart-double.ts) that behaves like Tart and
// starts each nested VM as an SSH server on its own loopback address.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, type SshSession } from '../../src/connect/ssh.js';
import { createLogger } from '../../src/isolation/redact.js';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { LocalProvider } from '../../src/providers/local/provider.js';
import { TartCapacityError, TartClient, TartError, tartCommands } from '../../src/providers/mac/tart.js';
import type { ConnectInfo } from '../../src/providers/provider.js';
import { installTartDouble, NESTED_SSH_PORT as PORT } from '../fixtures/tart/install.js';
import { makeSpec, waitRunning } from './local-fixture.js';

describe('Tart on a Mac host (test double over real SSH)', () => {
  let dataDir: string;
  let hosts: LocalProvider;
  let hostInfo: ConnectInfo;
  let session: SshSession;
  let tart: TartClient;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-tart-'));
    const { bin } = installTartDouble(dataDir, ['macos-sequoia-base']);
    hosts = new LocalProvider({ bootDelayMs: 0, dir: join(dataDir, 'hosts'), extraPathDir: bin }, { shard: 'mac', dataDir, log: createLogger({ level: 'silent' }) });
    const h = makeSpec('mac');
    await hosts.create(h.spec);
    hostInfo = hosts.connectInfo(await waitRunning(hosts, h.spec), h.keys.privateKey);
    session = await connectSsh(hostInfo, { timeoutMs: 10_000 });
    tart = new TartClient(session, { timeoutMs: 30_000 });
  });

  afterAll(async () => {
    session?.close();
    const all = (await hosts?.list({}))?.vms ?? [];
    await hosts?.delete(all.map((v) => ({ vmId: v.name, name: v.name })));
    rmSync(dataDir, { recursive: true, force: true });
  });

  const nested = (ip: string, privateKey: string): ConnectInfo => ({ protocol: 'ssh', os: 'macos', host: ip, port: PORT, username: 'runner', privateKey, jump: hostInfo });
  async function echo(info: ConnectInfo): Promise<string> {
    const s = await connectSsh(info, { timeoutMs: 10_000 });
    let out = '';
    try {
      await s.exec('echo nested-$((6*7))', { onData: (c) => void (out += String(c)) });
    } finally {
      s.close();
    }
    return out.trim();
  }

  it('clones, runs, finds and reaches a fresh VM through the host with its own key only; at most two run', async () => {
    const a = generateVmKeyPair('rf-mac-a');
    const b = generateVmKeyPair('rf-mac-b');
    for (const [name, k] of [['rf-mac-a', a], ['rf-mac-b', b]] as const) {
      await tart.clone('macos-sequoia-base', name);
      await tart.installKey(name, k.publicKey);
      await tart.start(name);
    }
    const ipA = await tart.ip('rf-mac-a', 30);
    expect(await echo(nested(ipA, a.privateKey))).toBe('nested-42');
    await expect(echo(nested(ipA, b.privateKey))).rejects.toThrow(); // another VM's key opens nothing
    expect((await tart.list()).filter((v) => v.running).map((v) => v.name).sort()).toEqual(['rf-mac-a', 'rf-mac-b']);

    // Apple's licence, enforced by Tart: a third running VM is refused.
    const c = generateVmKeyPair('rf-mac-c');
    await tart.clone('macos-sequoia-base', 'rf-mac-c');
    await tart.installKey('rf-mac-c', c.publicKey);
    await expect(tart.start('rf-mac-c')).rejects.toBeInstanceOf(TartCapacityError);

    // After a job: the VM is deleted, gone from the list, unreachable; its slot frees up.
    await tart.delete('rf-mac-a');
    expect((await tart.list()).map((v) => v.name)).not.toContain('rf-mac-a');
    await expect(echo(nested(ipA, a.privateKey))).rejects.toThrow();
    await tart.delete('rf-mac-a'); // already gone: fine
    await tart.start('rf-mac-c');
    expect(await echo(nested(await tart.ip('rf-mac-c', 30), c.privateKey))).toBe('nested-42');
    await tart.delete('rf-mac-b');
    await tart.delete('rf-mac-c');
    expect(await tart.list()).toEqual([]);
  });

  it('names what failed, and refuses names and images that are not plain', async () => {
    await expect(tart.clone('no-such-image', 'rf-mac-x')).rejects.toThrow(/tart clone no-such-image rf-mac-x failed \(exit 1\): Error: the specified VM "no-such-image" does not exist/);
    expect(() => tartCommands.clone('img', 'a; rm -rf /')).toThrow(TartError);
    expect(() => tartCommands.clone('$(reboot)', 'ok')).toThrow(TartError);
  });
});

describe('tart run on a host whose shell is bash', () => {
  let dataDir: string;
  let hosts: LocalProvider;
  let session: SshSession;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-tart-bash-'));
    const { bin } = installTartDouble(dataDir, ['macos-sequoia-base']);
    hosts = new LocalProvider({ bootDelayMs: 0, dir: join(dataDir, 'hosts'), extraPathDir: bin }, { shard: 'mac', dataDir, log: createLogger({ level: 'silent' }) });
    const h = makeSpec('mac');
    await hosts.create(h.spec);
    // The host sandbox runs every command with `bash -c`, as sshd does for a user whose login shell is bash.
    session = await connectSsh(hosts.connectInfo(await waitRunning(hosts, h.spec), h.keys.privateKey), { timeoutMs: 10_000 });
  });
  afterAll(async () => {
    session?.close();
    const all = (await hosts?.list({}))?.vms ?? [];
    await hosts?.delete(all.map((v) => ({ vmId: v.name, name: v.name })));
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function prepare(name: string): Promise<void> {
    const tart = new TartClient(session, { timeoutMs: 30_000 });
    await tart.clone('macos-sequoia-base', name);
    await tart.installKey(name, generateVmKeyPair(name).publicKey);
  }

  it('returns from starting a nested VM while `tart run` keeps running (the SSH exec does not hang)', async () => {
    await prepare('rf-bash-a');
    const tart = new TartClient(session, { timeoutMs: 10_000 });
    const started = Date.now();
    await tart.start('rf-bash-a');
    expect(Date.now() - started).toBeLessThan(8_000);
    expect((await tart.list()).find((v) => v.name === 'rf-bash-a')?.running).toBe(true);
    await tart.delete('rf-bash-a');
  });

  it('waits for a VM that `tart run` starts late (a busy host), and still answers a run that failed', async () => {
    await prepare('rf-slow-a');
    await session.exec('mkdir -p "$HOME"/.tart && echo 2500 > "$HOME"/.tart/run-delay-ms');
    try {
      const tart = new TartClient(session, { timeoutMs: 10_000 });
      await tart.start('rf-slow-a');
      expect((await tart.list()).find((v) => v.name === 'rf-slow-a')?.running).toBe(true);
      await tart.delete('rf-slow-a');
      // A VM never prepared: the launch fails at once, and says why; no waiting for it.
      const started = Date.now();
      await expect(tart.start('rf-never-cloned')).rejects.toThrow(/did not start: .*No such file/);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await session.exec('rm -f "$HOME"/.tart/run-delay-ms');
    }
  });

  it('gives up on a VM not running within the wait, and ends its pending `tart run` so it never starts after', async () => {
    await prepare('rf-slow-b');
    await session.exec('mkdir -p "$HOME"/.tart && echo 4000 > "$HOME"/.tart/run-delay-ms');
    try {
      const tart = new TartClient(session, { timeoutMs: 10_000 });
      await expect(tart.start('rf-slow-b', 800)).rejects.toThrow(/did not start within 800 ms/);
      // Past the run's delay, the VM it was asked for is still not running.
      await new Promise((r) => setTimeout(r, 5_000));
      expect((await tart.list()).find((v) => v.name === 'rf-slow-b')?.running).toBe(false);
      await tart.delete('rf-slow-b');
    } finally {
      await session.exec('rm -f "$HOME"/.tart/run-delay-ms');
    }
  });

  it('the old form, backgrounding `cd && nohup tart run`, holds the exec open for as long as the VM runs', async () => {
    await prepare('rf-bash-b');
    const legacy = tartCommands.run('rf-bash-b').replace('cd "$HOME" || exit 1; nohup', 'cd "$HOME" && nohup').replace(' < /dev/null > ', ' > ').replace(' 2>&1 &', ' 2>&1 < /dev/null &');
    expect(legacy).toContain('cd "$HOME" && nohup tart run');
    await expect(session.exec(legacy, { signal: AbortSignal.timeout(4_000) })).rejects.toThrow();
    await new TartClient(session, { timeoutMs: 30_000 }).delete('rf-bash-b');
  });
});
