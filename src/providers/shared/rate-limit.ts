// A token bucket per cloud account (GCE project, EC2 account+region): every call to it from this
// process shares it.

export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    readonly ratePerSecond: number,
    readonly burst: number = Math.max(1, Math.ceil(ratePerSecond)),
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = this.burst;
    this.last = now();
  }

  /** Milliseconds to wait before a token is free, taking it (pure bookkeeping). */
  reserve(): number {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.ratePerSecond);
    this.last = t;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.ratePerSecond) * 1000);
  }

  /** Resolves when the caller may make one call. */
  take(): Promise<void> {
    const wait = this.reserve();
    if (wait === 0) return Promise.resolve();
    return new Promise((r) => setTimeout(r, wait));
  }
}

const buckets = new Map<string, TokenBucket>();

/** The process-wide bucket of an account scope (the first caller's rate wins). */
export function projectBucket(scope: string, ratePerSecond: number): TokenBucket {
  let b = buckets.get(scope);
  if (!b) {
    b = new TokenBucket(ratePerSecond);
    buckets.set(scope, b);
  }
  return b;
}
