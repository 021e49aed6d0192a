// A small semaphore: at most `max` of the wrapped calls run at once, the rest wait in order.
// The pool's background writes go through one, so a thousand boot probes finishing together
// queue here (no timeout) instead of in the database pool (10 s connection timeout).
export class Limiter {
  private active = 0;
  private readonly queue: (() => void)[] = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new Error(`limiter max must be a positive integer, got ${max}`);
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((resolve) => this.queue.push(resolve));
    else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.queue.shift();
      if (next) next(); // the slot passes straight to the next caller
      else this.active--;
    }
  }

  /** Calls running plus waiting (tests, metrics). */
  get pending(): number {
    return this.active + this.queue.length;
  }
}
