// The job script as the executor runs it on a Linux VM: sent over real SSH to a local sandbox and
// started detached under the supervisor (startOrAttachCommand). Job variables that meddle with
// the wrapper (IFS=0, RF_TMP, rf_rc) change neither the exit status the manager reads nor the
// wrapper's clean-up.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectSsh, type SshSession } from '../../src/connect/ssh.js';
import { startGitLabEmulator, type EnqueueSpec, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { GitLabClient } from '../../src/gitlab/client.js';
import { parseAttachEnd } from '../../src/gitlab/detach.js';
import { parseJobPayload, type JobPayload } from '../../src/gitlab/job-payload.js';
import { jobInvocation } from '../../src/manager/executor.js';
import { localFixture, type LocalFixture } from '../providers/local-fixture.js';

let fx: LocalFixture;
let session: SshSession;
let gitlab: GitLabEmulator;
let client: GitLabClient;

beforeAll(async () => {
  gitlab = await startGitLabEmulator();
  client = new GitLabClient({ url: gitlab.url, timeoutMs: 5000, log: pino({ level: 'silent' }), systemId: 's_script_ssh' });
  fx = localFixture();
  session = await connectSsh((await fx.startVm()).info);
});
afterAll(async () => {
  session?.close();
  await fx?.cleanup();
  await gitlab?.close();
});

async function take(spec: Omit<EnqueueSpec, 'runnerToken'>): Promise<JobPayload> {
  gitlab.enqueue({ ...spec, runnerToken: 'ssh-token' });
  const res = await client.requestJob('ssh-token');
  if (res.kind !== 'job') throw new Error('no job');
  const parsed = parseJobPayload(res.raw);
  if (!parsed.ok) throw new Error(parsed.error);
  return parsed.job;
}

/** Start the job on the VM as the executor does and read it to its end. */
async function runOnVm(job: JobPayload): Promise<{ out: string; end: ReturnType<typeof parseAttachEnd> }> {
  const { command, stdin } = jobInvocation('linux', job);
  let out = '';
  let err = '';
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 30_000);
  try {
    await session.exec(command, { stdin, signal: abort.signal, onData: (c, from) => (from === 'stderr' ? (err += c) : (out += c)) });
  } finally {
    clearTimeout(timer);
  }
  return { out, end: parseAttachEnd(err) };
}

describe('job script over SSH on a local sandbox', () => {
  it('reports the script exit code whatever IFS, RF_TMP and rf_rc the job sets, and removes its own temp dir', async () => {
    const job = await take({
      script: ['echo "tmp-parent=$(dirname "$MY_FILE")"', 'exit 10'],
      variables: [
        { key: 'IFS', value: '0' },
        { key: 'RF_TMP', value: '/nonexistent/rf-tmp' },
        { key: 'rf_rc', value: '0' },
        { key: 'MY_FILE', value: 'content', file: true },
      ],
      git: false,
    });
    const r = await runOnVm(job);
    expect(r.end).toMatchObject({ kind: 'status', code: 10 });
    const vars = /^tmp-parent=(\/.*)$/m.exec(r.out)?.[1];
    expect(vars).toMatch(/\/runner-fleet\.[A-Za-z0-9]+\/vars$/);
    // The wrapper's temp dir (not the job's RF_TMP) is gone after the job.
    const check = await runOnVm(await take({ script: [`test -e ${JSON.stringify(vars)} && echo still-there || echo removed`], git: false }));
    expect(check.out).toMatch(/^removed$/m);
  });

  it('reports 0 and 100 under IFS=0 (the old wrapper split `exit $rf_rc` of 100 into `exit 1`)', async () => {
    const ok = await runOnVm(await take({ script: ['true'], variables: [{ key: 'IFS', value: '0' }], git: false }));
    expect(ok.end).toMatchObject({ kind: 'status', code: 0 });
    const hundred = await runOnVm(await take({ script: ['exit 100'], variables: [{ key: 'IFS', value: '0' }, { key: 'rf_rc', value: '0' }], git: false }));
    expect(hundred.end).toMatchObject({ kind: 'status', code: 100 });
  });
});
