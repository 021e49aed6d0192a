// The local provider: each VM is a sandbox directory plus its own detached SSH server process
// on a loopback address. It behaves like a cloud where it matters to the manager: VMs boot
// asynchronously, survive the manager, carry labels, and are found again by listing.
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { setPriority } from 'node:os';
import { appendFileSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  LABEL_VM,
  ProviderError,
  createEach,
  type CloudListing,
  type CloudVm,
  type CloudVmState,
  type ConnectInfo,
  type CreateResult,
  type CreatedVm,
  type Provider,
  type ProviderCapabilities,
  type ProviderContext,
  type VmRef,
  type VmSpec,
} from '../provider.js';
import { machineBootDelayMs } from './boot-delay.js';
import type { LocalProviderConfig } from './config.js';
import { USERNAME, files, isAlive, loopbackAddress, readJson, writeJsonAtomic, type SandboxSpec, type SandboxState } from './layout.js';

/** A sandbox with a spec but no pid this long after creation was abandoned mid-create. */
const ABANDONED_MS = 30_000;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** How to start the sandbox entry point: from TypeScript sources via tsx, or compiled JS. */
function sandboxCommand(dir: string): string[] {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    const entry = fileURLToPath(new URL('./sandbox.ts', here));
    // An absolute loader URL: a bare 'tsx' would resolve against the manager's cwd.
    const tsx = pathToFileURL(createRequire(here).resolve('tsx')).href;
    return ['--import', tsx, entry, dir];
  }
  return [fileURLToPath(new URL('./sandbox.js', here)), dir];
}

export class LocalProvider implements Provider {
  readonly name = 'local';
  readonly capabilities: ProviderCapabilities = { batchCreate: false, stopStart: false, gpu: false, windows: false, nestedVms: false };
  /** Root of all sandboxes of this provider. */
  readonly root: string;

  constructor(
    private readonly config: LocalProviderConfig,
    private readonly ctx: ProviderContext,
  ) {
    this.root = resolve(config.dir ?? join(ctx.dataDir, 'local-vms'));
  }

  private dirOf(name: string): string {
    if (!NAME_RE.test(name)) throw new ProviderError('fatal', `invalid local VM name ${JSON.stringify(name)}`, { provider: 'local' });
    return join(this.root, name);
  }

  async create(spec: VmSpec): Promise<CreatedVm> {
    const dir = this.dirOf(spec.name);
    const f = files(dir);
    const created: CreatedVm = { vmId: spec.vmId, cloudId: spec.name };
    mkdirSync(this.root, { recursive: true });
    try {
      // mkdir is the atomic claim on the name: concurrent creates of one VM start one sandbox.
      mkdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new ProviderError('retryable', `cannot create ${dir}: ${(err as Error).message}`, { provider: 'local', operation: 'create', cause: err });
      const existing = readJson<SandboxSpec>(f.spec);
      if (existing && existing.vmId !== spec.vmId) {
        throw new ProviderError('fatal', `local VM name ${spec.name} is taken by VM ${existing.vmId}`, { provider: 'local', operation: 'create' });
      }
      if (existsSync(f.pid) || Date.now() - statSync(dir).mtimeMs < ABANDONED_MS) return created;
      // A create that died between mkdir and spawn: finish it.
    }
    let bootDelayMs: number;
    try {
      bootDelayMs = machineBootDelayMs(spec.machine, this.config.bootDelayMs);
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw new ProviderError('fatal', `class ${spec.className}: ${(err as Error).message}`, { provider: 'local', operation: 'create' });
    }
    const sandbox: SandboxSpec = {
      name: spec.name,
      vmId: spec.vmId,
      labels: { ...spec.labels },
      publicKey: spec.publicKey,
      ...(spec.hostKey ? { hostKey: spec.hostKey } : {}),
      // The user a VM image would create (the EC2 emulator passes the one its user data names).
      username: typeof spec.machine['username'] === 'string' && /^[a-z_][a-z0-9_-]{0,31}$/.test(spec.machine['username']) ? spec.machine['username'] : USERNAME,
      host: loopbackAddress(spec.name),
      port: this.config.sshPort ?? 0,
      bootDelayMs,
      maxRunSeconds: spec.maxRunSeconds > 0 ? spec.maxRunSeconds : 24 * 3600,
      createdAt: new Date().toISOString(),
    };
    writeJsonAtomic(f.spec, sandbox);
    mkdirSync(f.home, { recursive: true });
    const logFd = openSync(f.log, 'a');
    try {
      const child = spawn(process.execPath, sandboxCommand(dir), {
        cwd: dir,
        // Detached (own session and process group) so it outlives the manager, as a VM would.
        detached: true,
        stdio: ['ignore', 'ignore', logFd],
        // The manager's environment holds secrets; a VM gets none of it.
        env: { PATH: [this.config.extraPathDir, process.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin'].filter(Boolean).join(':'), LANG: 'C.UTF-8' },
      });
      child.on('error', (err) => this.ctx.log.warn({ vm: spec.vmId, err: err.message }, 'local sandbox failed to start'));
      if (!child.pid) throw new Error('spawn returned no pid');
      if (this.config.nice !== undefined) setPriority(child.pid, this.config.nice);
      writeJsonAtomic(f.pid, child.pid);
      if (this.config.cgroupProcs) {
        try {
          appendFileSync(this.config.cgroupProcs, `${child.pid}\n`);
        } catch (err) {
          this.ctx.log.warn({ vm: spec.vmId, err: (err as Error).message }, 'cannot move the sandbox into its cgroup');
        }
      }
      child.unref();
    } catch (err) {
      throw new ProviderError('retryable', `cannot start sandbox for ${spec.name}: ${(err as Error).message}`, { provider: 'local', operation: 'create', cause: err });
    } finally {
      closeSync(logFd);
    }
    this.ctx.log.debug({ vm: spec.vmId, name: spec.name, bootDelayMs }, 'local sandbox started');
    return created;
  }

  createMany(specs: VmSpec[]): Promise<CreateResult[]> {
    return createEach(this, specs);
  }

  /** One directory listing answers for every sandbox: never partial (an unreadable root throws). */
  async describe(refs: VmRef[]): Promise<CloudListing> {
    const wanted = new Set(refs.map((r) => r.cloudId ?? r.name));
    return { vms: this.scan().filter((name) => wanted.has(name)).flatMap((name) => this.read(name) ?? []), unreachable: [] };
  }

  /** Job VMs only (sandboxes carrying LABEL_VM); `sandboxes()` for every sandbox. */
  async list(labels: Record<string, string>): Promise<CloudListing> {
    const want = Object.entries(labels);
    return { vms: this.sandboxes().filter((vm) => vm.vmId !== undefined && want.every(([k, v]) => vm.labels[k] === v)), unreachable: [] };
  }

  /** Every sandbox under the root, job VM or not (emulators and test doubles build on these). */
  sandboxes(): CloudVm[] {
    return this.scan().flatMap((name) => this.read(name) ?? []);
  }

  async delete(refs: VmRef[]): Promise<void> {
    for (const ref of refs) {
      const name = ref.cloudId ?? ref.name;
      if (!NAME_RE.test(name)) continue; // cannot exist here
      const dir = join(this.root, name);
      if (!existsSync(dir)) continue;
      const f = files(dir);
      const pid = readJson<number>(f.pid);
      // Sandbox first, so it starts no new command while we clean up after it.
      if (pid && isAlive(pid, dir)) killGroup(pid);
      for (const pgid of this.procGroups(f.procs, f.home)) killGroup(pgid);
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /**
   * Freezes (`SIGSTOP`) or thaws (`SIGCONT`) a sandbox and every command it started: its memory
   * stays, so a thawed sandbox answers at once, without a boot. What a suspend and resume are to
   * the GCE emulator. Resolves once the kernel shows the sandbox stopped (or running again): a
   * signal takes effect only when the process is next scheduled, later on a loaded machine.
   * False when the sandbox is not running.
   */
  async freeze(name: string, frozen: boolean, timeoutMs = 5000): Promise<boolean> {
    const dir = this.dirOf(name);
    const f = files(dir);
    const pid = readJson<number>(f.pid);
    if (!pid || !isAlive(pid, dir)) return false;
    for (const pgid of [pid, ...this.procGroups(f.procs, f.home)]) signalGroup(pgid, frozen ? 'SIGSTOP' : 'SIGCONT');
    const end = Date.now() + timeoutMs;
    while (Date.now() < end && isStopped(pid) !== frozen) await sleep(5);
    return true;
  }

  /**
   * What a guest agent does when a VM's keys change after boot (GCE `ssh-keys` metadata): the
   * sandbox accepts this key from now on instead of the one it was created with. Used by the
   * GCE emulator; a sandbox that does not exist is left alone.
   */
  setAuthorizedKey(name: string, publicKey: string): boolean {
    const dir = this.dirOf(name);
    if (!existsSync(files(dir).spec)) return false;
    const f = files(dir);
    const tmp = `${f.authorizedKey}.${process.pid}.tmp`;
    writeFileSync(tmp, `${publicKey.trim()}\n`, { mode: 0o600 });
    renameSync(tmp, f.authorizedKey);
    return true;
  }

  /** What a guest agent does with a host key sent after boot (GCE metadata): the sandbox's sshd reloads with it. */
  setHostKey(name: string, hostKey: string): boolean {
    const dir = this.dirOf(name);
    if (!existsSync(files(dir).spec)) return false;
    const f = files(dir);
    const tmp = `${f.hostKey}.${process.pid}.tmp`;
    writeFileSync(tmp, `${hostKey.trim()}\n`, { mode: 0o600 });
    renameSync(tmp, f.hostKey);
    return true;
  }

  /** The host key a listening sandbox serves (`ssh-ed25519 <base64>`); for the GCE emulator's guest attributes. */
  hostPublicKey(name: string): string | undefined {
    return readJson<SandboxState>(files(this.dirOf(name)).state)?.hostPublicKey;
  }

  connectInfo(vm: CloudVm | (VmRef & { internalIp: string }), privateKey: string): ConnectInfo {
    const name = 'cloudId' in vm && vm.cloudId ? vm.cloudId : vm.name;
    const state = readJson<SandboxState>(files(this.dirOf(name)).state);
    if (!state) throw new ProviderError('retryable', `local VM ${name} is not listening yet`, { provider: 'local', operation: 'connectInfo' });
    const username = readJson<SandboxSpec>(files(this.dirOf(name)).spec)?.username ?? USERNAME;
    return { protocol: 'ssh', os: 'linux', host: state.host, port: state.port, username, privateKey };
  }

  async close(): Promise<void> {
    // Nothing held open: sandboxes are independent processes and stay.
  }

  /** One directory listing for every describe/list: cost does not grow with calls per VM. */
  private scan(): string[] {
    try {
      return readdirSync(this.root).filter((n) => NAME_RE.test(n));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new ProviderError('retryable', `cannot list ${this.root}: ${(err as Error).message}`, { provider: 'local', operation: 'list', cause: err });
    }
  }

  private read(name: string): CloudVm | undefined {
    const dir = join(this.root, name);
    const f = files(dir);
    const spec = readJson<SandboxSpec>(f.spec);
    if (!spec) return undefined; // mid-create or mid-delete
    const pid = readJson<number>(f.pid);
    const state = readJson<SandboxState>(f.state);
    let vmState: CloudVmState;
    if (pid === undefined) vmState = Date.now() - Date.parse(spec.createdAt) > ABANDONED_MS ? 'terminated' : 'pending';
    else if (!isAlive(pid, dir)) vmState = 'terminated';
    else vmState = state ? 'running' : 'pending';
    const vmId = spec.labels[LABEL_VM];
    return {
      ...(vmId ? { vmId } : {}),
      name: spec.name,
      cloudId: spec.name,
      state: vmState,
      ...(vmState === 'running' && state ? { internalIp: state.host } : {}),
      labels: { ...spec.labels },
    };
  }

  /** Process groups of commands the sandbox started, checked to really be this sandbox's (pids get recycled). */
  private procGroups(procsDir: string, home: string): number[] {
    let names: string[];
    try {
      names = readdirSync(procsDir);
    } catch {
      return [];
    }
    return names
      .map(Number)
      .filter((pgid) => Number.isInteger(pgid) && pgid > 1)
      .filter((pgid) => {
        try {
          return readFileSync(`/proc/${pgid}/environ`, 'utf8').split('\0').includes(`HOME=${home}`);
        } catch {
          return false; // gone (or no /proc): nothing we can safely kill
        }
      });
  }
}

/** The process is in the stopped state (`T` in /proc/PID/stat); false when unknown or gone. */
function isStopped(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] === 'T';
  } catch {
    return false;
  }
}

function killGroup(pgid: number): void {
  signalGroup(pgid, 'SIGKILL');
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // Already gone.
  }
}
