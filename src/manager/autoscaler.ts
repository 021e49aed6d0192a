// Pure pool policy: given what a class holds, decide what to create and what to retire.
// No I/O, no clock reads: the caller passes `now`, so the simulator can run it on virtual time.
import type { PoolConfig } from '../config/types.js';

export interface ClassCounts {
  /** requested + creating + booting: on their way to warm. */
  pending: number;
  /** Warm VMs, including one reserved by a job request in flight (it mostly stays warm). */
  ready: number;
  /** assigned + running. */
  busy: number;
  /** deleting + failed: still in the cloud, on their way out. */
  leaving: number;
}

export interface ReadyVm {
  id: string;
  readyAt: number;
}

export interface ScaleDecision {
  create: number;
  /** Warm VMs to retire (surplus above `idle`). */
  retire: string[];
  /** The class wanted more VMs than `max` allows. */
  capped: boolean;
}

export interface ScaleInput {
  pool: PoolConfig;
  counts: ClassCounts;
  /** Warm VMs that may be retired (not reserved), oldest first. */
  readyVms: ReadyVm[];
  /** Draining: no new VMs, and warm ones are retired. */
  frozen: boolean;
  /** The cloud refused to grow the class (quota exhausted): create nothing, keep what is warm. */
  blocked?: boolean;
  /** Warm VMs above `idle` older than this are retired; keeps a lowered `idle` effective. */
  idleTimeMs: number;
  now: number;
}

export function decideScale(input: ScaleInput): ScaleDecision {
  const { pool, counts } = input;
  const live = counts.pending + counts.ready + counts.busy + counts.leaving;
  const warmSoon = counts.pending + counts.ready;
  let create = 0;
  let capped = false;
  if (!input.frozen && !input.blocked && warmSoon < pool.idle) {
    const want = pool.idle - warmSoon;
    const room = Math.max(0, pool.max - live);
    create = Math.min(want, room);
    capped = create < want;
  }
  const surplus = input.frozen ? counts.ready : counts.ready + counts.pending - pool.idle;
  const retire: string[] = [];
  if (surplus > 0) {
    for (const vm of input.readyVms) {
      if (retire.length >= Math.min(surplus, counts.ready)) break;
      if (input.frozen || input.now - vm.readyAt >= input.idleTimeMs) retire.push(vm.id);
    }
  }
  return { create, retire, capped };
}
