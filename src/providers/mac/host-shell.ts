// The manager's way onto a Mac host's macOS instance: SSH (pinned to the host key it made),
// one cached session per host, and Tart over it. Also the jump for the host's nested VMs.
import type { Logger } from 'pino';
import { connectSsh, type SshSession } from '../../connect/ssh.js';
import { overrideEndpoint, ProviderError, type ConnectInfo, type ProviderContext, type SecretBox } from '../provider.js';
import type { MacMachine } from './config.js';
import type { HostRecord } from './host-fleet.js';
import type { MacHosts } from './hosts.js';
import { TartClient, TartError } from './tart.js';

export class HostShell {
  private readonly sessions = new Map<string, Promise<SshSession>>();

  constructor(private readonly deps: { hosts: MacHosts; secrets: SecretBox; ctx: Pick<ProviderContext, 'connectOverride'>; log: Logger }) {}

  /** How the manager logs in to a host's macOS instance (the jump for its nested VMs). */
  connectInfo(h: HostRecord, machine: MacMachine = this.deps.hosts.machineOf(h.data.className)): ConnectInfo {
    const key = h.data.hostKeySealed ? this.deps.secrets.open(h.data.hostKeySealed, `host:${h.id}`) : null;
    if (!h.data.privateIp) throw new ProviderError('retryable', `mac host ${h.id} has no instance address (state ${h.state})`, { provider: 'mac' });
    if (!key) throw new ProviderError('fatal', `mac host ${h.id}: its SSH key is unreadable with the current secrets.key`, { provider: 'mac' });
    // Pinned to the host key the manager made for the instance; records made before host keys
    // were pinned have none and are trusted as the cloud gave them until their next relaunch.
    const pin = h.data.sshHostKeyFingerprint ? { hostKeyFingerprint: h.data.sshHostKeyFingerprint } : {};
    const info: ConnectInfo = { protocol: 'ssh', os: 'macos', host: h.data.privateIp, port: 22, username: machine.hostUsername, privateKey: key, ...pin };
    return overrideEndpoint(this.deps.ctx, { name: h.id, cloudId: h.data.instanceId, internalIp: h.data.privateIp }, info);
  }

  /** Whether the host's instance is up with a working Tart (the fleet's launch probe). */
  async probe(rec: HostRecord, machine: MacMachine): Promise<boolean> {
    try {
      const s = await connectSsh(this.connectInfo(rec, machine), { timeoutMs: 10_000 });
      try {
        return (await s.exec('tart list --format json', { signal: AbortSignal.timeout(30_000) })).exitCode === 0;
      } finally {
        s.close();
      }
    } catch (err) {
      this.deps.log.debug({ host: rec.id, err: (err as Error).message }, 'mac host not reachable yet');
      return false;
    }
  }

  /** Tart on the host, over a cached SSH session; one reconnect when the session died. */
  async withTart<T>(h: HostRecord, fn: (t: TartClient) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let sess: SshSession;
      try {
        sess = await this.session(h);
      } catch (err) {
        this.drop(h.id);
        throw new ProviderError('retryable', `mac host ${h.id} (${h.data.privateIp}) not reachable over SSH: ${(err as Error).message}`, { provider: 'mac', cause: err });
      }
      try {
        return await fn(new TartClient(sess, { timeoutMs: 60_000 }));
      } catch (err) {
        if (err instanceof TartError && /not connected|closed|No response|ECONNRESET/i.test(err.message) && attempt === 0) {
          this.drop(h.id);
          continue;
        }
        throw err;
      }
    }
  }

  /** Closes the sessions of hosts that `keep` refuses (hosts gone or no longer usable). */
  retain(keep: (hostId: string) => boolean): void {
    for (const id of [...this.sessions.keys()]) if (!keep(id)) this.drop(id);
  }

  close(): void {
    this.retain(() => false);
  }

  private session(h: HostRecord): Promise<SshSession> {
    let s = this.sessions.get(h.id);
    if (!s) {
      s = connectSsh(this.connectInfo(h), { timeoutMs: 15_000 });
      this.sessions.set(h.id, s);
      s.then(
        (sess) => sess.once('close', () => this.sessions.get(h.id) === s && this.sessions.delete(h.id)),
        () => this.sessions.get(h.id) === s && this.sessions.delete(h.id),
      );
    }
    return s;
  }

  private drop(id: string): void {
    const s = this.sessions.get(id);
    this.sessions.delete(id);
    void s?.then((sess) => sess.close(), () => {});
  }
}
