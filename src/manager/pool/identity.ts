// A VM's identity: its id and name, its own key pairs, the reference providers take, and the
// spec of its create call.
import { randomBytes } from 'node:crypto';
import type { ClassConfig } from '../../config/types.js';
import type { VmRow } from '../../db/schema.js';
import { generateHostKey, generateVmKeyPair } from '../../isolation/keys.js';
import { LABEL_SHARD, LABEL_VM, type VmRef, type VmSpec } from '../../providers/provider.js';
import type { NewVmInput } from '../store.js';
import { WARM_MAX_AGE_MS } from './counts.js';

export function vmName(shard: string, vmId: string): string {
  return `rf-${shard}-${vmId}`;
}

/** A new VM's identity and its own key pair. */
export function newVm(shard: string, cls: Pick<ClassConfig, 'name' | 'provider'>): NewVmInput {
  const id = randomBytes(6).toString('hex');
  const name = vmName(shard, id);
  const keys = generateVmKeyPair(name);
  const host = generateHostKey(`${name}-host`);
  return { id, class: cls.name, provider: cls.provider, name, publicKey: keys.publicKey, privateKey: keys.privateKey, hostKey: host.privateKey, hostKeyFingerprint: host.fingerprint };
}

export function vmRef(row: Pick<VmRow, 'id' | 'name' | 'cloud_id' | 'zone'> & Partial<Pick<VmRow, 'created_at'>>): VmRef {
  return { vmId: row.id, name: row.name, cloudId: row.cloud_id, zone: row.zone, ...(row.created_at ? { createdAt: row.created_at.getTime() } : {}) };
}

/** When a VM's current boot began: its creation, or for a resume from standby its `booting` transition. */
export function bootStart(row: Pick<VmRow, 'created_at' | 'ready_at' | 'updated_at'>): number {
  return row.ready_at ? row.updated_at.getTime() : row.created_at.getTime();
}

/** The create call for a VM of the class; the cloud stops it on its own after a warm life, a boot and a job, if the manager never does. */
export function vmSpec(shard: string, cls: ClassConfig, vm: Pick<NewVmInput, 'id' | 'name' | 'publicKey' | 'hostKey'>): VmSpec {
  return {
    vmId: vm.id,
    name: vm.name,
    shard,
    className: cls.name,
    labels: { [LABEL_SHARD]: shard, [LABEL_VM]: vm.id },
    publicKey: vm.publicKey,
    ...(vm.hostKey ? { hostKey: vm.hostKey } : {}),
    machine: cls.machine,
    maxRunSeconds: Math.ceil((WARM_MAX_AGE_MS + cls.bootTimeoutMs + cls.jobTimeoutMs) / 1000) + 600,
  };
}
