import { describe, expect, it } from 'vitest';
import { Masker } from '../../src/gitlab/mask.js';

function run(secrets: string[], chunks: string[]): string {
  const m = new Masker(secrets);
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

  it('agrees with a whole-string reference on random streams cut at random points', () => {
    let seed = 12345;
    const rnd = (n: number) => {
      // mulberry32: a small PRNG with good low bits, seeded so a failure replays.
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return (((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n | 0;
    };
    const alphabet = 'ab c';
    const word = (min: number, max: number) => Array.from({ length: min + rnd(max - min + 1) }, () => alphabet[rnd(alphabet.length)]).join('');
    for (let round = 0; round < 400; round++) {
      const secrets = Array.from({ length: 1 + rnd(3) }, () => word(1, 4));
      const text = word(0, 40);
      const cuts = Array.from({ length: rnd(6) }, () => rnd(text.length + 1)).sort((x, y) => x - y);
      const chunks = [0, ...cuts].map((c, k, all) => text.slice(c, all[k + 1] ?? text.length));
      expect(run(secrets, chunks), JSON.stringify({ secrets, chunks })).toBe(reference(secrets, text));
    }
  });

  it('passes output through untouched when there are no secrets (empty values ignored)', () => {
    const m = new Masker(['']);
    expect(m.push(Buffer.from('abc')).toString()).toBe('abc');
    expect(m.end().length).toBe(0);
  });
});

/** Left to right; at each position the longest secret that matches there. */
function reference(secrets: string[], text: string): string {
  const sorted = [...new Set(secrets)].filter((s) => s).sort((a, b) => b.length - a.length);
  let out = '';
  for (let i = 0; i < text.length; ) {
    const hit = sorted.find((s) => text.startsWith(s, i));
    if (hit) {
      out += '[MASKED]';
      i += hit.length;
    } else out += text[i++];
  }
  return out;
}
