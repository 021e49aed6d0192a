import { describe, expect, it } from 'vitest';
import { MaskAutomaton, Masker } from '../../src/gitlab/mask.js';

/** The masker's output for `chunks`; `sparse`: only the root's moves precomputed, the rest walk the trie. */
function run(secrets: string[], chunks: string[], sparse = false): string {
  const m = new Masker(sparse ? new MaskAutomaton(secrets.map((s) => Buffer.from(s)), { denseEntries: 0 }) : secrets);
  return Buffer.concat([...chunks.map((c) => m.push(Buffer.from(c))), m.end()]).toString();
}

describe('Masker', () => {
  const secret = 'hunter2-S3cret';
  const text = `before ${secret} middle ${secret}${secret} after`;
  const want = 'before [MASKED] middle [MASKED][MASKED] after';

  it('masks every occurrence in one chunk', () => {
    expect(run([secret], [text])).toBe(want);
  });

  it('masks a secret split across two chunks at every split point', () => {
    for (let i = 1; i < text.length; i++) expect(run([secret], [text.slice(0, i), text.slice(i)])).toBe(want);
  });

  it('masks when the stream arrives one byte at a time', () => {
    expect(run([secret], text.split(''))).toBe(want);
  });

  it('masks several secrets, the longer first when one contains the other', () => {
    expect(run(['abc', 'abcdef'], ['x abcdef y abc z'])).toBe('x [MASKED] y [MASKED] z');
  });

  it('does not hold back output that cannot become a secret', () => {
    const m = new Masker([secret]);
    expect(m.push(Buffer.from('plain line\n')).toString()).toBe('plain line\n');
    expect(m.push(Buffer.from('ends with hun')).toString()).toBe('ends with ');
    expect(m.push(Buffer.from('gry\n')).toString()).toBe('hungry\n');
  });

  it('flushes a held partial match at the end unchanged', () => {
    expect(run([secret], ['tail hunter'])).toBe('tail hunter');
  });

  it('masks the longer of two overlapping secrets when it is split at the point the shorter one ends', () => {
    const text = 'x abcdef y abc z abcd';
    const want = 'x [MASKED] y [MASKED] z [MASKED]d';
    expect(run(['abc', 'abcdef'], [text])).toBe(want);
    for (let i = 1; i < text.length; i++) expect(run(['abc', 'abcdef'], [text.slice(0, i), text.slice(i)]), `split at ${i}`).toBe(want);
  });

  it('finds a secret that starts inside a failed partial match (aab in aaab), at every split', () => {
    for (let i = 1; i < 4; i++) expect(run(['aab'], ['aaab'.slice(0, i), 'aaab'.slice(i)])).toBe('a[MASKED]');
  });

  it('masks several secrets split into three chunks at every pair of split points', () => {
    const secrets = ['tok-123456', 'p@ss w0rd', "it's"];
    const text = `a tok-123456 b p@ss w0rd c it's d tok-123456p@ss w0rd`;
    const want = 'a [MASKED] b [MASKED] c [MASKED] d [MASKED][MASKED]';
    for (let i = 1; i < text.length; i++)
      for (let j = i; j < text.length; j++) expect(run(secrets, [text.slice(0, i), text.slice(i, j), text.slice(j)])).toBe(want);
  });

  it('agrees with the naive reference on random streams cut at random points (small alphabet: many overlaps)', () => {
    const rnd = prng(12345);
    const alphabet = 'ab c';
    const word = (min: number, max: number) => Array.from({ length: min + rnd(max - min + 1) }, () => alphabet[rnd(alphabet.length)]).join('');
    for (let round = 0; round < 3000; round++) {
      const secrets = Array.from({ length: 1 + rnd(4) }, () => word(1, 6));
      const text = word(0, 60);
      const chunks = randomChunks(text, rnd);
      expect(run(secrets, chunks), JSON.stringify({ round, secrets, chunks })).toBe(reference(secrets, text));
      expect(run(secrets, chunks, true), JSON.stringify({ sparse: true, round, secrets, chunks })).toBe(reference(secrets, text));
    }
  });

  it('agrees with the naive reference with many secrets of many lengths over a larger alphabet', () => {
    const rnd = prng(777);
    const alphabet = 'abcdefgh\n';
    const word = (min: number, max: number) => Array.from({ length: min + rnd(max - min + 1) }, () => alphabet[rnd(alphabet.length)]).join('');
    for (let round = 0; round < 300; round++) {
      const secrets = Array.from({ length: 1 + rnd(60) }, () => word(2, 12));
      // Text built partly from the secrets, so matches, overlaps and near misses are common.
      let text = '';
      while (text.length < 400) text += rnd(3) ? word(0, 5) : secrets[rnd(secrets.length)]!.slice(rnd(3));
      const chunks = randomChunks(text, rnd);
      expect(run(secrets, chunks), JSON.stringify({ round, secrets, chunks })).toBe(reference(secrets, text));
      expect(run(secrets, chunks, true), JSON.stringify({ sparse: true, round, secrets, chunks })).toBe(reference(secrets, text));
    }
  });

  it('masks with an automaton of more than 65,536 nodes (32-bit moves) and 1,000 secrets', () => {
    const rnd = prng(99);
    const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
    const secrets = Array.from({ length: 1000 }, () => Array.from({ length: 80 }, () => chars[rnd(chars.length)]).join(''));
    const ac = new MaskAutomaton(secrets.map((s) => Buffer.from(s)));
    expect(ac.nodes).toBeGreaterThan(65_536);
    expect(ac.dense).toBeInstanceOf(Int32Array);
    const text = `a ${secrets[0]} b ${secrets[999]!.slice(0, 79)} c ${secrets[500]}${secrets[501]} d`;
    const chunks = randomChunks(text, rnd);
    const m = new Masker(ac);
    expect(Buffer.concat([...chunks.map((c) => m.push(Buffer.from(c))), m.end()]).toString()).toBe(`a [MASKED] b ${secrets[999]!.slice(0, 79)} c [MASKED][MASKED] d`);
  });

  it('masks the union of overlapping secrets: no byte of either shows, at every split', () => {
    const secrets = ['abcdefgh', 'efghijkl'];
    const text = 'x abcdefghijkl y efghijklabcdefgh z';
    expect(reference(secrets, text)).toBe('x [MASKED] y [MASKED][MASKED] z');
    for (let i = 0; i <= text.length; i++) expect(run(secrets, [text.slice(0, i), text.slice(i)]), `split at ${i}`).toBe('x [MASKED] y [MASKED][MASKED] z');
  });

  it('masks a secret that overlaps itself (aaaa in aaaaaa) as one span, and a long run without buffering it', () => {
    expect(run(['aaaa'], ['xaaaaaax'])).toBe('x[MASKED]x');
    const m = new Masker(['aaaa']);
    const outs: Buffer[] = [m.push(Buffer.from('x'))];
    for (let i = 0; i < 1000; i++) {
      outs.push(m.push(Buffer.alloc(1024, 'a')));
      expect(m.bufferedBytes).toBeLessThanOrEqual(4);
    }
    outs.push(m.push(Buffer.from('y')), m.end());
    expect(Buffer.concat(outs).toString()).toBe('x[MASKED]y');
  });

  it('holds back at most what could still become a secret (a partial match), never more', () => {
    const m = new Masker(['0123456789abcdef']);
    expect(m.push(Buffer.from('line one 0123')).toString()).toBe('line one ');
    expect(m.bufferedBytes).toBe(4);
    expect(m.push(Buffer.from('x\n')).toString()).toBe('0123x\n');
    expect(m.bufferedBytes).toBe(0);
  });

  it('masks multi-byte UTF-8 secrets split inside a character', () => {
    const secret = 'pässwört-ünïcode';
    const bytes = Buffer.from(`a ${secret} b`);
    for (let i = 1; i < bytes.length; i++) {
      const m = new Masker([secret]);
      expect(Buffer.concat([m.push(bytes.subarray(0, i)), m.push(bytes.subarray(i)), m.end()]).toString()).toBe('a [MASKED] b');
    }
  });

  it('does not keep the caller\'s chunk: a reused buffer does not change what is held', () => {
    const m = new Masker(['secret-value-1']);
    const buf = Buffer.from('abc secret-val');
    const first = m.push(buf).toString();
    buf.fill('z');
    expect(first + Buffer.concat([m.push(Buffer.from('ue-1 end')), m.end()]).toString()).toBe('abc [MASKED] end');
  });

  it('can be used again after end()', () => {
    const m = new Masker(['hunter2-S3cret']);
    expect(Buffer.concat([m.push(Buffer.from('a hunter2')), m.end()]).toString()).toBe('a hunter2');
    expect(Buffer.concat([m.push(Buffer.from('-S3cret hunter2-S3cret')), m.end()]).toString()).toBe('-S3cret [MASKED]');
  });

  it('passes output through untouched when there are no secrets (empty values ignored)', () => {
    const m = new Masker(['']);
    expect(m.push(Buffer.from('abc')).toString()).toBe('abc');
    expect(m.end().length).toBe(0);
  });
});

/**
 * Naive reference: every occurrence of every secret, overlapping occurrences merged into one
 * span, each span one [MASKED]; spans that only touch stay apart.
 */
function reference(secrets: string[], text: string): string {
  const spans: [number, number][] = [];
  for (const s of new Set(secrets)) {
    if (!s) continue;
    for (let i = text.indexOf(s); i >= 0; i = text.indexOf(s, i + 1)) spans.push([i, i + s.length]);
  }
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const merged: [number, number][] = [];
  for (const [a, b] of spans) {
    const last = merged[merged.length - 1];
    if (last && a < last[1]) last[1] = Math.max(last[1], b);
    else merged.push([a, b]);
  }
  let out = '';
  let at = 0;
  for (const [a, b] of merged) {
    out += `${text.slice(at, a)}[MASKED]`;
    at = b;
  }
  return out + text.slice(at);
}

/** mulberry32: a small PRNG with good low bits, seeded so a failure replays. */
function prng(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n) | 0;
  };
}

/** Cut `text` at random points (0-7 cuts, empty chunks included). */
function randomChunks(text: string, rnd: (n: number) => number): string[] {
  const cuts = Array.from({ length: rnd(8) }, () => rnd(text.length + 1)).sort((x, y) => x - y);
  return [0, ...cuts].map((c, k, all) => text.slice(c, all[k + 1] ?? text.length));
}
