// A shard with one gcp class against the GCE emulator and the GitLab emulator (end-to-end tests).
import { join } from 'node:path';
import { startGceEmulator, type GceEmulator } from '../../emulators/gce/server.js';
import type { GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import type { Shard } from '../../src/manager/shard.js';
import { LABEL_VM } from '../../src/providers/provider.js';
import { startCloudShard } from './cloud-shard.js';

export interface GceShard {
  gce: GceEmulator;
  gitlab: GitLabEmulator;
  shard: Shard;
  /** The emulator's instance behind a VM row, if it still exists. */
  instanceOf(vmId: string): ReturnType<GceEmulator['instances']>[number] | undefined;
  close(): Promise<void>;
}

export async function startGceShard(o: {
  shard: string; className: string; token: string; pool: string; bootDelayMs?: number;
  /** The shard's `isolation:` mapping (YAML flow), and the project's firewall rules. */
  isolation?: string; firewalls?: Record<string, unknown>[];
  /** Runs before the shard starts (e.g. to set emulator faults). */
  beforeStart?: (gce: GceEmulator) => void;
  /** Put first on every VM's PATH (programs the VM image has or lacks). */
  extraPathDir?: string;
  classExtra?: string;
  bootTimeout?: string;
  adminToken?: string;
}): Promise<GceShard> {
  const project = `${o.shard}-project`;
  const env = await startCloudShard({
    ...o,
    provider: 'gcp',
    cloud: async (dir) => {
      const gce = await startGceEmulator({ dataDir: join(dir, 'gce'), bootDelayMs: o.bootDelayMs ?? 0, ...(o.extraPathDir ? { extraPathDir: o.extraPathDir } : {}) });
      if (o.firewalls) gce.setFirewalls(project, o.firewalls);
      o.beforeStart?.(gce);
      return gce;
    },
    machine: '{ machineType: n2d-standard-2, image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64, zones: ["us-central1-a"], networkTags: [runner-vm] }',
    providerSettings: (gce) => `{ project: ${project}, endpoint: "${gce.url}", requestsPerSecond: 1000, callTimeout: 5s, retryBase: 20ms }`,
  });
  const gce = env.cloud;
  return { gce, gitlab: env.gitlab, shard: env.shard, close: env.close, instanceOf: (vmId) => gce.instances().find((i) => i['labels']?.[LABEL_VM] === vmId) };
}
