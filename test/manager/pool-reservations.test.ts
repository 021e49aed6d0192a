// What the pool has promised that the rows do not show yet: warm VMs held for job requests, and
// cold-start room claims plus VMs created since the last read, counted against the class's room.
import { describe, expect, it } from 'vitest';
import { Reservations } from '../../src/manager/pool/reservations.js';

describe('Reservations', () => {
  it('holds a warm VM until released, or until it is no longer warm', () => {
    const r = new Reservations();
    r.hold('a');
    r.hold('b');
    expect(r.has('a')).toBe(true);
    r.release('a');
    expect(r.has('a')).toBe(false);
    r.keepOnly(new Set(['c'])); // b was bound to a job (or deleted)
    expect(r.has('b')).toBe(false);
    expect([...r.reserved]).toEqual([]);
  });

  it('claims room only while it fits beside what is already promised', () => {
    const r = new Reservations();
    const fits = (n: number) => n < 2;
    const a = r.claim('small', fits);
    const b = r.claim('small', fits);
    expect(a).not.toBeNull();
    expect(b).not.toBe(a);
    expect(r.claim('small', fits)).toBeNull();
    expect(r.claim('big', fits)).not.toBeNull(); // room is per class
    r.releaseRoom('small', a!);
    expect(r.promised('small')).toBe(1);
    expect(r.claim('small', fits)).not.toBeNull();
  });

  it('keeps a claim promised as the VM it became, until a tick reads that VM', () => {
    const r = new Reservations();
    const claim = r.claim('small', () => true)!;
    r.launched('small', 'vm1', claim);
    r.launched('small', 'vm2'); // a VM the pool made itself
    expect(r.promised('small')).toBe(2);
    r.releaseRoom('small', claim); // gone already: nothing changes
    expect(r.promised('small')).toBe(2);
    r.seen(new Set(['vm1']));
    expect(r.promised('small')).toBe(1);
    r.seen(new Set(['vm2', 'other']));
    expect(r.promised('small')).toBe(0);
  });
});
