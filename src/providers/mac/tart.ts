// Tart on a Mac host, driven over SSH: clone a fresh macOS VM from an image, run it headless,
// find its address, stop and delete it. Command texts are built here (pure, quoted); the client
// runs them on a host session with a timeout each, and errors carry Tart's own message.
//
// Image requirement for per-VM keys: the manager writes each VM's public key to a host directory
// and starts the VM with `--dir=runner-fleet:<dir>:ro`; the image's LaunchDaemon copies
// `/Volumes/My Shared Files/runner-fleet/authorized_keys` to the job user's
// `~/.ssh/authorized_keys` at boot, so a nested VM accepts only its own key, and
// `ssh_host_ed25519_key` there to `/etc/ssh/` before sshd starts: the manager made that host key
// and pins it (the share is the one channel into an image-made VM that the host controls).
import type { SshSession } from '../../connect/ssh.js';
import { shq } from '../../gitlab/script-quote.js';

/** Tart refused to run another VM: the host already runs the two its licence allows. */
export class TartCapacityError extends Error {
  override name = 'TartCapacityError';
}

export class TartError extends Error {
  override name = 'TartError';
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const IMAGE = /^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,255}$/;

function checkName(name: string): string {
  if (!NAME.test(name)) throw new TartError(`invalid Tart VM name ${JSON.stringify(name)}`);
  return name;
}

/** What runStatus prints while `tart run` is still running. */
const RUN_ALIVE = 'rf-tart-run-alive';
/** The detached `tart run` of a VM, as pgrep/pkill -f find it. */
const runPattern = (name: string) => shq(`run --no-graphics --dir=runner-fleet:.*/${checkName(name)}:ro ${name}$`);

/** Host directory holding a VM's authorized_keys, shared read-only into it. */
export const keyDir = (name: string) => `runner-fleet/vms/${checkName(name)}`;

export const tartCommands = {
  clone: (image: string, name: string) => {
    if (!IMAGE.test(image)) throw new TartError(`invalid Tart image ${JSON.stringify(image)}`);
    return `tart clone ${shq(image)} ${shq(checkName(name))}`;
  },
  installKey: (name: string, publicKey: string, hostKey?: string) =>
    `umask 077 && mkdir -p "$HOME"/${keyDir(name)} && printf '%s\\n' ${shq(publicKey.trim())} > "$HOME"/${keyDir(name)}/authorized_keys` +
    (hostKey ? ` && printf '%s\\n' ${shq(hostKey.trim())} > "$HOME"/${keyDir(name)}/ssh_host_ed25519_key` : ''),
  /**
   * Detached (Tart has no daemon mode; `tart run` lasts as long as the VM), logging to the key
   * dir; the caller then checks `list`. Only the `tart run` command goes to the background, with
   * every stdio redirected: `cd && nohup ... &` would background the whole `&&` list, and bash
   * runs that list in a subshell that keeps the session's stdout open for as long as the VM
   * runs, so the SSH exec never ends.
   */
  run: (name: string) =>
    `cd "$HOME" || exit 1; nohup tart run --no-graphics --dir=runner-fleet:"$HOME"/${keyDir(name)}:ro ${shq(checkName(name))} < /dev/null > ${keyDir(name)}/run.log 2>&1 & sleep 1; cat ${keyDir(name)}/run.log`,
  /** The detached `tart run`'s log, and RUN_ALIVE while it still runs. */
  runStatus: (name: string) => `cat "$HOME"/${keyDir(name)}/run.log 2>/dev/null; pgrep -f ${runPattern(name)} >/dev/null && echo ${RUN_ALIVE}; true`,
  /** Ends a detached `tart run` that has not started its VM (given up on: it must not start it later). */
  endRun: (name: string) => `pkill -f ${runPattern(name)}; true`,
  /** CPU and memory of a fresh clone (before its first run). */
  set: (name: string, vm: { cpu?: number; memoryMb?: number }) =>
    `tart set ${shq(checkName(name))}${vm.cpu ? ` --cpu ${Math.trunc(vm.cpu)}` : ''}${vm.memoryMb ? ` --memory ${Math.trunc(vm.memoryMb)}` : ''}`,
  ip: (name: string, waitSeconds: number) => `tart ip --wait ${Math.max(1, Math.round(waitSeconds))} ${shq(checkName(name))}`,
  stop: (name: string) => `tart stop ${shq(checkName(name))}`,
  delete: (name: string) => `tart stop ${shq(checkName(name))} >/dev/null 2>&1; tart delete ${shq(checkName(name))}; rm -rf "$HOME"/${keyDir(name)}`,
  list: () => 'tart list --format json',
};

/** How long a VM `tart run` was asked for may take to show as running before it counts as not started. */
const START_WAIT_MS = 30_000;

export interface TartVm {
  name: string;
  source: string;
  running: boolean;
}

export class TartClient {
  constructor(
    private readonly session: SshSession,
    private readonly opts: { timeoutMs?: number } = {},
  ) {}

  private async run(command: string, timeoutMs = this.opts.timeoutMs ?? 60_000): Promise<{ code: number | null; out: string }> {
    let out = '';
    const signal = AbortSignal.timeout(timeoutMs);
    try {
      const r = await this.session.exec(command, { signal, onData: (c) => void (out += String(c)) });
      return { code: r.exitCode, out };
    } catch (err) {
      throw new TartError(`${command.split(' ').slice(0, 2).join(' ')}: ${signal.aborted ? `no answer within ${timeoutMs} ms` : (err as Error).message}`);
    }
  }

  private async must(what: string, command: string, timeoutMs?: number): Promise<string> {
    const r = await this.run(command, timeoutMs);
    if (r.code !== 0) throw new TartError(`${what} failed (exit ${r.code}): ${r.out.trim().slice(-500)}`);
    return r.out;
  }

  async clone(image: string, name: string): Promise<void> {
    await this.must(`tart clone ${image} ${name}`, tartCommands.clone(image, name), 10 * 60_000);
  }

  async set(name: string, vm: { cpu?: number; memoryMb?: number }): Promise<void> {
    await this.must(`tart set ${name}`, tartCommands.set(name, vm));
  }

  async installKey(name: string, publicKey: string, hostKey?: string): Promise<void> {
    await this.must(`installing the keys of ${name}`, tartCommands.installKey(name, publicKey, hostKey));
  }

  /** Start the VM headless; TartCapacityError when the host already runs two. */
  async start(name: string, waitMs = START_WAIT_MS): Promise<void> {
    // What the launch printed (its first second of log, or the shell's own error).
    const launched = (await this.run(tartCommands.run(name))).out.trim();
    // `tart run` goes to the background: it may not have started the VM when the command
    // returns (later still on a busy host). While it runs, the VM is starting; once it has
    // exited without a running VM, its log says why.
    const end = Date.now() + waitMs;
    for (;;) {
      const vm = (await this.list()).find((v) => v.name === name);
      if (vm?.running) return;
      const probe = (await this.run(tartCommands.runStatus(name))).out;
      const alive = probe.includes(RUN_ALIVE);
      const why = probe.replace(RUN_ALIVE, '').trim() || launched;
      if (/exceeds the system limit|number of VMs/i.test(why)) throw new TartCapacityError(`tart run ${name}: ${why}`);
      if (alive && Date.now() > end) {
        // Given up on: the caller deletes the VM, and a run still pending must not start it after.
        await this.run(tartCommands.endRun(name));
        throw new TartError(`tart run ${name} did not start within ${waitMs} ms: ${why.slice(-500) || 'no output'}`);
      }
      if (!alive) throw new TartError(`tart run ${name} did not start: ${why.slice(-500) || 'no output'}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  async ip(name: string, waitSeconds = 120): Promise<string> {
    const out = (await this.must(`tart ip ${name}`, tartCommands.ip(name, waitSeconds), (waitSeconds + 10) * 1000)).trim();
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(out)) throw new TartError(`tart ip ${name}: not an address: ${JSON.stringify(out.slice(0, 100))}`);
    return out;
  }

  async stop(name: string): Promise<void> {
    await this.must(`tart stop ${name}`, tartCommands.stop(name));
  }

  /** Stop and delete; a VM that does not exist is already deleted. */
  async delete(name: string): Promise<void> {
    const r = await this.run(tartCommands.delete(name));
    if (r.code !== 0 && !/does not exist|not found/i.test(r.out)) throw new TartError(`tart delete ${name} failed (exit ${r.code}): ${r.out.trim().slice(-500)}`);
  }

  async list(): Promise<TartVm[]> {
    const out = await this.must('tart list', tartCommands.list());
    let parsed: unknown;
    try {
      parsed = JSON.parse(out);
    } catch {
      throw new TartError(`tart list: not JSON: ${out.slice(0, 200)}`);
    }
    if (!Array.isArray(parsed)) throw new TartError('tart list: expected a JSON array');
    return parsed.map((v: Record<string, unknown>) => ({
      name: String(v['Name'] ?? ''),
      source: String(v['Source'] ?? ''),
      running: v['Running'] === true || v['State'] === 'running',
    }));
  }
}
