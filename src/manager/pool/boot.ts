// The boot wait: one describe per provider for the VMs booting (a new VM, or a resume from
// standby), then an SSH probe of each running one within its boot deadline; a VM that answers
// is recorded ready and its session kept for its first job (Sessions).
import pRetry from 'p-retry';
import type { VmRow } from '../../db/schema.js';
import type { SshSession } from '../../connect/ssh.js';
import { isTransientDbError } from '../../db/fence.js';
import type { Provider } from '../../providers/provider.js';
import type { Clock } from '../clock.js';
import { isHostKeyRefusal, pinnedConnectInfo, refusalReason, reportHostKeyRefusal } from '../host-key.js';
import { providerOf, timedCall } from './cloud.js';
import type { PoolDeps } from './deps.js';
import { bootStart, vmRef } from './identity.js';
import type { Lifecycle } from './lifecycle.js';
import type { Sessions } from './sessions.js';
import type { PoolTasks } from './tasks.js';
import { groupBy } from './counts.js';

/** A database write that failed: kept apart from the SSH or cloud failure it must not be taken for. */
export class PoolDatabaseError extends Error {
  constructor(message: string, options: { cause: unknown }) {
    super(message, options);
    this.name = 'PoolDatabaseError';
  }
}

/**
 * Whether the VM's Docker Engine answers, asked until the boot deadline (it may start after sshd);
 * true, or the last error.
 */
export async function dockerEngineReady(session: SshSession, deadlineMs: number, clock: Clock, signal: AbortSignal): Promise<true | string> {
  let last = 'no answer';
  while (!signal.aborted) {
    const out: Buffer[] = [];
    const ask = new AbortController();
    const stop = () => ask.abort();
    signal.addEventListener('abort', stop, { once: true });
    const t = setTimeout(stop, 10_000);
    try {
      const r = await session.exec("docker version --format '{{.Server.Version}}'", { signal: ask.signal, onData: (c) => out.push(c) });
      const text = Buffer.concat(out).toString().trim().slice(-300);
      if (r.exitCode === 0 && text) return true;
      last = text || `exit code ${r.exitCode}`;
    } catch (err) {
      last = (err as Error).message;
      if (session.closed) return last;
    } finally {
      clearTimeout(t);
      signal.removeEventListener('abort', stop);
    }
    if (clock.now() + 1000 > deadlineMs) return last;
    await clock.sleep(1000, signal).catch(() => {});
  }
  return 'aborted';
}

export interface BootParts {
  d: PoolDeps;
  tasks: PoolTasks;
  sessions: Sessions;
  lifecycle: Lifecycle;
  /** A VM became ready: waiters look again. */
  notify: () => void;
}

export class BootWatch {
  /** When each provider was last asked about booting VMs. */
  private readonly lastDescribe = new Map<string, number>();

  constructor(private readonly p: BootParts) {}

  /** One describe per provider for all booting VMs, then an SSH probe for each running one. */
  async watch(rows: VmRow[], now: number): Promise<void> {
    const { d, tasks, lifecycle } = this.p;
    const booting = rows.filter((r) => r.state === 'booting' && !tasks.busy.has(r.id) && !tasks.stale.has(r.id));
    const due: VmRow[] = [];
    for (const r of booting) {
      const cls = d.config.classes[r.class];
      if (!cls || now - bootStart(r) > cls.bootTimeoutMs) {
        await lifecycle.failVm(r, cls ? 'boot timeout' : 'class no longer configured', 'boot_timeout');
        continue;
      }
      due.push(r);
    }
    for (const [pname, group] of groupBy(due, (r) => r.provider)) {
      const provider = providerOf(d.providers, pname);
      if (now - (this.lastDescribe.get(pname) ?? -Infinity) < (provider.pollIntervalMs ?? 0)) continue;
      this.lastDescribe.set(pname, now);
      let cloud;
      try {
        cloud = (await timedCall(d.metrics, provider, 'describe', () => provider.describe(group.map(vmRef)))).vms;
      } catch (err) {
        d.log.warn({ err, provider: pname }, 'describe failed');
        continue;
      }
      const byId = new Map(cloud.map((c) => [c.vmId ?? c.name, c]));
      for (const r of group) {
        const c = byId.get(r.id) ?? byId.get(r.name);
        if (!c) continue;
        if (c.state === 'terminated') {
          await lifecycle.failVm(r, 'VM terminated while booting', 'terminated');
          continue;
        }
        if (c.state !== 'running' || !c.internalIp) continue;
        this.probe(r, provider, c.internalIp);
      }
    }
  }

  private probe(row: VmRow, provider: Provider, internalIp: string): void {
    const { d, tasks, sessions, lifecycle } = this.p;
    const cls = d.config.classes[row.class]!;
    const privateKey = d.store.vmPrivateKey(row);
    tasks.spawn([row.id], async () => {
      if (!privateKey) return void (await lifecycle.failVm(row, 'private key unreadable with the current secrets.key', 'key'));
      const unpinned = provider.connectInfo({ ...vmRef(row), internalIp }, privateKey);
      const deadlineMs = bootStart(row) + cls.bootTimeoutMs;
      let session: SshSession;
      let published: string | undefined;
      try {
        // A VM that made its own host key (Windows on GCE): pinned to what it published.
        published = await this.publishedHostKey(provider, row, deadlineMs);
        const pin = published ?? row.host_key_fingerprint;
        const info = pinnedConnectInfo(unpinned, { id: row.id, host_key_fingerprint: pin });
        session = await d.probe(info, { deadlineMs, signal: tasks.signal });
      } catch (err) {
        if (tasks.stopped) return;
        if (isHostKeyRefusal(err)) {
          reportHostKeyRefusal(d, row, err);
          return void (await lifecycle.failVm(row, err.message, refusalReason(err), err));
        }
        return void (await lifecycle.failVm(row, `not reachable over SSH: ${(err as Error).message}`, 'unreachable', err));
      }
      if (cls.executor === 'docker') {
        // The image must provide Docker Engine: a VM without it would fail every job it gets.
        const docker = await dockerEngineReady(session, deadlineMs, d.clock, tasks.signal);
        if (docker !== true) {
          session.close();
          if (tasks.stopped) return;
          return void (await lifecycle.failVm(row, `Docker Engine not running on the VM (executor: docker): ${docker}`, 'docker'));
        }
      }
      const readyAt = new Date(d.clock.now());
      let marked: boolean;
      try {
        marked = await this.recordReady(row, { internal_ip: internalIp, ready_at: readyAt, ...(published ? { host_key_fingerprint: published } : {}) });
      } catch (err) {
        // The VM answered: a database failure is no reason to delete it. It stays booting and
        // the next describe probes it again.
        session.close();
        if (tasks.stopped) return;
        d.log.error({ vm: row.id, class: row.class, err }, 'database error recording a ready VM; it stays booting and is probed again');
        return;
      }
      if (marked) {
        sessions.keep(row.id, session);
        const seconds = (readyAt.getTime() - bootStart(row)) / 1000;
        if (row.ready_at) {
          d.metrics.vmResume.observe({ class: row.class }, seconds);
          d.demand?.get(row.class)?.observeResume(seconds, row.zone, readyAt.getTime());
        } else {
          d.metrics.vmBoot.observe({ class: row.class }, seconds);
          d.demand?.get(row.class)?.observeBoot(seconds, row.zone, readyAt.getTime());
        }
        d.log.info({ vm: row.id, class: row.class, [row.ready_at ? 'resumeSeconds' : 'bootSeconds']: seconds }, 'VM ready');
      } else {
        session.close();
      }
      this.p.notify();
    });
  }

  /** booting -> ready, retried over transient database errors; a final failure is a PoolDatabaseError. */
  private async recordReady(row: VmRow, patch: { internal_ip: string; ready_at: Date; host_key_fingerprint?: string }): Promise<boolean> {
    const { d, tasks } = this.p;
    try {
      return await pRetry(() => tasks.write(() => d.store.transition(row.id, 'booting', 'ready', patch)), {
        retries: 4,
        minTimeout: 100,
        maxTimeout: 2000,
        signal: tasks.signal,
        shouldRetry: ({ error }) => isTransientDbError(error),
      });
    } catch (err) {
      throw new PoolDatabaseError(`could not record VM ${row.id} ready: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The provider's trusted reading of a VM's own host key, retried until it is published or the boot deadline. */
  private async publishedHostKey(provider: Provider, row: VmRow, deadlineMs: number): Promise<string | undefined> {
    const { d, tasks } = this.p;
    if (!provider.hostKeyFingerprint) return undefined;
    for (;;) {
      try {
        return await timedCall(d.metrics, provider, 'hostKey', () => provider.hostKeyFingerprint!(vmRef(row)));
      } catch (err) {
        if ((err as { kind?: string }).kind !== 'retryable' && (err as { kind?: string }).kind !== 'rateLimited') throw err;
        if (d.clock.now() >= deadlineMs) throw new Error(`its SSH host key was never published: ${(err as Error).message}`);
        await d.clock.sleep(1000, tasks.signal);
      }
    }
  }
}
