// Address reuse end to end: a warm local VM's sshd is replaced, at the same address and port, by
// another SSH server with a different host key (what a reused address after a preemption looks
// like). The job the manager then gives that VM must not reach it: the impostor sees no login
// and no command, the job's marker file never appears, the VM is failed and deleted, the job
// ends in GitLab as a system failure, and runner_fleet_host_key_mismatch_total counts it.
// Runs on PGlite, and on real PostgreSQL when DATABASE_URL is set.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { connectSsh } from '../../src/connect/ssh.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { generateVmKeyPair } from '../../src/isolation/keys.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { files, type SandboxState } from '../../src/providers/local/layout.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN, waitUntil } from '../helpers/shard.js';

/** An SSH server that lets anyone in and records what it is sent. */
async function impostor(host: string, port: number) {
  const seen = { logins: [] as string[], commands: [] as string[] };
  const server = new ssh2.Server({ hostKeys: [generateVmKeyPair('impostor').privateKey] }, (client) => {
    client.on('error', () => {});
    client.on('authentication', (ctx) => {
      seen.logins.push(`${ctx.username}/${ctx.method}`);
      ctx.accept();
    });
    client.on('session', (accept) => {
      accept().on('exec', (acceptExec, _reject, info) => {
        seen.commands.push(info.command);
        const ch = acceptExec();
        ch.exit(0);
        ch.end();
      });
    });
  });
  // The killed sandbox's port may take a moment to free.
  for (let i = 0; ; i++) {
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => (server.off('error', reject), resolve()));
      });
      break;
    } catch (err) {
      if (i > 50) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return { seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe.each(databaseKinds())('pinned host keys on %s', (kind) => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-hostkey-'));
    db = await freshDatabase(kind);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: `hostkey-${kind}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 1, max: 2 }));
    // No sweep during the test: the impostor must be met by the job, not by the reconciler.
    shard = await startShard({ config, log: createLogger({ level: 'silent' }), tickMs: 100, sweepMs: 600_000, defaultMetrics: false, http: false });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('sends nothing to another host key at a warm VM\'s address, fails the VM and ends the job as a system failure', async () => {
    const ready = async () => (await shard.store.db.selectFrom('vms').selectAll().where('shard', '=', shard.config.shard).where('state', '=', 'ready').execute())[0];
    await waitUntil(async () => !!(await ready()), 30_000, 'a warm VM');
    const vm = (await ready())!;
    expect(vm.host_key_fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    const dir = join(dataDir, 'local-vms', vm.name);
    const state = JSON.parse(readFileSync(files(dir).state, 'utf8')) as SandboxState;
    // The sandbox serves the host key the manager made for it.
    expect(state.hostKeyFingerprint).toBe(vm.host_key_fingerprint);

    // The VM dies behind the manager's back and someone else answers on its address.
    const pid = Number(readFileSync(files(dir).pid, 'utf8'));
    process.kill(-pid, 'SIGKILL');
    const fake = await impostor(state.host, state.port);
    try {
      // Without pinning the manager would have logged in and run the job there.
      const s = await connectSsh({ protocol: 'ssh', os: 'linux', host: state.host, port: state.port, username: 'runner', privateKey: generateVmKeyPair('x').privateKey });
      await s.exec('true');
      s.close();
      expect(fake.seen.commands).toEqual(['true']);
      fake.seen.logins.length = 0;
      fake.seen.commands.length = 0;

      const marker = join(dataDir, 'job-ran');
      const secret = 'h0st-key-S3cret-v4lue';
      const id = gitlab.enqueue({ runnerToken: TOKEN, script: [`touch ${marker}`, 'echo "$MY_SECRET"'], variables: [{ key: 'MY_SECRET', value: secret, masked: true }], git: false });
      const final = await gitlab.waitForFinal(id, 30_000);
      expect(final.state).toBe('failed');
      expect(final.failureReason).toBe('runner_system_failure');
      expect(final.trace).toMatch(/host key/);
      expect(final.trace).not.toContain(secret);

      const job = await shard.store.job(id);
      expect(job?.vm_id).toBe(vm.id);
      expect(fake.seen.logins).toEqual([]);
      expect(fake.seen.commands).toEqual([]);
      expect(existsSync(marker)).toBe(false);
      await waitUntil(async () => (await shard.store.vm(vm.id))?.state === 'deleted', 15_000, 'the VM deleted');
      const events = await shard.store.db.selectFrom('vm_events').select(['to_state', 'detail']).where('vm_id', '=', vm.id).orderBy('id').execute();
      expect(events.map((e) => e.to_state)).toContain('failed');
      expect((await shard.store.vm(vm.id))?.failure).toMatch(/host key/);
      const mismatches = (await shard.metrics.hostKeyMismatches.get()).values;
      expect(mismatches).toEqual([expect.objectContaining({ value: 1, labels: { provider: 'local', class: 'saas-linux-small-amd64' } })]);
    } finally {
      await fake.close();
    }

    // The pool goes on: the next job runs on a fresh VM whose key matches.
    const ok = gitlab.enqueue({ runnerToken: TOKEN, script: ['echo fine'], git: false });
    expect((await gitlab.waitForFinal(ok, 30_000)).state).toBe('success');
  });
});
