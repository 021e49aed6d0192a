// Replaces masked values with [MASKED] in a byte stream, also when a value is split across
// chunks: a chunk's tail that could still grow into a secret is held back until the next one.

const MASK = Buffer.from('[MASKED]');

export class Masker {
  private readonly secrets: Buffer[];
  private held: Buffer = Buffer.alloc(0);

  constructor(secrets: string[]) {
    // Longest first, so a secret containing another is masked whole.
    this.secrets = [...new Set(secrets.filter((s) => s.length > 0))].map((s) => Buffer.from(s)).sort((a, b) => b.length - a.length);
  }

  push(chunk: Buffer): Buffer {
    if (!this.secrets.length) return chunk;
    const data = this.held.length ? Buffer.concat([this.held, chunk]) : chunk;
    const { out, consumed } = this.scan(data, false);
    this.held = Buffer.from(data.subarray(consumed));
    return out;
  }

  /** Flush the held-back tail at the end of the stream. */
  end(): Buffer {
    const { out } = this.scan(this.held, true);
    this.held = Buffer.alloc(0);
    return out;
  }

  private scan(data: Buffer, final: boolean): { out: Buffer; consumed: number } {
    const parts: Buffer[] = [];
    let start = 0;
    let i = 0;
    while (i < data.length) {
      let matched: Buffer | null = null;
      const b = data[i];
      // Longest first: a longer secret that is still a prefix at the end of the data wins over
      // a shorter one that matches in full, else the longer one's tail would leak next chunk.
      for (const s of this.secrets) {
        if (s[0] !== b) continue;
        const n = Math.min(s.length, data.length - i);
        if (data.compare(s, 0, n, i, i + n) !== 0) continue;
        if (n === s.length) {
          matched = s;
          break;
        }
        if (!final) {
          parts.push(data.subarray(start, i));
          return { out: Buffer.concat(parts), consumed: i };
        }
      }
      if (matched) {
        parts.push(data.subarray(start, i), MASK);
        i += matched.length;
        start = i;
        continue;
      }
      i++;
    }
    parts.push(data.subarray(start));
    return { out: Buffer.concat(parts), consumed: data.length };
  }
}
