// A shard with one aws class against the EC2 emulator and the GitLab emulator (end-to-end tests).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import { startEc2Emulator, type Ec2Emulator } from '../../src/emulators/ec2/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { LABEL_VM } from '../../src/providers/provider.js';

export interface Ec2Shard {
  ec2: Ec2Emulator;
  gitlab: GitLabEmulator;
  shard: Shard;
  /** The VM's instance is gone (terminated) from the emulator. */
  gone(vmId: string): boolean;
  close(): Promise<void>;
}

export async function startEc2Shard(o: { shard: string; className: string; token: string; pool: string; subnets?: string }): Promise<Ec2Shard> {
  const dir = mkdtempSync(join(tmpdir(), `rf-${o.shard}-`));
  const ec2 = await startEc2Emulator({ dataDir: join(dir, 'ec2'), bootDelayMs: 0 });
  const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
  const config = parseConfig(`
shard: ${o.shard}
database: { url: "pglite:memory" }
http: { listen: "127.0.0.1:0" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  ${o.className}:
    runnerToken: "${o.token}"
    provider: aws
    pool: ${o.pool}
    bootTimeout: 30s
    machine: { instanceType: c6i.large, imageId: ami-0123456789abcdef0, subnets: ${o.subnets ?? '[subnet-0aaa1111]'}, securityGroupIds: [sg-0ccc3333] }
providers:
  aws: { region: us-east-1, endpoint: "${ec2.url}", requestsPerSecond: 1000, retryBase: 20ms, pollInterval: 200ms }
dataDir: "${dir}"
secrets: { key: "e2e-ec2-secret-key-0123456789abcdef" }
log: { level: warn }
`);
  const shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false });
  return {
    ec2, gitlab, shard,
    gone: (vmId) => !ec2.instances().some((i) => i.tags[LABEL_VM] === vmId && i.state !== 'terminated'),
    async close() {
      await shard.drain({ timeoutMs: 20_000 });
      await gitlab.close();
      await ec2.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
