// Pinned host keys of job VMs: the manager made each VM's host key and keeps its fingerprint on
// the VM row (sql/006). Every connection to a job VM goes through pinnedConnectInfo, so it is
// verified (src/connect/ssh.ts) and a VM without a pinned key is never sent anything.
import type { Logger } from 'pino';
import { HostKeyMismatchError, SshConnectError } from '../connect/ssh.js';
import type { VmRow } from '../db/schema.js';
import type { ConnectInfo } from '../providers/provider.js';
import type { Metrics } from './metrics.js';

/** The VM row has no pinned host key (made before sql/006): refused like a mismatch, never retried. */
export class HostKeyUnpinnedError extends SshConnectError {
  constructor(vmId: string) {
    super(`VM ${vmId} has no pinned SSH host key: refusing to connect`, false, 'HOSTKEY_UNPINNED');
    this.name = 'HostKeyUnpinnedError';
  }
}

/** `info` with the row's pinned fingerprint; throws HostKeyUnpinnedError when the row has none. */
export function pinnedConnectInfo(info: ConnectInfo, vm: Pick<VmRow, 'id' | 'host_key_fingerprint'>): ConnectInfo {
  if (!vm.host_key_fingerprint) throw new HostKeyUnpinnedError(vm.id);
  return { ...info, hostKeyFingerprint: vm.host_key_fingerprint };
}

/** Errors that mean "not the VM we made": the VM is failed at once, nothing more is tried on it. */
export function isHostKeyRefusal(err: unknown): err is HostKeyMismatchError | HostKeyUnpinnedError {
  return err instanceof HostKeyMismatchError || err instanceof HostKeyUnpinnedError;
}

/** The vmFailures reason of a refusal. */
export function refusalReason(err: HostKeyMismatchError | HostKeyUnpinnedError): string {
  return err instanceof HostKeyMismatchError ? 'host_key_mismatch' : 'host_key_unpinned';
}

/** Count and log a refusal (fingerprints and address only: no key, no job data). */
export function reportHostKeyRefusal(d: { metrics: Metrics; log: Logger }, vm: Pick<VmRow, 'id' | 'class' | 'provider'>, err: HostKeyMismatchError | HostKeyUnpinnedError): void {
  if (err instanceof HostKeyMismatchError) {
    d.metrics.hostKeyMismatches.inc({ provider: vm.provider, class: vm.class });
    d.log.warn({ vm: vm.id, class: vm.class, target: err.target, expected: err.expected, got: err.got }, 'SSH host key mismatch: the VM address answers with another host key; failing the VM, sending nothing');
  } else {
    d.log.warn({ vm: vm.id, class: vm.class }, 'VM has no pinned SSH host key; failing it, sending nothing');
  }
}
