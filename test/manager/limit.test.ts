// The limiter that bounds the pool's background database writes.
import { describe, expect, it } from 'vitest';
import { Limiter } from '../../src/manager/limit.js';

describe('Limiter', () => {
  it('runs at most max calls at once, the rest in order as slots free up', async () => {
    const limit = new Limiter(3);
    let running = 0;
    let peak = 0;
    const order: number[] = [];
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        limit.run(async () => {
          peak = Math.max(peak, ++running);
          order.push(i);
          await new Promise((r) => setTimeout(r, 5));
          running--;
          return i * 2;
        }),
      ),
    );
    expect(peak).toBe(3);
    expect(order).toEqual([...Array(20).keys()]);
    expect(results).toEqual(Array.from({ length: 20 }, (_, i) => i * 2));
    expect(limit.pending).toBe(0);
  });

  it('frees the slot of a call that throws', async () => {
    const limit = new Limiter(1);
    await expect(limit.run(async () => Promise.reject(new Error('db down')))).rejects.toThrow('db down');
    expect(await limit.run(async () => 'next')).toBe('next');
    expect(limit.pending).toBe(0);
  });

  it('refuses a max that is not a positive integer', () => {
    expect(() => new Limiter(0)).toThrow('limiter max must be a positive integer, got 0');
  });
});
