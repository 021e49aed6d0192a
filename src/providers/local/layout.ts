// On-disk layout of one sandbox, shared by the provider (manager side) and the sandbox process.
// The directory is the whole truth about a sandbox: a manager that restarts finds everything here.
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Written by the provider before the sandbox starts. */
export interface SandboxSpec {
  name: string;
  vmId: string;
  labels: Record<string, string>;
  publicKey: string;
  /** The host key the manager made for this VM (OpenSSH private key); a fresh one when absent. */
  hostKey?: string;
  username: string;
  host: string;
  port: number;
  bootDelayMs: number;
  /** Backstop: the sandbox exits after this long, like a cloud max run duration. */
  maxRunSeconds: number;
  createdAt: string;
}

/** Written by the sandbox once it listens. */
export interface SandboxState {
  pid: number;
  host: string;
  port: number;
  hostKeyFingerprint: string;
  /** `ssh-ed25519 <base64>`: what a guest agent would publish (GCE guest attributes). */
  hostPublicKey?: string;
  listeningAt: string;
}

export const USERNAME = 'runner';

export const files = (dir: string) => ({
  spec: join(dir, 'vm.json'),
  pid: join(dir, 'pid'),
  state: join(dir, 'state.json'),
  home: join(dir, 'home'),
  /** The commands' TMPDIR: job files stay inside the VM that ran the job. */
  tmp: join(dir, 'tmp'),
  /** One empty file per running exec, named by its process group id: delete kills them even if the sandbox died. */
  procs: join(dir, 'procs'),
  log: join(dir, 'sandbox.log'),
  /** Written by a guest agent after boot (GCE `ssh-keys` metadata): replaces the spec's key. */
  authorizedKey: join(dir, 'authorized_key'),
  /** Written by a guest agent after boot (GCE host key metadata): sshd reloads with this host key. */
  hostKey: join(dir, 'host_key'),
});

/** Write-then-rename so a reader never sees half a file. */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 2));
  renameSync(tmp, path);
}

export function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/**
 * A distinct loopback address per VM, 127.a.b.c with a >= 1 (so never 127.0.0.1), so each
 * sandbox looks like its own host. Two names may share an address; their ports still differ.
 */
export function loopbackAddress(name: string): string {
  const h = createHash('sha256').update(name).digest();
  return `127.${(h[0]! % 254) + 1}.${h[1]!}.${(h[2]! % 254) + 1}`;
}

/**
 * Whether a pid is a live process; with `marker`, also that its command line contains it
 * (guards against a recycled pid). Zombies count as dead: an unreaped sandbox is not serving.
 */
export function isAlive(pid: number | undefined, marker?: string): boolean {
  if (!pid || !Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (/\) Z /.test(stat)) return false;
    if (marker && !readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker)) return false;
  } catch {
    // No /proc (not Linux) or the process vanished meanwhile: trust kill(0).
  }
  return true;
}
