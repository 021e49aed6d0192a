// A shard with one aws class against the EC2 emulator and the GitLab emulator (end-to-end tests).
import { join } from 'node:path';
import { startEc2Emulator, type Ec2Emulator } from '../../emulators/ec2/server.js';
import type { GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import type { Shard } from '../../src/manager/shard.js';
import { LABEL_VM } from '../../src/providers/provider.js';
import { startCloudShard } from './cloud-shard.js';

export interface Ec2Shard {
  ec2: Ec2Emulator;
  gitlab: GitLabEmulator;
  shard: Shard;
  /** The VM's instance is gone (terminated) from the emulator. */
  gone(vmId: string): boolean;
  close(): Promise<void>;
}

export async function startEc2Shard(o: { shard: string; className: string; token: string; pool: string; subnets?: string }): Promise<Ec2Shard> {
  const env = await startCloudShard({
    ...o,
    provider: 'aws',
    cloud: (dir) => startEc2Emulator({ dataDir: join(dir, 'ec2'), bootDelayMs: 0 }),
    machine: `{ instanceType: c6i.large, imageId: ami-0123456789abcdef0, subnets: ${o.subnets ?? '[subnet-0aaa1111]'}, securityGroupIds: [sg-0ccc3333] }`,
    providerSettings: (ec2) => `{ region: us-east-1, endpoint: "${ec2.url}", requestsPerSecond: 1000, retryBase: 20ms, pollInterval: 200ms }`,
  });
  const ec2 = env.cloud;
  return {
    ec2, gitlab: env.gitlab, shard: env.shard, close: env.close,
    gone: (vmId) => !ec2.instances().some((i) => i.tags[LABEL_VM] === vmId && i.state !== 'terminated'),
  };
}
