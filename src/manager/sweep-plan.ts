// The reconciler sweep's decisions, pure: which listed VMs are orphans to delete, which rows are
// lost (the cloud no longer has their VM) and which rows are stuck mid-creation. The reconciler
// gathers the rows and the listing, calls these, and carries out what they return.
import { absentFrom, type CloudListing, type CloudVm } from '../providers/provider.js';
import type { VmState } from './vm-states.js';

/** What the sweep needs of a VM row. */
export interface SweepRow {
  id: string;
  name: string;
  class: string;
  provider: string;
  state: string;
  zone: string | null;
  cloud_id: string | null;
  updated_at: Date;
}

/**
 * How long a VM must have been in its state before its absence from a complete list counts.
 * EC2 lists are eventually consistent (a just-launched instance can be missing from a filtered
 * DescribeInstances, or unknown by id, for a while; AWS advises backing off up to minutes), and a
 * VM seen on one list may be missed by the next while its zone's answer was being rebuilt.
 */
export const LOST_GRACE_MS = 3 * 60_000;

/** Past the class's boot timeout, how much longer a row may sit in requested/creating. */
export const STUCK_MARGIN_MS = 60_000;

/** States whose VM should be in the cloud; their absence (known, past grace) is a loss. */
const EXPECTED_IN_CLOUD: readonly VmState[] = ['booting', 'ready', 'stopped', 'assigned', 'running'];

/**
 * Listed VMs the database does not know as live: labelled ones by VM id; unlabelled ones (a
 * batch create labels its instances just after making them) by name, and only while no create
 * of this provider is in flight, since an unlabelled instance may be one of that batch.
 */
export function strays(cloud: CloudVm[], live: Pick<SweepRow, 'id' | 'name' | 'provider' | 'state'>[], provider: string): CloudVm[] {
  const liveIds = new Set(live.map((r) => r.id));
  const liveNames = new Set(live.map((r) => r.name));
  const creating = live.some((r) => r.provider === provider && (r.state === 'requested' || r.state === 'creating'));
  return cloud.filter((c) => (c.vmId ? !liveIds.has(c.vmId) : !liveNames.has(c.name) && !creating));
}

/**
 * Rows of `provider` whose VM is known gone: absent from a listing that answered for its zone
 * (or listed as terminated), after at least `graceMs` in their current state. A zone that did
 * not answer makes its VMs unknown, never lost.
 */
export function lostRows<R extends SweepRow>(rows: R[], listing: CloudListing, provider: string, now: number, graceMs: number): R[] {
  return rows.filter(
    (r) =>
      r.provider === provider &&
      EXPECTED_IN_CLOUD.includes(r.state as VmState) &&
      now - r.updated_at.getTime() >= graceMs &&
      absentFrom(listing, { vmId: r.id, name: r.name, cloudId: r.cloud_id, zone: r.zone }),
  );
}

/** Rows stuck in requested/creating past their class's boot timeout (plus a margin). */
export function stuckRows<R extends SweepRow>(rows: R[], bootTimeoutMs: (className: string) => number, now: number, marginMs = STUCK_MARGIN_MS): R[] {
  return rows.filter((r) => (r.state === 'requested' || r.state === 'creating') && now - r.updated_at.getTime() > bootTimeoutMs(r.class) + marginMs);
}
