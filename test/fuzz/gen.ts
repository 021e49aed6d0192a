// Seeded generator of hostile inputs for the fuzz suite: the same seed gives the same inputs, so a
// failure names its seed and case number and replays exactly (FUZZ_SEED overrides the seed).
import { rng } from '../../src/sim/random.js';

export const FUZZ_SEED = Number(process.env['FUZZ_SEED'] ?? 20261203);

export class Gen {
  readonly random: () => number;

  constructor(readonly seed: number = FUZZ_SEED) {
    this.random = rng(seed);
  }

  int(lo: number, hi: number): number {
    return lo + Math.floor(this.random() * (hi - lo + 1));
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.random() * xs.length)]!;
  }

  chance(p: number): boolean {
    return this.random() < p;
  }

  /** A string an attacker or a broken peer would send. */
  hostileString(): string {
    return this.pick(HOSTILE_STRINGS)();
  }

  /** A value of a wrong or extreme kind for any field. */
  hostileValue(depth = 0): unknown {
    const kind = this.int(0, depth > 2 ? 9 : 12);
    switch (kind) {
      case 0: return this.hostileString();
      case 1: return this.pick(HOSTILE_NUMBERS);
      case 2: return String(this.pick(HOSTILE_NUMBERS));
      case 3: return null;
      case 4: return this.pick([true, false]);
      case 5: return [];
      case 6: return {};
      case 7: return undefined;
      case 8: return deepNest(this.int(20, 1500));
      case 9: return JSON.parse('{"__proto__": {"polluted": true}, "constructor": {"prototype": {"polluted": true}}}');
      case 10: return [this.hostileValue(depth + 1), this.hostileValue(depth + 1)];
      case 11: return { [this.hostileString().slice(0, 50)]: this.hostileValue(depth + 1) };
      default: return this.hostileString().repeat(2);
    }
  }

  /** `text` cut at a random point (never whole, never empty unless it was). */
  truncate(text: string): string {
    if (text.length < 2) return '';
    return text.slice(0, this.int(1, text.length - 1));
  }

  /**
   * One mutation of a JSON-like document: a field at a random path set to a hostile value,
   * deleted, or its container replaced. Returns the mutated copy and the path it touched.
   */
  mutate(doc: unknown): { value: unknown; path: string[] } {
    const copy = structuredClone(doc) as Record<string, unknown>;
    const path: string[] = [];
    let node: unknown = copy;
    // Walk down a random number of levels through objects and arrays.
    for (;;) {
      if (node === null || typeof node !== 'object') break;
      const keys = Object.keys(node);
      if (keys.length === 0) break;
      const k = this.pick(keys);
      const child = (node as Record<string, unknown>)[k];
      path.push(k);
      if (child === null || typeof child !== 'object' || this.chance(0.35)) {
        const parent = node as Record<string, unknown>;
        if (this.chance(0.2) && !Array.isArray(parent)) delete parent[k];
        else parent[k] = this.hostileValue();
        return { value: copy, path };
      }
      node = child;
    }
    return { value: this.hostileValue(), path: [] };
  }
}

export function deepNest(depth: number): unknown {
  let v: unknown = 'bottom';
  for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { a: v };
  return v;
}

const HOSTILE_NUMBERS: readonly number[] = [
  0, -0, -1, 1.5, Number.NaN, Infinity, -Infinity, 1e308, -1e308, 5e-324, 2 ** 53, 2 ** 53 + 2, 2 ** 31, -(2 ** 63), 9007199254740993,
];

/** Generators, so the huge ones are built only when picked. */
const HOSTILE_STRINGS: readonly (() => string)[] = [
  () => '',
  () => ' ',
  () => 'a'.repeat(1_000_000),
  () => '\u0000',
  () => 'abc\u0000def',
  () => '\ud800',
  () => 'x\udc00y\ud83d',
  () => '\u202eevil\u202c',
  () => '\u200f\u0627\u0644\u200e',
  () => '$(rm -rf /)',
  () => '`id`; echo pwned | sh && cat /etc/passwd > /dev/null',
  () => "'; DROP TABLE jobs; --",
  () => '__proto__',
  () => 'constructor',
  () => '{{7*7}}${7*7}%s%n',
  () => '../../../../etc/passwd',
  () => '\r\nX-Injected: 1',
  () => 'NaN',
  () => '1e308',
  () => '-0',
  () => '0x1F',
  () => '007',
  () => 'true',
  () => 'null',
  () => '[]',
  () => '{"a":',
  () => '😀'.repeat(1000),
  () => '\u00ff\u00fe',
  () => '%00%ff%u202e',
];
