import { execFileSync } from 'node:child_process';
import { connect as netConnect, createServer, type Server as NetServer, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, HostKeyMismatchError, SshConnectError, waitForSsh, type SshSession } from '../../src/connect/ssh.js';
import { generateVmKeyPair, sshFingerprint } from '../../src/isolation/keys.js';
import type { ConnectInfo } from '../../src/providers/provider.js';
import { localFixture, type LocalFixture } from '../providers/local-fixture.js';

/** Whether any process's command line contains `marker` (exec'd commands are checked for death). */
function processRunning(marker: string): boolean {
  try {
    return execFileSync('pgrep', ['-f', marker]).toString().trim().length > 0;
  } catch {
    return false;
  }
}

async function freePort(host: string): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, host, r));
  const { port } = srv.address() as { port: number };
  await new Promise((r) => srv.close(r));
  return port;
}

describe('SSH sessions against a local sandbox', () => {
  let fx: LocalFixture;
  let info: ConnectInfo;
  let session: SshSession;
  let sandboxDir: string;

  beforeAll(async () => {
    fx = localFixture();
    const vm = await fx.startVm();
    info = vm.info;
    sandboxDir = join(fx.provider.root, vm.spec.name);
    session = await connectSsh(info);
  });
  afterAll(async () => {
    session?.close();
    await fx?.cleanup();
  });

  it('streams stdout and stderr chunks before the command exits', async () => {
    const chunks: { at: number; stream: string; text: string }[] = [];
    const r = await session.exec('echo out; echo err >&2; sleep 0.6; echo done', {
      onData: (c, stream) => chunks.push({ at: Date.now(), stream, text: c.toString() }),
    });
    const end = Date.now();
    expect(r).toEqual({ exitCode: 0 });
    expect(chunks.filter((c) => c.stream === 'stdout').map((c) => c.text).join('')).toBe('out\ndone\n');
    expect(chunks.filter((c) => c.stream === 'stderr').map((c) => c.text).join('')).toBe('err\n');
    expect(end - chunks[0]!.at).toBeGreaterThanOrEqual(400);
  });

  it('reports exit codes and signals', async () => {
    expect(await session.exec('true')).toEqual({ exitCode: 0 });
    expect(await session.exec('exit 42')).toEqual({ exitCode: 42 });
    expect(await session.exec('kill -TERM $$')).toEqual({ exitCode: null, signal: 'TERM' });
  });

  it('feeds stdin and closes it', async () => {
    let out = '';
    const r = await session.exec('tr a-z A-Z', { stdin: 'hello stdin\n', onData: (c) => (out += c) });
    expect(r.exitCode).toBe(0);
    expect(out).toBe('HELLO STDIN\n');
    // Without stdin the command sees EOF at once instead of hanging.
    expect((await session.exec('cat')).exitCode).toBe(0);
  });

  it('runs several commands at once over one connection', async () => {
    const outs = await Promise.all(
      [1, 2, 3].map(async (n) => {
        let o = '';
        await session.exec(`sleep 0.2; echo ${n}`, { onData: (c) => (o += c) });
        return o;
      }),
    );
    expect(outs).toEqual(['1\n', '2\n', '3\n']);
  });

  it('abort kills a long command promptly, with everything it started', async () => {
    const ac = new AbortController();
    const started = Date.now();
    const p = session.exec('sleep 61.2345 & sleep 61.2346; echo never', { signal: ac.signal });
    await new Promise((r) => setTimeout(r, 300));
    expect(processRunning('sleep 61.2346')).toBe(true);
    ac.abort();
    await expect(p).rejects.toThrow(/abort/i);
    expect(Date.now() - started).toBeLessThan(2000);
    const end = Date.now() + 3000;
    while (processRunning('sleep 61.234') && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    expect(processRunning('sleep 61.2345')).toBe(false);
    expect(processRunning('sleep 61.2346')).toBe(false);
    // The connection is still good.
    expect((await session.exec('exit 7')).exitCode).toBe(7);
  });

  it('kills running commands when the client disconnects', async () => {
    const s = await connectSsh(info);
    const p = s.exec('sleep 62.5432');
    p.catch(() => {});
    await new Promise((r) => setTimeout(r, 300));
    expect(processRunning('sleep 62.5432')).toBe(true);
    s.close();
    await expect(p).rejects.toThrow(/closed/);
    const end = Date.now() + 3000;
    while (processRunning('sleep 62.5432') && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    expect(processRunning('sleep 62.5432')).toBe(false);
  });

  it('rejects at once for an already aborted signal and on a closed session', async () => {
    await expect(session.exec('true', { signal: AbortSignal.abort() })).rejects.toThrow();
    const s = await connectSsh(info);
    const closed = new Promise((r) => s.once('close', r));
    s.close();
    await closed;
    expect(s.closed).toBe(true);
    await expect(s.exec('true')).rejects.toThrow(/closed/);
  });

  it('checks the pinned host key fingerprint', async () => {
    const state = JSON.parse(readFileSync(join(sandboxDir, 'state.json'), 'utf8')) as { hostKeyFingerprint: string };
    const ok = await connectSsh({ ...info, hostKeyFingerprint: state.hostKeyFingerprint });
    ok.close();
    const err = await connectSsh({ ...info, hostKeyFingerprint: 'SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HostKeyMismatchError);
    expect((err as HostKeyMismatchError).retryable).toBe(false);
    expect((err as HostKeyMismatchError).got).toBe(state.hostKeyFingerprint);
    // waitForSsh retries a mismatch (a booting VM may not have installed its key yet), then
    // answers with the mismatch, not "unreachable".
    const t0 = Date.now();
    await expect(waitForSsh({ ...info, hostKeyFingerprint: 'SHA256:nope' }, { deadlineMs: Date.now() + 1500 })).rejects.toBeInstanceOf(HostKeyMismatchError);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
  });

  it('answers a wrong host key, not "unreachable", when later attempts only time out', async () => {
    // A proxy: the first connection reaches the sandbox's sshd (the wrong key for the pin), every
    // later one is accepted and never answered, as a VM that stalls, or a loaded manager whose
    // last attempt the deadline cuts to a few ms.
    let n = 0;
    const held: Socket[] = [];
    const proxy = createServer((c) => {
      if (n++ > 0) return void held.push(c);
      const up = netConnect(info.port, info.host);
      c.pipe(up).pipe(c);
      up.on('error', () => c.destroy());
      c.on('error', () => up.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    try {
      const port = (proxy.address() as { port: number }).port;
      const err = await waitForSsh({ ...info, host: '127.0.0.1', port, hostKeyFingerprint: 'SHA256:nope' }, { deadlineMs: Date.now() + 1500, attemptTimeoutMs: 400, intervalMs: 100 }).catch((e: unknown) => e);
      expect(n).toBeGreaterThan(1);
      expect(err).toBeInstanceOf(HostKeyMismatchError);
    } finally {
      held.forEach((c) => c.destroy());
      await new Promise((r) => proxy.close(r));
    }
  });

  it('settles a running command when the connection drops', async () => {
    const extra = await fx.startVm();
    const s = await connectSsh(extra.info, { keepaliveMs: 500 });
    const p = s.exec('sleep 30');
    await new Promise((r) => setTimeout(r, 200));
    const pid = JSON.parse(readFileSync(join(fx.provider.root, extra.spec.name, 'state.json'), 'utf8')).pid as number;
    process.kill(pid, 'SIGKILL');
    await expect(p).rejects.toThrow(/closed/);
    expect(s.closed).toBe(true);
  });

  it('reaches a VM through a jump host', async () => {
    const target = await fx.startVm();
    const jump = await fx.startVm();
    const s = await connectSsh({ ...target.info, jump: jump.info });
    try {
      let out = '';
      const r = await s.exec('echo via-jump; exit 5', { onData: (c) => (out += c) });
      expect(r.exitCode).toBe(5);
      expect(out).toBe('via-jump\n');
    } finally {
      s.close();
    }
    // A bad key for the target fails cleanly (and closes the jump connection).
    const bad = generateVmKeyPair('bad');
    await expect(connectSsh({ ...target.info, privateKey: bad.privateKey, jump: jump.info }, { timeoutMs: 5000 })).rejects.toThrow(/authentication rejected/);
  });
});

describe('waitForSsh', () => {
  const host = '127.77.0.9';
  const keys = generateVmKeyPair('client');
  const hostKey = generateVmKeyPair('host');
  const servers: (NetServer | InstanceType<typeof ssh2.Server>)[] = [];
  afterAll(async () => {
    for (const s of servers) s.close();
  });

  function sshServer(): InstanceType<typeof ssh2.Server> {
    const srv = new ssh2.Server({ hostKeys: [hostKey.privateKey] }, (client) => {
      client.on('error', () => {});
      client.on('authentication', (ctx) => (ctx.method === 'publickey' ? ctx.accept() : ctx.reject(['publickey'])));
      client.on('ready', () =>
        client.on('session', (accept) =>
          accept().on('exec', (acc) => {
            const ch = acc();
            ch.write('up\n');
            ch.exit(0);
            ch.end();
          }),
        ),
      );
    });
    servers.push(srv);
    return srv;
  }

  it('retries through refused connections and broken handshakes until the server is up', async () => {
    const port = await freePort(host);
    const info: ConnectInfo = { protocol: 'ssh', os: 'linux', host, port, username: 'runner', privateKey: keys.privateKey };
    const t0 = Date.now();
    // 0-600 ms: nothing listens (ECONNREFUSED); 600-1200 ms: a port that hangs up (handshake error); then SSH.
    const timers = [
      setTimeout(() => {
        const rude = createServer((sock) => sock.destroy());
        servers.push(rude);
        rude.listen(port, host);
        setTimeout(() => rude.close(() => sshServer().listen(port, host)), 600);
      }, 600),
    ];
    try {
      const s = await waitForSsh(info, { deadlineMs: Date.now() + 10_000, intervalMs: 200 });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1100);
      let out = '';
      expect((await s.exec('x', { onData: (c) => (out += c) })).exitCode).toBe(0);
      expect(out).toBe('up\n');
      s.close();
    } finally {
      timers.forEach(clearTimeout);
    }
  });

  it('gives up at the deadline with a clear error', async () => {
    const port = await freePort(host);
    const info: ConnectInfo = { protocol: 'ssh', os: 'linux', host, port, username: 'runner', privateKey: keys.privateKey };
    const t0 = Date.now();
    const err = (await waitForSsh(info, { deadlineMs: Date.now() + 1000, intervalMs: 200 }).catch((e: unknown) => e)) as Error;
    const took = Date.now() - t0;
    expect(err.message).toMatch(new RegExp(`runner@${host.replace(/\./g, '\\.')}:${port} not reachable within .* attempts\\); last error: .*ECONNREFUSED`));
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(2000);
  });

  it('stops waiting when aborted', async () => {
    const port = await freePort(host);
    const info: ConnectInfo = { protocol: 'ssh', os: 'linux', host, port, username: 'runner', privateKey: keys.privateKey };
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    const t0 = Date.now();
    await expect(waitForSsh(info, { deadlineMs: Date.now() + 10_000, signal: ac.signal })).rejects.toThrow();
    expect(Date.now() - t0).toBeLessThan(1500);
  });

  it('times out a connect to a port that accepts but never speaks SSH', async () => {
    const silent = createServer(() => {});
    servers.push(silent);
    await new Promise<void>((r) => silent.listen(0, host, r));
    const { port } = silent.address() as { port: number };
    const t0 = Date.now();
    await expect(connectSsh({ protocol: 'ssh', os: 'linux', host, port, username: 'runner', privateKey: keys.privateKey }, { timeoutMs: 500 })).rejects.toThrow(/timed out/);
    expect(Date.now() - t0).toBeLessThan(1500);
  });
});

describe('pinned host keys', () => {
  it('sends no credential to a server with another host key, and logs in to the pinned one', async () => {
    const hostKey = generateVmKeyPair('srv');
    const auths: string[] = [];
    const server = new ssh2.Server({ hostKeys: [hostKey.privateKey] }, (c) => {
      c.on('error', () => {});
      c.on('authentication', (ctx) => {
        auths.push(ctx.method);
        ctx.accept();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as { port: number };
    try {
      const base: ConnectInfo = { protocol: 'ssh', os: 'linux', host: '127.0.0.1', port, username: 'u', privateKey: generateVmKeyPair('client').privateKey };
      const other = sshFingerprint(generateVmKeyPair('other').publicKey);
      const err = await connectSsh({ ...base, hostKeyFingerprint: other }, { timeoutMs: 5000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HostKeyMismatchError);
      expect(err).toMatchObject({ expected: other, got: sshFingerprint(hostKey.publicKey), retryable: false });
      expect(auths).toEqual([]);
      // A pinned jump host with another key: the target behind it is never asked for either.
      const viaJump = await connectSsh({ ...base, host: '127.0.0.2', jump: { ...base, hostKeyFingerprint: other } }, { timeoutMs: 5000 }).catch((e: unknown) => e);
      expect(viaJump).toBeInstanceOf(HostKeyMismatchError);
      expect(auths).toEqual([]);
      const ok = await connectSsh({ ...base, hostKeyFingerprint: sshFingerprint(hostKey.publicKey) }, { timeoutMs: 5000 });
      ok.close();
      expect(auths.length).toBeGreaterThan(0);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
