// A shard with one class on an emulated cloud, and the GitLab emulator (end-to-end tests): the
// part the per-cloud helpers (ec2-shard.ts, gce-shard.ts) share.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import type { ConnectOverride } from '../../src/providers/provider.js';

export interface CloudShard<C> {
  cloud: C;
  gitlab: GitLabEmulator;
  shard: Shard;
  close(): Promise<void>;
}

export async function startCloudShard<C extends { url: string; connectOverride: ConnectOverride; close(): Promise<void> }>(o: {
  shard: string; className: string; token: string; pool: string;
  provider: 'aws' | 'gcp';
  /** Starts the cloud emulator, its files under `dir`. */
  cloud: (dir: string) => Promise<C>;
  /** The class's `machine:` and the provider's settings, as YAML flow mappings. */
  machine: string;
  providerSettings: (cloud: C) => string;
  /** The shard's `isolation:` mapping (YAML flow). */
  isolation?: string;
  /** More lines of the class (indented 4), e.g. `executor: docker`. */
  classExtra?: string;
  bootTimeout?: string;
  /** Serve the HTTP API on a loopback port with this admin token (default: no HTTP). */
  adminToken?: string;
}): Promise<CloudShard<C>> {
  const dir = mkdtempSync(join(tmpdir(), `rf-${o.shard}-`));
  const cloud = await o.cloud(dir);
  const gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
  const release = async () => {
    await gitlab.close();
    await cloud.close();
    rmSync(dir, { recursive: true, force: true });
  };
  let shard: Shard;
  try {
    const config = parseConfig(`
shard: ${o.shard}
database: { url: "pglite:memory" }
${o.adminToken ? `http: { listen: "127.0.0.1:0", adminToken: "${o.adminToken}" }` : ''}
gitlab: { url: "${gitlab.url}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  ${o.className}:
    runnerToken: "${o.token}"
    provider: ${o.provider}
    pool: ${o.pool}
    bootTimeout: ${o.bootTimeout ?? '30s'}
    machine: ${o.machine}
${o.classExtra ?? ''}providers:
  ${o.provider}: ${o.providerSettings(cloud)}
dataDir: "${dir}"
secrets: { key: "e2e-cloud-secret-key-0123456789abcdef" }
log: { level: warn }
${o.isolation ? `isolation: ${o.isolation}` : ''}
`);
    shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: o.adminToken !== undefined, connectOverride: cloud.connectOverride });
  } catch (err) {
    await release();
    throw err;
  }
  return {
    cloud, gitlab, shard,
    async close() {
      await shard.drain({ timeoutMs: 20_000 });
      await release();
    },
  };
}
