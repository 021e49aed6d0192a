// Linux jobs end to end on the gcp provider: GitLab emulator -> intake -> warm VM created through
// the real @google-cloud/compute client against the GCE emulator (its instances are SSH sandboxes
// on loopback) -> job over real SSH -> trace and state back to GitLab -> VM deleted -> one billing
// event. Runs on PGlite, and on real PostgreSQL when DATABASE_URL is set.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGceEmulator, type GceEmulator } from '../../emulators/gce/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { vmName } from '../../src/manager/pool.js';
import { LABEL_SHARD } from '../../src/providers/provider.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { expectJobCleanedUp, waitUntil } from '../helpers/shard.js';

const TOKEN = 'e2e-gcp-linux-token';
const CLASS = 'saas-linux-small-amd64';
type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function shardYaml(o: { shard: string; gitlabUrl: string; gceUrl: string; dbUrl: string; dataDir: string }): string {
  return `
shard: ${o.shard}
database: { url: "${o.dbUrl}" }
http: { listen: "127.0.0.1:0", adminToken: "test-admin" }
gitlab: { url: "${o.gitlabUrl}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  ${CLASS}:
    runnerToken: "${TOKEN}"
    provider: gcp
    costFactor: 1
    pool: { idle: 3, max: 6 }
    jobTimeout: 1h
    bootTimeout: 30s
    machine:
      machineType: n2d-standard-2
      image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64
      zones: ["us-central1-a", "us-central1-b"]
      networkTags: [runner-vm]
      labels: { runner-class: linux-small-amd64 }
providers:
  gcp:
    project: e2e-linux-project
    endpoint: "${o.gceUrl}"
    requestsPerSecond: 1000
    callTimeout: 5s
    retryBase: 20ms
    bulkInsertMin: 2
dataDir: "${o.dataDir}"
secrets: { key: "e2e-gcp-linux-secret-key-0123456789" }
log: { level: warn }
`;
}

const metaItem = (inst: Json | undefined, key: string): string | undefined => (inst?.['metadata']?.['items'] as { key: string; value: string }[] | undefined)?.find((i) => i.key === key)?.value;

describe.each(databaseKinds())('Linux jobs on the gcp provider (GCE emulator) on %s', (kind) => {
  let dataDir: string;
  let db: TestDatabase;
  let gce: GceEmulator;
  let gitlab: GitLabEmulator;
  let shard: Shard;
  const shardName = `e2e-gcp-${kind}`;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-e2e-gcp-'));
    db = await freshDatabase(kind);
    gce = await startGceEmulator({ dataDir: join(dataDir, 'gce'), bootDelayMs: 0 });
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: shardName, gitlabUrl: gitlab.url, gceUrl: gce.url, dbUrl: db.url, dataDir }));
    shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false, connectOverride: gce.connectOverride });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await gce?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  // By name: VMs of a bulkInsert carry no per-VM label (their name holds the VM id).
  const instanceOf = (vmId: string) => gce.instances().find((i) => i['name'] === vmName(shardName, vmId));
  const expectCleanedUp = (jobId: number) => expectJobCleanedUp(shard, jobId, (vmId) => instanceOf(vmId) === undefined);

  it('fills the warm pool with one bulkInsert; every VM has its own key and name, no external IP, a max run duration', async () => {
    await waitUntil(async () => (await shard.store.liveVms()).filter((v) => v.state === 'ready').length === 3, 30_000, 'three warm VMs');
    // The first fill is one batch. (Intake's reservation of a warm VM can add a single insert.)
    expect(gce.calls.bulkInsert).toBe(1);
    expect(gce.calls.insert).toBeLessThanOrEqual(1);
    const vms = (await shard.store.liveVms()).filter((v) => v.state === 'ready');
    const keys = new Set<string>();
    for (const vm of vms) {
      const inst = instanceOf(vm.id);
      expect(inst, `instance of ${vm.id}`).toBeDefined();
      expect(inst!['labels']).toMatchObject({ [LABEL_SHARD]: shardName, 'runner-class': 'linux-small-amd64' });
      expect(inst!['name']).toBe(vm.name);
      expect(metaItem(inst, 'ssh-keys')).toBe(`runner:${vm.public_key.trim()}`);
      keys.add(metaItem(inst, 'ssh-keys')!);
      const body = gce.inserted(inst!['name'])!;
      expect(body['networkInterfaces'][0]['accessConfigs'] ?? []).toEqual([]);
      expect(body['serviceAccounts'] ?? []).toEqual([]);
      expect(body['scheduling']).toMatchObject({ instanceTerminationAction: 'DELETE' });
      expect(Number(body['scheduling']['maxRunDuration']['seconds'])).toBeGreaterThan(3600);
    }
    expect(keys.size).toBe(vms.length);
    // Each API call is in the shard's metrics, by method.
    const text = await shard.metrics.registry.getSingleMetricAsString('runner_fleet_cloud_requests_total');
    expect(text).toMatch(/runner_fleet_cloud_requests_total\{[^}]*provider="gcp",operation="instances.bulkInsert",outcome="ok"[^}]*\} 1/);
  });

  it('runs a passing job and deletes its VM in the cloud', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, name: 'gcp-greet', script: ['echo "hello from $CI_JOB_NAME on $(hostname)"', 'test -f README.md && echo repo-checked-out'] });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain('hello from gcp-greet');
    expect(final.trace).toContain('repo-checked-out');
    const { event } = await expectCleanedUp(id);
    expect(event.provider).toBe('gcp');
    expect(event.machine_type).toBe('n2d-standard-2');
    expect(event.outcome).toBe('success');
  });

  it('fails a job that exits 3 with script_failure, and still deletes its VM', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo before', 'exit 3'], afterScript: ['echo after-ran'], git: false });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final).toMatchObject({ state: 'failed', failureReason: 'script_failure', exitCode: 3 });
    expect(final.trace).toContain('after-ran');
    await expectCleanedUp(id);
  });

  it('polls the whole shard with one aggregatedList per tick, never a get per VM', async () => {
    gce.resetCalls();
    await new Promise((r) => setTimeout(r, 1500));
    // Warm VMs need no polling; nothing else is booting, so no get at all.
    expect(gce.calls.get).toBe(0);
    expect(gce.calls.aggregatedList).toBeLessThanOrEqual(16);
  });
});
