// The "VM" of the local provider: a detached process serving SSH on its own loopback address.
// Usage: node sandbox.js <sandbox dir>. It outlives the manager that started it, like a cloud VM,
// and exits when its directory disappears or its max run duration passes.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, watch, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import ssh2, { type Connection, type ParsedKey, type ServerChannel } from 'ssh2';
import { generateVmKeyPair } from '../../isolation/keys.js';
import { files, readJson, writeJsonAtomic, type SandboxSpec, type SandboxState } from './layout.js';

const { Server, utils } = ssh2;

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: sandbox <dir>\n');
  process.exit(2);
}
const f = files(dir);
const spec = readJson<SandboxSpec>(f.spec);
if (!spec) {
  process.stderr.write(`sandbox: no readable ${f.spec}\n`);
  process.exit(2);
}

function log(msg: string): void {
  process.stderr.write(`${new Date().toISOString()} ${msg}\n`);
}

function parsePublicKey(text: string, source: string): ParsedKey {
  const k = utils.parseKey(text);
  if (k instanceof Error) throw new Error(`sandbox: bad public key in ${source}: ${k.message}`);
  return (Array.isArray(k) ? k[0] : k) as ParsedKey;
}

let allowed = { text: spec.publicKey, key: parsePublicKey(spec.publicKey, f.spec) };

/** The key this VM accepts now: a guest agent may have installed another since boot. */
function allowedKey(): ParsedKey {
  let text = spec!.publicKey;
  try {
    text = readFileSync(f.authorizedKey, 'utf8').trim() || text;
  } catch {
    // No agent-installed key: the one the VM was created with.
  }
  if (text !== allowed.text) {
    try {
      allowed = { text, key: parsePublicKey(text, f.authorizedKey) };
    } catch (err) {
      log((err as Error).message);
    }
  }
  return allowed.key;
}

/** Process groups of running commands, so nothing outlives the sandbox or a dropped client. */
const groups = new Set<number>();

function killGroup(pgid: number, sig: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(-pgid, sig);
  } catch {
    // Already gone.
  }
}

function shutdown(why: string): never {
  log(`exiting: ${why}`);
  for (const g of groups) killGroup(g);
  process.exit(0);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

mkdirSync(f.home, { recursive: true });
mkdirSync(f.tmp, { recursive: true });
mkdirSync(f.procs, { recursive: true });

// The directory is the VM's existence (a deleted directory means a deleted VM) and its guest
// agent's mailbox (a host key written later). Watched with inotify, so an idle sandbox costs no
// CPU (a 100 ms poll cost ~0.4% of a core each: 1,000 idle sandboxes starved a 2-core machine);
// the slow poll is a backstop for events a watcher can miss.
const onDirChange = new Set<() => void>();
function dirChanged(): void {
  if (!existsSync(f.spec)) shutdown('sandbox directory removed');
  for (const fn of onDirChange) fn();
}
try {
  watch(dir, { persistent: false }, dirChanged).on('error', () => undefined);
} catch {
  // No inotify (or the directory is already gone): the poll below still notices.
}
setInterval(dirChanged, 10_000).unref();
// Capped: setTimeout fires at once for delays beyond 2^31-1 ms (~24.8 days).
setTimeout(() => shutdown(`max run duration ${spec.maxRunSeconds}s reached`), Math.min(spec.maxRunSeconds * 1000, 2 ** 31 - 1)).unref();

function runExec(command: string, channel: ServerChannel, env: Record<string, string>): ChildProcess {
  const child = spawn('bash', ['-c', command], {
    cwd: f.home,
    env: { PATH: process.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin', LANG: 'C.UTF-8', ...env, HOME: f.home, TMPDIR: f.tmp, USER: spec!.username, LOGNAME: spec!.username },
    // Own process group, so a signal or a disconnect reaches everything the command started.
    detached: true,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const pgid = child.pid;
  if (pgid) {
    groups.add(pgid);
    writeFileSync(join(f.procs, String(pgid)), '');
  }
  const forget = () => {
    if (!pgid) return;
    groups.delete(pgid);
    rmSync(join(f.procs, String(pgid)), { force: true });
  };
  child.stdout!.pipe(channel, { end: false });
  child.stderr!.pipe(channel.stderr, { end: false });
  channel.pipe(child.stdin!);
  child.stdin!.on('error', () => {}); // the command may exit without reading its input
  child.on('error', (err) => {
    forget();
    channel.stderr.write(`sandbox: cannot run command: ${err.message}\n`);
    channel.exit(127);
    channel.end();
  });
  // 'close' (not 'exit'): all output has been read by then.
  child.on('close', (code, signal) => {
    forget();
    // Anything the command left running in its group goes with it, as on a VM session end.
    if (pgid) killGroup(pgid);
    if (signal) {
      try {
        channel.exit(signal.replace(/^SIG/, ''), false, '');
      } catch {
        // ssh2 only sends the standard signal names; report others the way a shell would.
        channel.exit(128 + ((osConstants.signals as Record<string, number>)[signal] ?? 0));
      }
    } else {
      channel.exit(code ?? 255);
    }
    channel.end();
  });
  return child;
}

function onClient(client: Connection): void {
  client.on('error', () => {}); // a client that vanishes is normal
  // As a VM's sshd does: no Nagle delay on small packets (missing from @types/ssh2).
  (client as unknown as { setNoDelay(on: boolean): void }).setNoDelay(true);
  client.on('authentication', (ctx) => {
    if (ctx.method !== 'publickey' || ctx.username !== spec!.username) return ctx.reject(['publickey']);
    const key = allowedKey();
    if (ctx.key.algo !== key.type || !ctx.key.data.equals(key.getPublicSSH())) return ctx.reject(['publickey']);
    // Without a signature the client only asks whether this key would do; with one, prove it.
    if (ctx.signature && !key.verify(ctx.blob!, ctx.signature, ctx.hashAlgo)) return ctx.reject(['publickey']);
    ctx.accept();
  });
  client.on('ready', () => {
    const children = new Set<ChildProcess>();
    client.on('close', () => {
      for (const c of children) if (c.pid) killGroup(c.pid);
    });
    client.on('session', (acceptSession) => {
      const session = acceptSession();
      const env: Record<string, string> = {};
      let child: ChildProcess | undefined;
      session.on('env', (accept, _reject, info) => {
        env[info.key] = info.val;
        accept?.();
      });
      session.on('exec', (accept, _reject, info) => {
        const channel = accept();
        child = runExec(info.command, channel, env);
        children.add(child);
        child.on('close', () => children.delete(child!));
        channel.on('close', () => {
          if (child?.pid && child.exitCode === null && child.signalCode === null) killGroup(child.pid);
        });
      });
      session.on('signal', (accept, _reject, info) => {
        if (child?.pid) killGroup(child.pid, `SIG${info.name.replace(/^SIG/, '')}` as NodeJS.Signals);
        accept?.();
      });
    });
    // Jump-host use: tunnel to other loopback sandboxes only (all traffic stays on 127.0.0.0/8).
    client.on('tcpip', (accept, reject, info) => {
      if (!/^127\./.test(info.destIP) && info.destIP !== 'localhost') return reject?.();
      const sock = connect(info.destPort, info.destIP);
      sock.once('connect', () => {
        const ch = accept();
        ch.pipe(sock).pipe(ch);
        ch.on('close', () => sock.destroy());
        sock.on('close', () => ch.close());
      });
      sock.once('error', () => reject?.());
    });
  });
}

function publicBlob(privateKey: string): Buffer {
  const parsed = utils.parseKey(privateKey);
  if (parsed instanceof Error) throw new Error(`bad host key: ${parsed.message}`);
  return (Array.isArray(parsed) ? parsed[0] : (parsed as ParsedKey)).getPublicSSH();
}

function fingerprintOf(privateKey: string): string {
  return `SHA256:${createHash('sha256').update(publicBlob(privateKey)).digest('base64').replace(/=+$/, '')}`;
}

function agentHostKey(): string | undefined {
  try {
    return readFileSync(f.hostKey, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Serve SSH with `hostKey` on host:port (port 0: any); resolves with the port, retrying a port a closing server still holds. */
function serve(hostKey: string, host: string, port: number): Promise<{ server: InstanceType<typeof Server>; port: number }> {
  return new Promise((resolve) => {
    let tries = 0;
    const attempt = () => {
      const server = new Server({ hostKeys: [hostKey] }, onClient);
      server.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EADDRINUSE' && port !== 0 && ++tries < 50) return void setTimeout(attempt, 20);
        shutdown(`server error: ${err.message}`);
      });
      server.listen(port, host, () => resolve({ server, port: (server.address() as { port: number }).port }));
    };
    attempt();
  });
}

async function main(s: SandboxSpec): Promise<void> {
  if (s.bootDelayMs > 0) await new Promise((r) => setTimeout(r, s.bootDelayMs));
  if (!existsSync(f.spec)) shutdown('deleted while booting');
  // The manager's host key for this VM, as a real VM's boot installs it (or a guest agent later);
  // a fresh one when the manager sent none.
  let hostKey = agentHostKey() ?? s.hostKey ?? generateVmKeyPair(`${s.name}-host`).privateKey;
  let fingerprint = fingerprintOf(hostKey);
  let { server, port } = await serve(hostKey, s.host, s.port);
  const publish = () => {
    const state: SandboxState = { pid: process.pid, host: s.host, port, hostKeyFingerprint: fingerprint, hostPublicKey: `ssh-ed25519 ${publicBlob(hostKey).toString('base64')}`, listeningAt: new Date().toISOString() };
    writeJsonAtomic(f.state, state);
  };
  publish();
  log(`listening on ${s.host}:${port}`);
  // sshd reload: a host key installed after boot replaces the key on the same port; open
  // connections stay on the old server until they end.
  let reloading = false;
  onDirChange.add(() => {
    const next = agentHostKey();
    if (!next || next === hostKey || reloading) return;
    let nextFingerprint: string;
    try {
      nextFingerprint = fingerprintOf(next);
    } catch (err) {
      return log(`${f.hostKey}: ${(err as Error).message}`);
    }
    reloading = true;
    hostKey = next;
    server.close();
    void serve(next, s.host, port).then((r) => {
      server = r.server;
      fingerprint = nextFingerprint;
      publish();
      reloading = false;
      log(`host key reloaded: ${fingerprint}`);
    });
  });
  dirChanged(); // a key written while this server was starting
}

main(spec).catch((err: Error) => shutdown(`failed: ${err.stack ?? err.message}`));
