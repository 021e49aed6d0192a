// Bench-only VMs for the GCE emulator: each VM is a real OpenSSH sshd on its own loopback address
// (the local provider's address scheme and state.json, so the connect overrides still find it),
// instead of a Node sandbox. An sshd starts in a few ms of CPU where a sandbox took ~0.25 s, so
// 1,000 VMs no longer starve the manager they stand for. Needs root, /usr/sbin/sshd and a system
// user (ensurePeerUser). Every process of a VM (its sshd, the sessions, what the jobs start with
// setsid) is tracked by a per-VM cgroup (v2, or v1's freezer), or, with neither, by an environment
// marker in /proc; delete kills them all. Nothing in src/ may import this.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { setPriority, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import ssh2, { type ParsedKey } from 'ssh2';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { files, loopbackAddress, writeJsonAtomic, type SandboxState } from '../../src/providers/local/layout.js';
import { LABEL_VM, ProviderError, type CloudListing, type CloudVm, type ConnectInfo, type CreatedVm, type VmRef, type VmSpec } from '../../src/providers/provider.js';

export const SSHD = '/usr/sbin/sshd';

export interface SshdPeersOptions {
  /** Where each VM's directory (config, host key, state.json) goes: the emulator's `gce-vms`. */
  root: string;
  /** The one account the VMs accept (must exist: ensurePeerUser). */
  user: string;
  nice?: number;
  /** A `cgroup.procs` file every sshd joins (the bench's lowest-weight CPU group). */
  cgroupProcs?: string;
  /** Put first on the sessions' PATH. */
  extraPathDir?: string;
}

/** Creates the VMs' system account if missing: bash shell, locked with `*` (sshd with UsePAM no refuses `!`). */
export function ensurePeerUser(user: string): void {
  if (spawnSync('id', ['-u', user]).status !== 0) {
    const r = spawnSync('useradd', ['--system', '--shell', '/bin/bash', '--home-dir', `/var/lib/rf-gce-peer-${user}`, '--create-home', user], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`useradd ${user}: ${r.stderr || r.error?.message}`);
  }
  const r = spawnSync('usermod', ['-p', '*', user], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`usermod -p '*' ${user}: ${r.stderr || r.error?.message}`);
}

interface Peer {
  name: string;
  labels: Record<string, string>;
  dir: string;
  /** HOME and TMPDIR of the sessions, owned by the user, outside `root` (which may not be traversable). */
  userDir: string;
  host: string;
  port: number;
  hostKey: string;
  /** The host key in the file when sshd last (re)started reading it. */
  loading?: string;
  /** The host key of the running sshd's last `Server listening` (a SIGHUP re-reads the file). */
  served?: string;
  child?: ChildProcess;
  pid?: number;
  listening: boolean;
  exited: boolean;
  deleted: boolean;
  /** Per-VM cgroup directory. */
  cg?: string;
  startTimer?: NodeJS.Timeout;
}

type Tracking = { kind: 'v2'; base: string; own: boolean } | { kind: 'v1-freezer'; base: string } | { kind: 'proc' };

function publicBlob(privateKey: string): Buffer {
  const k = ssh2.utils.parseKey(privateKey);
  if (k instanceof Error) throw new Error(`bad host key: ${k.message}`);
  return (Array.isArray(k) ? k[0] : (k as ParsedKey)).getPublicSSH();
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function pidsOf(cg: string): number[] {
  try {
    return readFileSync(join(cg, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone
  }
}

export class SshdPeers {
  private readonly peers = new Map<string, Peer>();
  private readonly tracking: Tracking;
  private readonly userRoot: string;
  private readonly uid: number;
  private readonly gid: number;
  private readonly onExit = () => this.killAllNow();

  constructor(private readonly opts: SshdPeersOptions) {
    if (!existsSync(SSHD)) throw new Error(`${SSHD} not found: apt-get install -y openssh-server`);
    const id = (flag: string) => Number(spawnSync('id', [flag, opts.user], { encoding: 'utf8' }).stdout.trim());
    this.uid = id('-u');
    this.gid = id('-g');
    if (!Number.isInteger(this.uid) || this.uid <= 0) throw new Error(`sshd peers: no user ${opts.user} (ensurePeerUser)`);
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
    mkdirSync(opts.root, { recursive: true });
    this.userRoot = mkdtempSync(join(tmpdir(), 'rf-gce-peers-'));
    chmodSync(this.userRoot, 0o711);
    this.tracking = this.setUpTracking();
    process.once('exit', this.onExit);
  }

  private setUpTracking(): Tracking {
    const tag = `rf-gce-peers-${process.pid}-${randomBytes(3).toString('hex')}`;
    try {
      if (existsSync('/sys/fs/cgroup/cgroup.controllers')) {
        // v2: per-VM groups under the CPU group (no controller enabled below it, so they cost the scheduler nothing).
        if (this.opts.cgroupProcs) return { kind: 'v2', base: dirname(this.opts.cgroupProcs), own: false };
        const base = join('/sys/fs/cgroup', tag);
        mkdirSync(base);
        return { kind: 'v2', base, own: true };
      }
      if (existsSync('/sys/fs/cgroup/freezer')) {
        // v1: the freezer hierarchy tracks (and freezes); the CPU group is the bench's, separately.
        const base = join('/sys/fs/cgroup/freezer', tag);
        mkdirSync(base);
        return { kind: 'v1-freezer', base };
      }
    } catch {
      // no writable cgroup fs: the /proc fallback
    }
    return { kind: 'proc' };
  }

  /** cgroup.procs files a new sshd joins (written by its wrapper shell before it execs sshd: nothing escapes). */
  private groupFiles(p: Peer): string[] {
    const out: string[] = [];
    if (this.tracking.kind !== 'proc') {
      p.cg = join(this.tracking.base, `vm-${p.name}`);
      mkdirSync(p.cg, { recursive: true });
      out.push(join(p.cg, 'cgroup.procs'));
    }
    if (this.opts.cgroupProcs && this.tracking.kind !== 'v2') out.push(this.opts.cgroupProcs);
    return out;
  }

  async create(spec: VmSpec): Promise<CreatedVm> {
    const created: CreatedVm = { vmId: spec.vmId, cloudId: spec.name };
    if (this.peers.has(spec.name)) return created;
    const dir = join(this.opts.root, spec.name);
    const userDir = join(this.userRoot, spec.name);
    const host = loopbackAddress(spec.name);
    const p: Peer = { name: spec.name, labels: { ...spec.labels }, dir, userDir, host, port: 0, hostKey: spec.hostKey ?? generateVmKeyPair(`${spec.name}-image`).privateKey, listening: false, exited: false, deleted: false };
    this.peers.set(spec.name, p);
    mkdirSync(dir, { recursive: true });
    for (const d of [userDir, join(userDir, 'home'), join(userDir, 'tmp')]) {
      mkdirSync(d, { recursive: true, mode: 0o700 });
      chownSync(d, this.uid, this.gid);
    }
    writeFileSync(join(dir, 'authorized_keys'), `${spec.publicKey.trim()}\n`, { mode: 0o600 });
    writeFileSync(join(dir, 'host_key'), p.hostKey.trim() + '\n', { mode: 0o600 });
    p.port = await freePort(host);
    writeFileSync(join(dir, 'sshd_config'), this.config(p));
    const delay = Number(spec.machine['bootDelayMs'] ?? 0) || 0;
    p.startTimer = setTimeout(() => this.start(p), delay);
    return created;
  }

  private config(p: Peer): string {
    const path = [this.opts.extraPathDir, '/usr/local/bin:/usr/bin:/bin'].filter(Boolean).join(':');
    return [
      `ListenAddress ${p.host}:${p.port}`,
      `HostKey ${join(p.dir, 'host_key')}`,
      'PidFile none',
      // Read as root by cat: the VM's directory need not be traversable by the user.
      'AuthorizedKeysFile none',
      `AuthorizedKeysCommand /bin/cat ${join(p.dir, 'authorized_keys')}`,
      'AuthorizedKeysCommandUser root',
      `AllowUsers ${this.opts.user}`,
      'StrictModes no',
      'UsePAM no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin no',
      'AllowTcpForwarding no',
      'AllowAgentForwarding no',
      'X11Forwarding no',
      'PrintMotd no',
      'PrintLastLog no',
      'UseDNS no',
      // Each VM its own home and tmp; the marker finds its processes when no cgroup does.
      `SetEnv HOME=${join(p.userDir, 'home')} TMPDIR=${join(p.userDir, 'tmp')} PATH=${path} RF_GCE_PEER=${p.name}`,
      '',
    ].join('\n');
  }

  private start(p: Peer): void {
    if (p.deleted) return;
    const groups = this.groupFiles(p);
    p.loading = p.hostKey;
    // The wrapper joins the groups and then becomes sshd (same pid: SIGHUP re-execs it by this path).
    const script = 'for f in $RF_CG; do echo $$ > "$f" || exit 97; done; exec "$@"';
    const child = spawn('/bin/sh', ['-c', script, 'sh', SSHD, '-D', '-e', '-f', join(p.dir, 'sshd_config')], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { RF_CG: groups.join(' '), PATH: '/usr/sbin:/usr/bin:/bin' },
    });
    p.child = child;
    p.pid = child.pid;
    if (child.pid && this.opts.nice !== undefined) {
      try {
        setPriority(child.pid, this.opts.nice);
      } catch {
        // exited already
      }
    }
    let buf = '';
    const tail: string[] = [];
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('Server listening on ')) this.listening(p);
        tail.push(line);
        if (tail.length > 5) tail.shift();
      }
    });
    child.on('error', () => undefined);
    child.on('exit', (code) => {
      p.exited = true;
      p.listening = false;
      if (!p.deleted) {
        try {
          appendFileSync(join(p.dir, 'sshd.log'), `sshd exited ${code}: ${tail.join(' | ')}\n`);
        } catch {
          // deleted meanwhile
        }
      }
    });
  }

  private listening(p: Peer): void {
    if (p.deleted || !p.pid) return;
    // What the file held when sshd (re)started: the key written before the last SIGHUP.
    p.served = p.loading;
    p.listening = true;
    // A key that came while sshd was starting (its SIGHUP handler not yet set): reload now.
    if (p.loading !== p.hostKey) this.reload(p);
    const blob = publicBlob(p.served!);
    const state: SandboxState = {
      pid: p.pid,
      host: p.host,
      port: p.port,
      hostKeyFingerprint: `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`,
      hostPublicKey: `ssh-ed25519 ${blob.toString('base64')}`,
      listeningAt: new Date().toISOString(),
    };
    writeJsonAtomic(files(p.dir).state, state);
  }

  setAuthorizedKey(name: string, publicKey: string): boolean {
    const p = this.peers.get(name);
    if (!p || p.deleted) return false;
    writeFileSync(join(p.dir, 'authorized_keys'), `${publicKey.trim()}\n`, { mode: 0o600 });
    return true;
  }

  /** The startup script's work: install the manager's host key and reload sshd (SIGHUP re-execs it). */
  setHostKey(name: string, hostKey: string): boolean {
    const p = this.peers.get(name);
    if (!p || p.deleted) return false;
    if (hostKey.trim() === p.hostKey.trim()) return true;
    publicBlob(hostKey); // a bad key throws here, not in sshd
    p.hostKey = hostKey;
    writeFileSync(join(p.dir, 'host_key'), hostKey.trim() + '\n', { mode: 0o600 });
    // Before it listens, sshd (or its wrapper shell) would die of a SIGHUP: listening() reloads then.
    if (p.listening) this.reload(p);
    return true;
  }

  private reload(p: Peer): void {
    if (!p.pid || p.exited) return;
    p.loading = p.hostKey;
    p.listening = false;
    signal(p.pid, 'SIGHUP');
  }

  hostPublicKey(name: string): string | undefined {
    const p = this.peers.get(name);
    return p?.listening && p.served ? `ssh-ed25519 ${publicBlob(p.served).toString('base64')}` : undefined;
  }

  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    const name = 'cloudId' in vm && vm.cloudId ? vm.cloudId : vm.name;
    const p = this.peers.get(name);
    if (!p?.listening) throw new ProviderError('retryable', `sshd VM ${name} is not listening yet`, { provider: 'local', operation: 'connectInfo' });
    return { protocol: 'ssh', os: 'linux', host: p.host, port: p.port, username: this.opts.user, privateKey };
  }

  private vm(p: Peer): CloudVm {
    const state = p.exited ? 'terminated' : p.listening || p.served ? 'running' : 'pending';
    const vmId = p.labels[LABEL_VM];
    return { ...(vmId ? { vmId } : {}), name: p.name, cloudId: p.name, state, ...(state === 'running' ? { internalIp: p.host } : {}), labels: { ...p.labels } };
  }

  async describe(refs: VmRef[]): Promise<CloudListing> {
    const vms = refs.flatMap((r) => {
      const p = this.peers.get(r.cloudId ?? r.name);
      return p && !p.deleted ? [this.vm(p)] : [];
    });
    return { vms, unreachable: [] };
  }

  sandboxes(): CloudVm[] {
    return [...this.peers.values()].filter((p) => !p.deleted).map((p) => this.vm(p));
  }

  /** Every process of the VM: its cgroup's, or (no cgroup) its sshd, that sshd's descendants and whatever carries its marker. */
  private processes(p: Peer): number[] {
    if (p.cg) return pidsOf(p.cg);
    const out = new Set<number>(p.pid && !p.exited ? [p.pid] : []);
    const parents = new Map<number, number>();
    for (const d of readdirSync('/proc')) {
      const pid = Number(d);
      if (!Number.isInteger(pid) || pid <= 1) continue;
      try {
        parents.set(pid, Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]));
        if (readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`RF_GCE_PEER=${p.name}`)) out.add(pid);
      } catch {
        // gone
      }
    }
    for (let grew = true; grew; ) {
      grew = false;
      for (const [pid, ppid] of parents) if (!out.has(pid) && out.has(ppid)) grew = out.add(pid) !== undefined;
    }
    return [...out];
  }

  private async kill(p: Peer): Promise<void> {
    p.deleted = true;
    if (p.startTimer) clearTimeout(p.startTimer);
    const freezer = this.tracking.kind === 'v1-freezer' && p.cg ? join(p.cg, 'freezer.state') : undefined;
    const v2kill = this.tracking.kind === 'v2' && p.cg ? join(p.cg, 'cgroup.kill') : undefined;
    for (let round = 0; round < 100; round++) {
      const pids = this.processes(p);
      if (!pids.length) break;
      if (v2kill && existsSync(v2kill)) writeFileSync(v2kill, '1');
      else {
        // Frozen first, so nothing forks between the listing and the kill.
        if (freezer) writeFileSync(freezer, 'FROZEN');
        for (const pid of freezer ? pidsOf(p.cg!) : pids) signal(pid, 'SIGKILL');
        if (freezer) writeFileSync(freezer, 'THAWED');
      }
      await sleep(round < 10 ? 5 : 50);
    }
    if (p.cg) {
      try {
        rmdirSync(p.cg);
      } catch {
        // a zombie not reaped yet: close() tries again
      }
    }
    rmSync(p.dir, { recursive: true, force: true });
    rmSync(p.userDir, { recursive: true, force: true });
  }

  async delete(refs: VmRef[]): Promise<void> {
    const doomed = refs.flatMap((r) => {
      const p = this.peers.get(r.cloudId ?? r.name);
      if (p) this.peers.delete(p.name);
      return p ? [p] : [];
    });
    await Promise.all(doomed.map((p) => this.kill(p)));
  }

  /** Suspend/resume: every process of the VM stopped (SIGSTOP) or continued. */
  async freeze(name: string, frozen: boolean): Promise<boolean> {
    const p = this.peers.get(name);
    if (!p || p.deleted || p.exited) return false;
    if (this.tracking.kind === 'v2' && p.cg) writeFileSync(join(p.cg, 'cgroup.freeze'), frozen ? '1' : '0');
    else if (this.tracking.kind === 'v1-freezer' && p.cg) writeFileSync(join(p.cg, 'freezer.state'), frozen ? 'FROZEN' : 'THAWED');
    else for (const pid of this.processes(p)) signal(pid, frozen ? 'SIGSTOP' : 'SIGCONT');
    return true;
  }

  /** Kills every VM and removes what this instance made (the per-VM groups, the users' directories). */
  async close(): Promise<void> {
    await this.delete([...this.peers.keys()].map((name) => ({ vmId: name, name })));
    process.removeListener('exit', this.onExit);
    if (this.tracking.kind !== 'proc') {
      const base = this.tracking.base;
      for (const d of readdirSync(base).filter((n) => n.startsWith('vm-'))) {
        for (const pid of pidsOf(join(base, d))) signal(pid, 'SIGKILL');
        try {
          rmdirSync(join(base, d));
        } catch {
          // still emptying
        }
      }
      if (this.tracking.kind === 'v1-freezer' || this.tracking.own) {
        try {
          rmdirSync(base);
        } catch {
          // a group still emptying
        }
      }
    }
    rmSync(this.userRoot, { recursive: true, force: true });
  }

  /** Process exit without close(): kill synchronously what is still running. */
  private killAllNow(): void {
    for (const p of this.peers.values()) {
      const pids = p.cg ? pidsOf(p.cg) : p.pid ? [p.pid] : [];
      for (const pid of pids) signal(pid, 'SIGKILL');
    }
  }
}
