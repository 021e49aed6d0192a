// Time as a dependency: production uses the real clock, the simulator and policy tests a
// virtual one, so the same decisions run in both.

export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve) => {
      if (signal?.aborted) return resolve();
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        signal?.removeEventListener('abort', done);
        resolve();
      }
      signal?.addEventListener('abort', done, { once: true });
    }),
};

/** A clock that moves only when told; sleepers wake in time order. */
export class VirtualClock implements Clock {
  private t: number;
  private sleepers: { at: number; resolve: () => void }[] = [];
  constructor(start = 0) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const entry = { at: this.t + Math.max(0, ms), resolve };
      this.sleepers.push(entry);
      this.sleepers.sort((a, b) => a.at - b.at);
      signal?.addEventListener('abort', () => {
        this.sleepers = this.sleepers.filter((s) => s !== entry);
        resolve();
      }, { once: true });
    });
  }
  /** Move time forward, waking sleepers due on the way. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    while (this.sleepers.length && this.sleepers[0]!.at <= end) {
      const s = this.sleepers.shift()!;
      this.t = s.at;
      s.resolve();
      await Promise.resolve();
    }
    this.t = end;
  }
}
