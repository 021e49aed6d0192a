// What the mac provider's two modes share: each class's machine profile and host fleet, the
// host records as of the last fleet tick, and the VMs being placed on hosts right now.
import { ProviderError } from '../provider.js';
import type { MacMachine } from './config.js';
import type { HostFleet, HostRecord } from './host-fleet.js';

export interface ClassFleet {
  machine: MacMachine;
  fleet: HostFleet;
}

/** A host whose macOS instance is up and whose Tart the manager may use. */
export function usable(h: HostRecord): boolean {
  return (h.state === 'ready' || h.state === 'busy') && !!h.data.privateIp;
}

export class MacHosts {
  /** Host records of every class, as of the last fleet tick. */
  records: HostRecord[] = [];
  /** VM name -> host record id, while the VM is being created there (its slot is taken). */
  readonly placing = new Map<string, string>();

  constructor(readonly classes: ReadonlyMap<string, ClassFleet>) {}

  machineOf(className: string): MacMachine {
    const c = this.classes.get(className);
    if (!c) throw new ProviderError('fatal', `classes.${className}: not a mac class of this shard`, { provider: 'mac' });
    return c.machine;
  }

  byId(id: string | undefined): HostRecord | undefined {
    return id ? this.records.find((h) => h.id === id) : undefined;
  }

  placingOn(hostId: string): number {
    let n = 0;
    for (const h of this.placing.values()) if (h === hostId) n++;
    return n;
  }

  /** Whether any class runs a whole Mac instance per job. */
  get hasInstanceClasses(): boolean {
    return [...this.classes.values()].some((c) => c.machine.perJob === 'instance');
  }
}
