// Where the emulated clouds' VMs listen: each is a local sandbox on a loopback address and port
// of its own, where a real VM would answer on port 22. Test tools hand these to startShard as its
// connectOverride; the manager never learns the port from cloud data (metadata, tags), which
// anyone allowed to write those could point elsewhere.
import { join } from 'node:path';
import { files, readJson, type SandboxState } from '../src/providers/local/layout.js';
import type { ConnectEndpoint, ConnectOverride } from '../src/providers/provider.js';

/** The listening sandbox among `names` under `root` whose address is `internalIp`. */
function sandboxEndpoint(root: string, names: string[], internalIp: string): ConnectEndpoint | undefined {
  for (const name of names) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) continue;
    const state = readJson<SandboxState>(files(join(root, name)).state);
    if (state && state.host === internalIp) return { host: state.host, port: state.port };
  }
  return undefined;
}

/** GCE emulator VMs (sandboxes under `<dataDir>/gce-vms`, named by instance, `name.zone` when the name was taken). */
export function gceConnectOverride(gceDataDir: string): ConnectOverride {
  const root = join(gceDataDir, 'gce-vms');
  return (vm) => sandboxEndpoint(root, [vm.name, ...(vm.zone ? [`${vm.name}.${vm.zone}`] : [])], vm.internalIp);
}

/** EC2 emulator instances (sandboxes under `<dataDir>/ec2-vms`, named `ec2-<instance id>`). */
export function ec2ConnectOverride(ec2DataDir: string): ConnectOverride {
  const root = join(ec2DataDir, 'ec2-vms');
  return (vm) => (vm.cloudId ? sandboxEndpoint(root, [`ec2-${vm.cloudId}`], vm.internalIp) : undefined);
}

/** The first override that knows the VM (a shard on several emulated clouds). */
export function anyOf(...overrides: ConnectOverride[]): ConnectOverride {
  return (vm) => {
    for (const o of overrides) {
      const e = o(vm);
      if (e) return e;
    }
    return undefined;
  };
}
