// The docker executor's plan from a payload (pure): service hostnames as gitlab-runner derives
// them, pull policies, credentials as a Docker config, refusals naming the field.
import { describe, expect, it } from 'vitest';
import { derivedAliases, dockerAuthConfig, dockerPlan, explicitAliases } from '../../src/gitlab/docker-plan.js';
import { parseJobPayload, type JobPayload } from '../../src/gitlab/job-payload.js';
import { parseAttachEnd } from '../../src/gitlab/detach.js';
import { buildBashScript } from '../../src/gitlab/script.js';

function job(extra: Record<string, unknown>): JobPayload {
  const p = parseJobPayload({ id: 9, token: 'tok-123456789', variables: [], steps: [{ name: 'script', script: ['true'] }], ...extra });
  if (!p.ok) throw new Error(p.error);
  return p.job;
}

describe('docker plan', () => {
  it('derives the two service hostnames as gitlab-runner documents them', () => {
    expect(derivedAliases('tutum/wordpress:latest')).toEqual(['tutum__wordpress', 'tutum-wordpress']);
    expect(derivedAliases('registry.gitlab-wp.com:4999/tutum/wordpress')).toEqual(['registry.gitlab-wp.com__tutum__wordpress', 'registry.gitlab-wp.com-tutum-wordpress']);
    expect(derivedAliases('postgres:15')).toEqual(['postgres']);
    expect(derivedAliases('redis@sha256:0123abcd')).toEqual(['redis']);
    expect(explicitAliases('db, db2 cache')).toEqual(['db', 'db2', 'cache']);
  });

  it('takes the job image, else the class default, and the job pull policy, else the class one', () => {
    const a = dockerPlan(job({ image: { name: 'alpine:3', pull_policy: 'if-not-present' } }), { defaultImage: 'debian:12', pullPolicy: ['always'] });
    expect(a.ok && a.plan.image).toMatchObject({ name: 'alpine:3', pullPolicy: ['if-not-present'] });
    const b = dockerPlan(job({}), { defaultImage: 'debian:12', pullPolicy: ['never'] });
    expect(b.ok && b.plan.image).toMatchObject({ name: 'debian:12', pullPolicy: ['never'] });
    expect(dockerPlan(job({}), {})).toEqual({ ok: false, error: 'the job names no image and its runner class has no defaultImage' });
  });

  it("applies a service's executor_opts.docker user and platform (service_executor_opts), beside its entrypoint and command", () => {
    const j = job({
      image: { name: 'alpine', executor_opts: { docker: { user: 'builder', platform: 'linux/amd64' } } },
      services: [
        { name: 'postgres:15', entrypoint: ['/bin/sh', '-c'], command: ['exec postgres'], executor_opts: { docker: { user: '1234:1234', platform: 'linux/arm64' } } },
        { name: 'redis:7' },
      ],
    });
    const p = dockerPlan(j, {});
    if (!p.ok) throw new Error(p.error);
    expect(p.plan.image).toMatchObject({ user: 'builder', platform: 'linux/amd64' });
    expect(p.plan.services[0]).toMatchObject({ user: '1234:1234', platform: 'linux/arm64', entrypoint: ['/bin/sh', '-c'], command: ['exec postgres'] });
    expect(p.plan.services[1]).toMatchObject({ user: null, platform: null });
    // The service's own container gets them, not the job image's.
    const lines = buildBashScript(j, { executor: 'docker' }).split('\n');
    const create = (name: string) => lines.find((l) => l.includes('docker create') && l.includes(`--name ${name}`)) ?? '';
    expect(create('rf-9-svc-0')).toContain("--user '1234:1234' --platform 'linux/arm64' -- 'postgres:15' '-c' 'exec postgres'");
    expect(create('rf-9-svc-0')).toContain("--entrypoint '/bin/sh'");
    expect(create('rf-9-svc-1')).not.toMatch(/--user|--platform/);
    expect(create('rf-9-step-script')).toContain("--user 'builder' --platform 'linux/amd64'");
  });

  it('gives a second service of the same image only its own aliases, and refuses names Docker could read as options', () => {
    const p = dockerPlan(job({ image: { name: 'alpine' }, services: [{ name: 'postgres:15', alias: 'db1' }, { name: 'postgres:15', alias: 'db2' }] }), {});
    expect(p.ok && p.plan.services.map((s) => [s.container, s.aliases])).toEqual([
      ['rf-9-svc-0', ['db1', 'postgres']],
      ['rf-9-svc-1', ['db2']],
    ]);
    expect(dockerPlan(job({ image: { name: '--privileged' } }), {})).toMatchObject({ ok: false, error: expect.stringMatching(/^image: "--privileged" is not an image reference/) });
    expect(dockerPlan(job({ image: { name: 'a' }, services: [{ name: 'b', alias: 'bad$name' }] }), {})).toMatchObject({ ok: false, error: expect.stringMatching(/^services\[0\]\.alias: /) });
  });

  it('turns registry credentials into a Docker config and ignores other kinds', () => {
    const cfg = dockerAuthConfig([
      { type: 'registry', url: 'registry.example.com', username: 'gitlab-ci-token', password: 'p4ss-w0rd' },
      { type: 'other', url: 'x', username: 'u', password: 'p' },
    ]);
    expect(JSON.parse(cfg!)).toEqual({ auths: { 'registry.example.com': { auth: Buffer.from('gitlab-ci-token:p4ss-w0rd').toString('base64') } } });
    expect(dockerAuthConfig([])).toBeNull();
  });

  it('reads the failure reason beside an exit status, and only the known ones', () => {
    expect(parseAttachEnd('rf-status 1 20 image_pull_failure\n')).toEqual({ kind: 'status', code: 1, size: 20, reason: 'image_pull_failure' });
    expect(parseAttachEnd('rf-status 1 20 \n')).toEqual({ kind: 'status', code: 1, size: 20 });
    expect(parseAttachEnd('rf-status 1 20 made_up_reason\n')).toEqual({ kind: 'status', code: 1, size: 20 });
  });

  it('names the payload field of a bad image or service', () => {
    const bad = parseJobPayload({ id: 9, token: 't', steps: [{ name: 'script', script: ['true'] }], image: { name: '' }, services: [{ name: 'x', pull_policy: ['sometimes'] }] });
    expect(bad.ok).toBe(false);
    if (!bad.ok) {
      expect(bad.error).toContain('image.name: expected an image name');
      expect(bad.error).toMatch(/services\[0\]\.pull_policy/);
    }
  });
});
