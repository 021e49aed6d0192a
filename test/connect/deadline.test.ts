import { describe, expect, it } from 'vitest';
import { deadline } from '../../src/connect/deadline.js';
import { tuneHeap } from '../../src/cli/heap.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('deadline', () => {
  it('aborts after its time, with a TimeoutError', async () => {
    const d = deadline(30);
    await sleep(80);
    expect(d.signal.aborted).toBe(true);
    expect((d.signal.reason as Error).name).toBe('TimeoutError');
  });

  it('follows a linked signal', () => {
    const link = new AbortController();
    const d = deadline(10_000, link.signal);
    link.abort(new Error('shutdown'));
    expect(d.signal.aborted).toBe(true);
    expect((d.signal.reason as Error).message).toBe('shutdown');
    d.clear();
  });

  it('once cleared, neither its timer nor a linked signal aborts it, and it holds no listener', async () => {
    const link = new AbortController();
    let listeners = 0;
    const add = link.signal.addEventListener.bind(link.signal);
    const remove = link.signal.removeEventListener.bind(link.signal);
    link.signal.addEventListener = ((...a: Parameters<typeof add>) => (listeners++, add(...a))) as typeof add;
    link.signal.removeEventListener = ((...a: Parameters<typeof remove>) => (listeners--, remove(...a))) as typeof remove;
    const d = deadline(30, link.signal);
    expect(listeners).toBe(1);
    d.clear();
    expect(listeners).toBe(0);
    await sleep(80);
    link.abort();
    expect(d.signal.aborted).toBe(false);
  });
});

describe('tuneHeap', () => {
  it("leaves an operator's own --heap-growing-percent alone", () => {
    const before = process.env['NODE_OPTIONS'];
    process.env['NODE_OPTIONS'] = '--heap-growing-percent=80';
    try {
      expect(tuneHeap()).toBe(false);
    } finally {
      if (before === undefined) delete process.env['NODE_OPTIONS'];
      else process.env['NODE_OPTIONS'] = before;
    }
    expect(tuneHeap()).toBe(true);
  });
});
