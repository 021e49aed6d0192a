// Shared by the request slots of one class (classes.<name>.requestConcurrency). Slot 0 always
// polls; the other slots ask GitLab only while the gate is open: it opens when any slot is handed
// a job and closes at the first empty answer (or error). So an idle GitLab sees the request rate
// of one slot, and a burst is drained by all of them.

export class RequestGate {
  private opened = false;
  private readonly waiters = new Set<() => void>();

  get isOpen(): boolean {
    return this.opened;
  }

  /** A job arrived: wake every parked slot. */
  open(): void {
    this.opened = true;
    for (const w of [...this.waiters]) w();
  }

  /** GitLab had nothing (or failed): extra slots park at their next turn. */
  close(): void {
    this.opened = false;
  }

  /** Resolves at once while open, else when opened or on abort. */
  wait(signal: AbortSignal): Promise<void> {
    if (this.opened || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.waiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}
