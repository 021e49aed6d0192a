// Shared bits of the end-to-end tests.

export const TOKEN = 'e2e-runner-token';
/** Outside `demo` a shard refuses to start without a secrets key: every test shard has this one. */
export const TEST_SECRETS_KEY = 'e2e-secrets-passphrase-0123456789';

export function shardYaml(o: { shard: string; gitlabUrl: string; dbUrl: string; dataDir: string; idle?: number; max?: number; jobTimeout?: string; requestConcurrency?: number; classExtra?: string }): string {
  return `
shard: ${o.shard}
database: { url: "${o.dbUrl}" }
http: { listen: "127.0.0.1:0", adminToken: "test-admin" }
gitlab: { url: "${o.gitlabUrl}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  saas-linux-small-amd64:
    runnerToken: "${TOKEN}"
    provider: local
    costFactor: 2
    pool: { idle: ${o.idle ?? 2}, max: ${o.max ?? 6} }
    jobTimeout: ${o.jobTimeout ?? '1h'}
    bootTimeout: 30s
${o.requestConcurrency ? `    requestConcurrency: ${o.requestConcurrency}\n` : ''}${o.classExtra ?? ''}providers:
  local: {}
dataDir: "${o.dataDir}"
secrets: { key: "${TEST_SECRETS_KEY}" }
log: { level: warn }
`;
}

export async function waitUntil(pred: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/**
 * After a job: GitLab heard its end, its VM is deleted in the database and gone from the cloud
 * (`vmGone`), and it has exactly one billing event.
 */
export async function expectJobCleanedUp(shard: import('../../src/manager/shard.js').Shard, jobId: number, vmGone: (vmId: string) => boolean | Promise<boolean>) {
  const { expect } = await import('vitest');
  await waitUntil(async () => (await shard.store.job(jobId))?.reported_at != null, 10_000, `job ${jobId} reported`);
  const job = await shard.store.job(jobId);
  expect(job?.state).toBe('finished');
  const vmId = job!.vm_id!;
  await waitUntil(async () => (await shard.store.vm(vmId))?.state === 'deleted', 15_000, `VM ${vmId} deleted`);
  await waitUntil(() => vmGone(vmId), 15_000, `VM ${vmId} gone from the cloud`);
  const events = await shard.store.db.selectFrom('billing_events').selectAll().where('job_id', '=', String(jobId)).where('shard', '=', shard.config.shard).execute();
  expect(events).toHaveLength(1);
  return { job: job!, event: events[0]! };
}
