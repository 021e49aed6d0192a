// Where the shard's secrets key comes from, its per-shard salt, and the store's ciphertexts bound
// to their rows and erased when nothing needs them. Runs on PGlite, and on real PostgreSQL when
// DATABASE_URL is set.
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/types.js';
import type { Database } from '../../src/db/schema.js';
import { createLogger } from '../../src/isolation/redact.js';
import { buildBillingEvent } from '../../src/manager/billing.js';
import { keySource, MISSING_KEY_ERROR, shardKeys, shardSalt } from '../../src/manager/secret-keys.js';
import { Store } from '../../src/manager/store.js';
import { databaseKinds, migratedDatabase } from '../helpers/database.js';

const silent = createLogger({ level: 'silent' });

function configErrors(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.errors;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('secrets key source', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'rf-keyfile-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses to run without secrets.key or secrets.keyFile outside demo, naming both keys', () => {
    const errors = configErrors(() => keySource({ key: null, keyFile: null }, false));
    expect(errors).toEqual([MISSING_KEY_ERROR]);
    expect(errors[0]).toMatch(/^secrets: expected secrets\.key or secrets\.keyFile outside `runner-fleet demo`/);
    expect(keySource({ key: null }, true)).toEqual({ kind: 'database' });
    expect(keySource({ key: 'a-key-of-16-chars-or-more' }, false)).toEqual({ kind: 'config', material: 'a-key-of-16-chars-or-more' });
  });

  it('reads secrets.keyFile once, trimmed (a mounted secret ends with a newline)', () => {
    const path = join(dir, 'key');
    writeFileSync(path, '  file-held passphrase of the shard \n');
    expect(keySource({ key: null, keyFile: path }, false)).toEqual({ kind: 'file', material: 'file-held passphrase of the shard', path });
  });

  it('says which file cannot be read or is too short, without printing what it holds', () => {
    expect(configErrors(() => keySource({ key: null, keyFile: join(dir, 'absent') }, false))).toEqual([`secrets.keyFile: cannot read ${join(dir, 'absent')}: ENOENT`]);
    const short = join(dir, 'short');
    writeFileSync(short, 'tiny-key\n');
    const errors = configErrors(() => keySource({ key: null, keyFile: short }, true));
    expect(errors).toEqual([`secrets.keyFile: expected ${short} to hold a key of at least 16 characters (64 hex, base64 of 32 bytes, or a passphrase), got 8`]);
    expect(errors.join('')).not.toContain('tiny-key');
    if (process.getuid?.() !== 0) {
      const locked = join(dir, 'locked');
      writeFileSync(locked, 'a-long-enough-passphrase');
      chmodSync(locked, 0o000);
      expect(configErrors(() => keySource({ key: null, keyFile: locked }, false))).toEqual([`secrets.keyFile: cannot read ${locked}: EACCES`]);
    }
  });
});

describe.each(databaseKinds())('secrets at rest in the store on %s', (kind) => {
  let db: Kysely<Database>;
  let close: () => Promise<void>;
  beforeAll(async () => {
    ({ db, close } = await migratedDatabase(kind));
  });
  afterAll(async () => close?.());

  it('gives every shard its own random salt, kept across restarts', async () => {
    const a = await shardSalt(db, 'salt-a');
    const b = await shardSalt(db, 'salt-b');
    expect(a).toHaveLength(16);
    expect(a.equals(b)).toBe(false);
    expect((await shardSalt(db, 'salt-a')).equals(a)).toBe(true);
    const source = { kind: 'config' as const, material: 'one passphrase for two shards' };
    const ka = await shardKeys(db, 'salt-a', source, silent);
    const kb = await shardKeys(db, 'salt-b', source, silent);
    expect(ka.key.equals(kb.key)).toBe(false);
    expect((await shardKeys(db, 'salt-a', source, silent)).key.equals(ka.key)).toBe(true);
    // A raw key needs no salt and makes no row.
    await shardKeys(db, 'salt-raw', { kind: 'config', material: 'cd'.repeat(32) }, silent);
    expect(await db.selectFrom('shard_key_salts').select('shard').where('shard', '=', 'salt-raw').executeTakeFirst()).toBeUndefined();
  });

  async function storeOf(shard: string): Promise<Store> {
    return new Store(db, shard, await shardKeys(db, shard, { kind: 'config', material: 'store test passphrase' }, silent));
  }

  const bind = (store: Store, jobId: number, vmId: string) =>
    store.bindJobToNewVm({
      jobId, className: 'small', token: `glrt-token-${jobId}`, projectId: 1, pipelineId: 1, namespaceId: 1, rootNamespaceId: 1,
      queuedSeconds: 0, timeoutSeconds: 60, pickedAt: new Date(),
      vm: { id: vmId, class: 'small', provider: 'local', name: `rf-${vmId}`, publicKey: 'ssh-ed25519 AAAA', privateKey: `private-key-of-${vmId}` },
    });

  it('opens a ciphertext only in the row it was written for: copied to another job it does not decrypt', async () => {
    const store = await storeOf('aad');
    expect(await bind(store, 501, 'aad-vm-1')).toBe(true);
    expect(await bind(store, 502, 'aad-vm-2')).toBe(true);
    const a = (await store.job(501))!;
    expect(a.token_enc).toMatch(/^v2:/);
    expect(store.jobToken(a)).toBe('glrt-token-501');
    await db.updateTable('jobs').set({ token_enc: a.token_enc }).where('shard', '=', 'aad').where('id', '=', '502').execute();
    expect(store.jobToken((await store.job(502))!)).toBeNull();
    const vm1 = (await store.vm('aad-vm-1'))!;
    expect(store.vmPrivateKey(vm1)).toBe('private-key-of-aad-vm-1');
    await db.updateTable('vms').set({ private_key_enc: vm1.private_key_enc }).where('id', '=', 'aad-vm-2').execute();
    expect(store.vmPrivateKey((await store.vm('aad-vm-2'))!)).toBeNull();
    // Another shard with the same passphrase opens nothing of this one (its own salt, its own context).
    expect((await storeOf('aad-other')).jobToken(a)).toBeNull();
    // A provider's sealed record is bound to the provider and the record it names.
    const box = store.secretBox('mac');
    const sealed = box.seal('host-private-key', 'host:h-1');
    expect(box.open(sealed, 'host:h-1')).toBe('host-private-key');
    expect(box.open(sealed, 'host:h-2')).toBeNull();
    expect(store.secretBox('aws').open(sealed, 'host:h-1')).toBeNull();
  });

  it('still reads a job token written before 007 (v1) by a manager that ran with the same passphrase', async () => {
    const store = new Store(db, 'legacy', await shardKeys(db, 'legacy', { kind: 'config', material: 'legacy passphrase of the shard' }, silent));
    await db.insertInto('jobs').values({
      shard: 'legacy', id: 900, class: 'small', vm_id: null, state: 'running', timeout_seconds: 60, picked_at: new Date(),
      // encryptSecret of the code before 007 (fixed scrypt salt, no associated data).
      token_enc: 'v1:W5QsSa22dxhIPn0H:F9PIlg7MR+JAN9oN0VfL3Q==:wgtFe68bHdAzJL5Im8pOR2+J6/dh',
    }).execute();
    expect(store.jobToken((await store.job(900))!)).toBe('glrt-legacy-job-token');
  });

  it('erases the payload when the job ends, the token once GitLab has the final state, the key once the VM is deleted', async () => {
    const store = await storeOf('erase');
    expect(await bind(store, 601, 'erase-vm')).toBe(true);
    await store.transition('erase-vm', 'requested', 'creating');
    await store.transition('erase-vm', 'creating', 'booting');
    await store.transition('erase-vm', 'booting', 'ready');
    await store.transition('erase-vm', 'ready', 'assigned');
    await store.saveJobAttach(601, { payload: '{"secret":"masked"}', tracePrefix: '', os: 'linux', vmId: 'erase-vm' });
    expect(store.jobPayload((await store.job(601))!)).toBe('{"secret":"masked"}');
    const finishedAt = new Date();
    const event = buildBillingEvent({
      shard: 'erase', jobId: 601, projectId: 1, pipelineId: 1, namespaceId: 1, rootNamespaceId: 1, runnerClass: 'small', costFactor: 1, provider: 'local',
      machineType: null, startedAt: finishedAt, finishedAt, outcome: 'success', failureReason: null,
    });
    expect(await store.closeJob(601, { result: 'success', exitCode: 0, failureReason: null, finishedAt, traceBytes: 0, traceChecksum: null }, event)).toBe(true);
    let job = (await store.job(601))!;
    expect(job.payload_enc).toBeNull();
    // The report outbox still needs the token.
    expect(store.jobToken(job)).toBe('glrt-token-601');
    await store.markReported(601);
    job = (await store.job(601))!;
    expect(job.reported_at).not.toBeNull();
    expect(job.token_enc).toBeNull();
    expect(store.vmPrivateKey((await store.vm('erase-vm'))!)).toBe('private-key-of-erase-vm');
    await store.transition('erase-vm', 'deleting', 'deleted');
    expect((await store.vm('erase-vm'))!.private_key_enc).toBeNull();
  });
});
