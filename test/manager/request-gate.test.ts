import { describe, expect, it } from 'vitest';
import { RequestGate } from '../../src/manager/request-gate.js';

describe('request gate of a class', () => {
  it('parks extra slots while closed and wakes all of them when a job arrives', async () => {
    const gate = new RequestGate();
    const ac = new AbortController();
    let woken = 0;
    const waits = [gate.wait(ac.signal), gate.wait(ac.signal), gate.wait(ac.signal)].map((p) => p.then(() => woken++));
    await new Promise((r) => setTimeout(r, 20));
    expect(woken).toBe(0);
    gate.open();
    await Promise.all(waits);
    expect(woken).toBe(3);
    // Open: a wait passes at once; closed again by an empty answer, it parks again.
    await gate.wait(ac.signal);
    gate.close();
    let passed = false;
    void gate.wait(ac.signal).then(() => (passed = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(passed).toBe(false);
    ac.abort();
    await new Promise((r) => setTimeout(r, 0));
    expect(passed).toBe(true);
  });

  it('lets a stopped slot through at once', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(new RequestGate().wait(ac.signal)).resolves.toBeUndefined();
  });
});
