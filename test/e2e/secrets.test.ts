// Secrets at rest and the local provider's warning, through a real shard on the local provider:
// no key, no start (outside demo); a key file works; after a job ends and its VM is deleted the
// database holds none of its secrets; the local provider is flagged in the log and in /readyz.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { createLogger } from '../../src/isolation/redact.js';
import { MISSING_KEY_ERROR } from '../../src/manager/secret-keys.js';
import { LOCAL_PROVIDER_WARNING } from '../../src/manager/security-warnings.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { LABEL_SHARD, providerFactory } from '../../src/providers/provider.js';
import '../../src/providers/builtin.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { expectJobCleanedUp, shardYaml, TEST_SECRETS_KEY, TOKEN } from '../helpers/shard.js';

const KEY_LINE = `secrets: { key: "${TEST_SECRETS_KEY}" }\n`;

describe('a shard without a secrets key', () => {
  let dataDir: string;
  beforeAll(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-nokey-'));
  });
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  const noKeyYaml = () => shardYaml({ shard: 'nokey', gitlabUrl: 'http://127.0.0.1:9', dbUrl: 'pglite:memory', dataDir, idle: 0, max: 1 }).replace(KEY_LINE, '');

  it('refuses to start outside demo, naming secrets.key and secrets.keyFile', async () => {
    const yaml = noKeyYaml();
    expect(yaml).not.toContain('secrets:');
    await expect(startShard({ config: parseConfig(yaml), log: createLogger({ level: 'silent' }), http: false, defaultMetrics: false })).rejects.toThrow(MISSING_KEY_ERROR);
  });

  it('makes `runner-fleet start` exit 1 with the reason', async () => {
    const path = join(dataDir, 'nokey.yaml');
    writeFileSync(path, noKeyYaml());
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'start', '--config', path], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr += String(c)));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    clearTimeout(timer);
    expect(code).toBe(1);
    expect(stderr).toBe(`${path}: cannot start\n  ${MISSING_KEY_ERROR}\n`);
  }, 40_000);

  it('starts in demo mode on a key kept in the database, and says so', async () => {
    const lines: string[] = [];
    const shard = await startShard({ config: parseConfig(noKeyYaml()), log: createLogger({ level: 'warn', destination: { write: (l: string) => void lines.push(l) } }), http: false, defaultMetrics: false, demo: true });
    try {
      expect(await shard.store.db.selectFrom('shard_secrets').select('shard').where('shard', '=', 'nokey').execute()).toHaveLength(1);
      expect(lines.join('')).toContain('VM keys and job tokens are encrypted with a key kept in the same database');
      // The demo knows it runs on the local provider: no warning of it.
      expect(lines.join('')).not.toContain(LOCAL_PROVIDER_WARNING);
    } finally {
      await shard.close();
    }
  });
});

describe.each(databaseKinds())('a shard on a key file on %s', (kind) => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;
  const keyMaterial = 'passphrase-from-a-mounted-secret-0123';
  const lines: string[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-keyfile-e2e-'));
    db = await freshDatabase(kind);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    writeFileSync(join(dataDir, 'secrets.key'), `${keyMaterial}\n`);
    const yaml = shardYaml({ shard: `keyfile-${kind}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 1, max: 2 }).replace(KEY_LINE, `secrets: { keyFile: "${join(dataDir, 'secrets.key')}" }\n`);
    shard = await startShard({ config: parseConfig(yaml), log: createLogger({ level: 'debug', destination: { write: (l: string) => void lines.push(l) } }), tickMs: 100, defaultMetrics: false, reportPollMs: 200 });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('leaves no ciphertext of a job in the database once it ended and its VM is deleted', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo keyed', 'echo "$MASKED_VALUE"'], variables: [{ key: 'MASKED_VALUE', value: 'masked-s3cret-value', masked: true }], git: false });
    expect((await gitlab.waitForFinal(id, 30_000)).state).toBe('success');
    const provider = await providerFactory('local')!({}, { shard: shard.config.shard, dataDir, log: createLogger({ level: 'silent' }) });
    try {
      const { job } = await expectJobCleanedUp(shard, id, async (vmId) => !(await provider.list({ [LABEL_SHARD]: shard.config.shard })).vms.some((c) => c.vmId === vmId));
      const row = (await shard.store.job(id))!;
      expect(row.reported_at).not.toBeNull();
      expect(row.token_enc).toBeNull();
      expect(row.payload_enc).toBeNull();
      expect((await shard.store.vm(job.vm_id!))!.private_key_enc).toBeNull();
      expect(await shard.store.db.selectFrom('job_handouts').selectAll().where('job_id', '=', String(id)).execute()).toEqual([]);
    } finally {
      await provider.close();
    }
    // Live VMs keep their sealed keys (v2, salted), and the shard's salt is in the database.
    const live = await shard.store.liveVms();
    expect(live.length).toBeGreaterThan(0);
    for (const vm of live) expect(vm.private_key_enc).toMatch(/^v2:/);
    expect(await shard.store.db.selectFrom('shard_key_salts').select('shard').where('shard', '=', shard.config.shard).execute()).toHaveLength(1);
    expect(lines.join('')).not.toContain(keyMaterial);
  });

  it('warns that the local provider runs jobs as the manager user: at start-up and in /readyz', async () => {
    const warn = lines.map((l) => JSON.parse(l) as { level: number; msg: string }).find((l) => l.msg.includes(LOCAL_PROVIDER_WARNING));
    expect(warn?.level).toBe(40);
    expect(warn?.msg).toContain('(classes: saas-linux-small-amd64)');
    const res = await fetch(`${shard.url}/readyz`, { signal: AbortSignal.timeout(5000) });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ready', warnings: [`${LOCAL_PROVIDER_WARNING} (classes: saas-linux-small-amd64)`] });
  });
});
