import { describe, expect, it } from 'vitest';
import { type Cidr, blockSize, contains, firstFree, formatCidr, isPrivate, overlaps, parseCidr } from '../../src/isolation/cidr.js';

const c = parseCidr;

describe('CIDR math', () => {
  it('parses and formats blocks, to the ends of the address space', () => {
    for (const s of ['10.12.8.0/21', '0.0.0.0/0', '255.255.255.255/32', '192.168.0.0/16', '172.16.0.0/12']) expect(formatCidr(c(s))).toBe(s);
    expect(c('10.12.8.0/21')).toEqual({ base: ((10 * 256 + 12) * 256 + 8) * 256, prefix: 21 });
  });

  it('names what is wrong with a bad CIDR', () => {
    expect(() => c('10.12.9.0/21')).toThrow('10.12.9.0/21: host bits are set; the network is 10.12.8.0/21');
    expect(() => c('10.256.0.0/16')).toThrow('an octet is above 255');
    expect(() => c('10.0.0.0/33')).toThrow('prefix length above 32');
    expect(() => c('10.0.0/8')).toThrow('expected an IPv4 CIDR like 10.12.8.0/21, got "10.0.0/8"');
  });

  it('tells overlap and containment, nested and adjacent', () => {
    expect(overlaps(c('10.12.0.0/16'), c('10.12.8.0/21'))).toBe(true);
    expect(overlaps(c('10.12.8.0/21'), c('10.12.0.0/16'))).toBe(true);
    expect(overlaps(c('10.12.8.0/21'), c('10.12.16.0/21'))).toBe(false); // adjacent
    expect(overlaps(c('10.12.0.0/24'), c('10.12.0.128/25'))).toBe(true);
    expect(contains(c('10.0.0.0/8'), c('10.14.104.0/21'))).toBe(true);
    expect(contains(c('10.14.104.0/21'), c('10.0.0.0/8'))).toBe(false);
    expect(isPrivate(c('10.14.104.0/21'))).toBe(true);
    expect(isPrivate(c('172.32.0.0/16'))).toBe(false);
    expect(isPrivate(c('100.64.0.0/10'))).toBe(false);
  });

  it('finds the lowest free aligned block, around used blocks of any size', () => {
    const within = c('10.12.0.0/16');
    expect(firstFree(within, 21, [])).toEqual(c('10.12.0.0/21'));
    // A /24 at the start takes the whole first /21; three /21 follow it.
    expect(firstFree(within, 21, ['10.12.0.0/24', '10.12.8.0/21', '10.12.16.0/21', '10.12.24.0/21'].map(c))).toEqual(c('10.12.32.0/21'));
    // A hole too small for a /21 is skipped; one big enough is used.
    expect(firstFree(within, 21, ['10.12.0.0/21', '10.12.12.0/22', '10.12.24.0/21'].map(c))).toEqual(c('10.12.16.0/21'));
    // Used blocks outside the range do not matter; a bigger block covering it fills it.
    expect(firstFree(within, 21, [c('10.13.0.0/16')])).toEqual(c('10.12.0.0/21'));
    expect(firstFree(within, 21, [c('10.0.0.0/8')])).toBeNull();
    expect(firstFree(c('10.12.0.0/20'), 21, ['10.12.0.0/21', '10.12.8.0/21'].map(c))).toBeNull();
    expect(firstFree(c('10.12.0.0/20'), 16, [])).toBeNull(); // the block is bigger than the range
  });

  it('agrees with a block-by-block search on random registries', () => {
    let seed = 42;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    const within = c('10.20.0.0/18');
    for (let round = 0; round < 300; round++) {
      const used: Cidr[] = [];
      for (let i = rnd(30); i > 0; i--) {
        const prefix = 19 + rnd(10);
        const size = blockSize(prefix);
        used.push({ base: within.base - 2 * 2 ** 14 + Math.floor(rnd(6 * 2 ** 14) / size) * size, prefix });
      }
      const prefix = 20 + rnd(8);
      const size = blockSize(prefix);
      let want: Cidr | null = null;
      for (let at = within.base; at + size <= within.base + blockSize(within.prefix); at += size) {
        if (!used.some((u) => overlaps(u, { base: at, prefix }))) {
          want = { base: at, prefix };
          break;
        }
      }
      expect(firstFree(within, prefix, used)).toEqual(want);
    }
  });
});
