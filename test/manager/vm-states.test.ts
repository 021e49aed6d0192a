import { describe, expect, it } from 'vitest';
import { allowedFrom, canTransition, VM_STATES } from '../../src/manager/vm-states.js';

describe('VM state machine', () => {
  it('follows the happy path requested -> deleted', () => {
    const path = ['requested', 'creating', 'booting', 'ready', 'assigned', 'running', 'deleting', 'deleted'] as const;
    for (let i = 1; i < path.length; i++) expect(canTransition(path[i - 1]!, path[i]!)).toBe(true);
  });

  it('never lets a VM that ran a job become warm again', () => {
    expect(canTransition('running', 'ready')).toBe(false);
    expect(allowedFrom('ready')).toEqual(['booting']);
  });

  it('allows failure from every live state and nothing out of deleted', () => {
    for (const s of VM_STATES) if (s !== 'deleted' && s !== 'failed') expect(canTransition(s, 'failed')).toBe(true);
    for (const s of VM_STATES) expect(canTransition('deleted', s)).toBe(false);
  });
});
