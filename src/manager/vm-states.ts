// The VM state machine as one table (docs/architecture.md "VM states"). Every transition is checked here
// and recorded in vm_events by the store.

export const VM_STATES = [
  'requested', // row written, cloud not yet asked
  'creating', // cloud create call in flight
  'booting', // cloud accepted; waiting for the VM to answer SSH
  'ready', // warm: booted, reachable, never used
  'assigned', // bound to a job in the same transaction as the job row
  'running', // the job's script runs on it
  'stopped', // standby tier: booted once, stopped, never used
  'deleting', // delete intent written; cloud delete may be in flight
  'deleted',
  'failed', // broken; still to be deleted in the cloud
] as const;
export type VmState = (typeof VM_STATES)[number];

const TRANSITIONS: Record<VmState, readonly VmState[]> = {
  requested: ['creating', 'deleting', 'failed'],
  creating: ['booting', 'deleting', 'failed'],
  booting: ['ready', 'deleting', 'failed'],
  ready: ['assigned', 'stopped', 'deleting', 'failed'],
  assigned: ['running', 'deleting', 'failed'],
  running: ['deleting', 'failed'],
  stopped: ['booting', 'deleting', 'failed'],
  deleting: ['deleted', 'failed'],
  failed: ['deleting'],
  deleted: [],
};

export function canTransition(from: VmState, to: VmState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function allowedFrom(to: VmState): VmState[] {
  return VM_STATES.filter((s) => TRANSITIONS[s].includes(to));
}

/** States in which the VM may exist in the cloud and counts toward the class's `max`. */
export const LIVE_STATES: readonly VmState[] = ['requested', 'creating', 'booting', 'ready', 'assigned', 'running', 'stopped', 'deleting', 'failed'];

/** States of a VM on its way to being warm. */
export const PENDING_STATES: readonly VmState[] = ['requested', 'creating', 'booting'];

export function isVmState(s: string): s is VmState {
  return (VM_STATES as readonly string[]).includes(s);
}
