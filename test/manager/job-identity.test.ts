// Who pays for a job: GitLab's predefined ids, from a real payload of the GitLab emulator (which,
// as GitLab, lists predefined variables before the project's and `.gitlab-ci.yml`'s). A job that
// defines the same names itself must not move its bill or quota to another namespace.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGitLabEmulator, type EnqueueSpec, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { GitLabClient } from '../../src/gitlab/client.js';
import { parseJobPayload, type JobPayload } from '../../src/gitlab/job-payload.js';
import { jobIdentity } from '../../src/manager/executor.js';

let gitlab: GitLabEmulator;
let client: GitLabClient;
beforeAll(async () => {
  gitlab = await startGitLabEmulator();
  client = new GitLabClient({ url: gitlab.url, timeoutMs: 5000, log: pino({ level: 'silent' }), systemId: 's_identity' });
});
afterAll(() => gitlab.close());

async function take(spec: Omit<EnqueueSpec, 'runnerToken'>): Promise<JobPayload> {
  gitlab.enqueue({ ...spec, runnerToken: 'identity-token' });
  const res = await client.requestJob('identity-token');
  if (res.kind !== 'job') throw new Error('no job');
  const parsed = parseJobPayload(res.raw);
  if (!parsed.ok) throw new Error(parsed.error);
  return parsed.job;
}

describe('jobIdentity', () => {
  it("takes GitLab's predefined ids", async () => {
    const job = await take({ script: ['true'], git: false });
    const id = jobIdentity(job);
    expect(id).toEqual({ projectId: job.job_info!.project_id!, pipelineId: expect.any(Number), namespaceId: 7, rootNamespaceId: 3 });
  });

  it('ignores a job-defined CI_PROJECT_ROOT_NAMESPACE_ID, CI_PROJECT_NAMESPACE_ID, CI_PIPELINE_ID and CI_PROJECT_ID', async () => {
    const job = await take({
      script: ['true'],
      git: false,
      variables: [
        { key: 'CI_PROJECT_ROOT_NAMESPACE_ID', value: '999' },
        { key: 'CI_PROJECT_NAMESPACE_ID', value: '998' },
        { key: 'CI_PIPELINE_ID', value: '997' },
        { key: 'CI_PROJECT_ID', value: '996' },
      ],
    });
    // The job's own definitions are in the payload, after GitLab's.
    expect(job.variables.filter((v) => v.key === 'CI_PROJECT_ROOT_NAMESPACE_ID').map((v) => v.value)).toEqual(['3', '999']);
    const id = jobIdentity(job);
    expect(id.rootNamespaceId).toBe(3);
    expect(id.namespaceId).toBe(7);
    expect(id.pipelineId).not.toBe(997);
    expect(id.pipelineId).toBe(Number(job.variables.find((v) => v.key === 'CI_PIPELINE_ID')!.value));
    expect(id.projectId).toBe(job.job_info!.project_id);
  });

  it('prefers job_info.project_id over the variable', async () => {
    const job = await take({ script: ['true'], git: false, mutate: (p) => ({ ...p, variables: (p['variables'] as { key: string; value: string }[]).map((v) => (v.key === 'CI_PROJECT_ID' ? { ...v, value: '12345' } : v)) }) });
    expect(jobIdentity(job).projectId).toBe(job.job_info!.project_id);
    expect(job.job_info!.project_id).not.toBe(12345);
  });

  it('falls back to the first CI_PROJECT_ID when job_info has no project id', async () => {
    const job = await take({ script: ['true'], git: false, variables: [{ key: 'CI_PROJECT_ID', value: '996' }], mutate: (p) => ({ ...p, job_info: { ...(p['job_info'] as object), project_id: undefined } }) });
    expect(job.job_info?.project_id).toBeUndefined();
    expect(jobIdentity(job).projectId).toBe(Number(job.variables.find((v) => v.key === 'CI_PROJECT_ID')!.value));
    expect(jobIdentity(job).projectId).not.toBe(996);
  });
});
