// SSH sessions the boot probe opened, kept so the VM's first job reuses the connection instead of
// opening another (handed over once); closed when the VM leaves the warm tier.
import type { SshSession } from '../../connect/ssh.js';

export class Sessions {
  private readonly open = new Map<string, SshSession>();

  keep(vmId: string, session: SshSession): void {
    this.open.set(vmId, session);
  }

  /** The VM's session, handed over once (the caller closes it). */
  take(vmId: string): SshSession | undefined {
    const s = this.open.get(vmId);
    this.open.delete(vmId);
    return s;
  }

  close(vmId: string): void {
    this.take(vmId)?.close();
  }

  closeAll(): void {
    for (const id of [...this.open.keys()]) this.close(id);
  }
}
