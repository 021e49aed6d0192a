// A shard with one gcp class against the GCE emulator and the GitLab emulator (end-to-end tests).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import { startGceEmulator, type GceEmulator } from '../../src/emulators/gce/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { LABEL_VM } from '../../src/providers/provider.js';

export interface GceShard {
  gce: GceEmulator;
  gitlab: GitLabEmulator;
  shard: Shard;
  /** The emulator's instance behind a VM row, if it still exists. */
  instanceOf(vmId: string): ReturnType<GceEmulator["instances"]>[number] | undefined;
  close(): Promise<void>;
}

export async function startGceShard(o: {
  shard: string; className: string; token: string; pool: string; bootDelayMs?: number;
  /** The shard's `isolation:` mapping (YAML flow), and the project's firewall rules. */
  isolation?: string; firewalls?: Record<string, unknown>[];
  /** Runs before the shard starts (e.g. to set emulator faults). */
  beforeStart?: (gce: GceEmulator) => void;
}): Promise<GceShard> {
  const dir = mkdtempSync(join(tmpdir(), `rf-${o.shard}-`));
  const gce = await startGceEmulator({ dataDir: join(dir, 'gce'), bootDelayMs: o.bootDelayMs ?? 0 });
  if (o.firewalls) gce.setFirewalls(`${o.shard}-project`, o.firewalls);
  o.beforeStart?.(gce);
  const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
  const config = parseConfig(`
shard: ${o.shard}
database: { url: "pglite:memory" }
gitlab: { url: "${gitlab.url}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  ${o.className}:
    runnerToken: "${o.token}"
    provider: gcp
    pool: ${o.pool}
    bootTimeout: 30s
    machine:
      machineType: n2d-standard-2
      image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64
      zones: ["us-central1-a"]
      networkTags: [runner-vm]
providers:
  gcp: { project: ${o.shard}-project, endpoint: "${gce.url}", requestsPerSecond: 1000, callTimeout: 5s, retryBase: 20ms }
dataDir: "${dir}"
secrets: { key: "e2e-gce-secret-key-0123456789abcdef" }
log: { level: warn }
${o.isolation ? `isolation: ${o.isolation}` : ''}
`);
  let shard: Shard;
  try {
    shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false });
  } catch (err) {
    await gitlab.close();
    await gce.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    gce, gitlab, shard,
    instanceOf: (vmId) => gce.instances().find((i) => i['labels']?.[LABEL_VM] === vmId),
    async close() {
      await shard.drain({ timeoutMs: 20_000 });
      await gitlab.close();
      await gce.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
