// A Windows job end to end on the gcp provider: GitLab emulator -> intake -> warm Windows VM from
// the GCE emulator -> PowerShell job script over real SSH -> trace and state back to GitLab ->
// VM deleted -> one billing event. The emulator's VMs are Linux SSH sandboxes, so a
// `powershell.exe` shim on their PATH stands in for Windows PowerShell: it keeps what it was
// given (arguments, stdin) and, where pwsh exists, runs it with pwsh; otherwise it prints a marker
// and exits with the code the test asks for.
import { execSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGceEmulator, type GceEmulator } from '../../emulators/gce/server.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { POWERSHELL_BOOTSTRAP } from '../../src/gitlab/powershell.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { LABEL_VM } from '../../src/providers/provider.js';
import '../../src/providers/builtin.js';
import { expectJobCleanedUp } from '../helpers/shard.js';

const TOKEN = 'e2e-windows-token';
const CLASS = 'saas-windows-medium-amd64';
const MARKER = 'powershell-shim: job script received';

const hasPwsh = (() => {
  try {
    execSync('command -v pwsh', { stdio: 'ignore', shell: '/bin/sh' });
    return true;
  } catch {
    return false;
  }
})();

/** The stand-in for powershell.exe; `captureDir` is where it keeps what it received. */
function shim(captureDir: string): string {
  return `#!/usr/bin/env bash
# Test shim for powershell.exe on the GCE emulator's (Linux) Windows VMs.
dir='${captureDir}'
n="$(date +%s%N)-$$"
printf '%s\\n' "$@" > "$dir/args-$n.txt"
cat > "$dir/stdin-$n.b64"
tr -d ' \\r\\n' < "$dir/stdin-$n.b64" | base64 -d > "$dir/script-$n.ps1" 2>/dev/null
if command -v pwsh >/dev/null 2>&1; then
  exec pwsh "$@" < "$dir/stdin-$n.b64"
fi
echo "${MARKER} ($(wc -c < "$dir/script-$n.ps1") bytes)"
exit "$(cat "$dir/exit-code" 2>/dev/null || echo 0)"
`;
}

function shardYaml(o: { gitlabUrl: string; gceUrl: string; dataDir: string }): string {
  return `
shard: e2e-win
database: { url: "pglite:memory" }
http: { listen: "127.0.0.1:0", adminToken: "test-admin" }
gitlab: { url: "${o.gitlabUrl}", pollInterval: 200ms, requestTimeout: 5s }
classes:
  ${CLASS}:
    runnerToken: "${TOKEN}"
    provider: gcp
    costFactor: 1
    pool: { idle: 1, max: 2 }
    jobTimeout: 1h
    bootTimeout: 30s
    machine:
      machineType: n2d-standard-2
      image: projects/windows-cloud/global/images/family/windows-2022-core
      imageArch: x86_64
      os: windows
      windowsAccess: ssh
      diskSizeGb: 50
      zones: ["us-central1-a"]
providers:
  gcp:
    project: e2e-win-project
    endpoint: "${o.gceUrl}"
    requestsPerSecond: 1000
    callTimeout: 5s
    retryBase: 20ms
dataDir: "${o.dataDir}"
secrets: { key: "e2e-windows-secret-key-0123456789" }
log: { level: warn }
`;
}

describe('a Windows job on the gcp provider (GCE emulator)', () => {
  let dataDir: string;
  let captureDir: string;
  let gce: GceEmulator;
  let gitlab: GitLabEmulator;
  let shard: Shard;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-e2e-win-'));
    captureDir = join(dataDir, 'capture');
    const shimDir = join(dataDir, 'shim');
    mkdirSync(captureDir);
    mkdirSync(shimDir);
    writeFileSync(join(shimDir, 'powershell.exe'), shim(captureDir));
    chmodSync(join(shimDir, 'powershell.exe'), 0o755);
    gce = await startGceEmulator({ dataDir: join(dataDir, 'gce'), bootDelayMs: 0, extraPathDir: shimDir });
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ gitlabUrl: gitlab.url, gceUrl: gce.url, dataDir }));
    shard = await startShard({ config, log: createLogger({ level: 'warn' }), tickMs: 100, defaultMetrics: false, http: false, connectOverride: gce.connectOverride });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await gce?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  /** What the shim received for this job: its arguments and the decoded job script. */
  function received(jobId: number): { args: string[]; script: string } {
    for (const f of readdirSync(captureDir).filter((x) => x.startsWith('stdin-'))) {
      const n = f.slice('stdin-'.length, -'.b64'.length);
      const bytes = Buffer.from(readFileSync(join(captureDir, f), 'utf8').replace(/\s/g, ''), 'base64');
      const script = bytes.subarray(3).toString('utf8');
      if (script.includes(`$env:CI_JOB_ID = '${jobId}'`)) {
        expect([...bytes.subarray(0, 3)]).toEqual([0xef, 0xbb, 0xbf]);
        return { args: readFileSync(join(captureDir, `args-${n}.txt`), 'utf8').trim().split('\n'), script };
      }
    }
    throw new Error(`no job script received for job ${jobId} (files: ${readdirSync(captureDir).join(', ')})`);
  }

  const expectCleanedUp = (jobId: number) => expectJobCleanedUp(shard, jobId, (vmId) => !gce.instances().some((i) => i['labels']?.[LABEL_VM] === vmId));

  it('runs the PowerShell job script, streams the trace and reports success', async () => {
    writeFileSync(join(captureDir, 'exit-code'), '0');
    const id = gitlab.enqueue({ runnerToken: TOKEN, name: 'win-greet', script: ['Write-Output "hello from windows job $env:CI_JOB_ID"'] });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('success');
    expect(final.trace).toContain(`class ${CLASS}`);
    if (hasPwsh) expect(final.trace).toContain(`hello from windows job ${id}`);
    else expect(final.trace).toContain(MARKER);
    expect(final.trace).toContain('Job succeeded');

    // The VM got the PowerShell script, not the bash one.
    const { args, script } = received(id);
    expect(args.slice(0, -1)).toEqual(['-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-InputFormat', 'Text', '-OutputFormat', 'Text', '-EncodedCommand']);
    expect(Buffer.from(args.at(-1)!, 'base64').toString('utf16le')).toBe(POWERSHELL_BOOTSTRAP);
    expect(script).toContain(`$env:CI_JOB_ID = '${id}'`);
    expect(script).toContain("$env:CI_JOB_NAME = 'win-greet'");
    expect(script).toContain('Write-Output "hello from windows job $env:CI_JOB_ID"');
    expect(script).toContain("& git remote add '--' origin ");
    expect(script).not.toContain('#!/usr/bin/env bash');
    expect(script).not.toContain('set -eo pipefail');
    // Windows makes its own host key: the manager pinned the one the guest agent published in
    // guest attributes (no host key of the manager's in its metadata).
    const job = await shard.store.job(id);
    const vm = await shard.store.vm(job!.vm_id!);
    const inserted = gce.inserted(vm!.name) as { metadata?: { items?: { key: string }[] } } | undefined;
    expect(inserted?.metadata?.items?.map((i) => i.key)).toContain('enable-guest-attributes');
    expect(inserted?.metadata?.items?.map((i) => i.key)).not.toContain('runner-fleet-ssh-host-key');
    expect(gce.calls.guestAttributes).toBeGreaterThan(0);
    // (The job ran over a connection pinned to it, so it is the key the VM served.)
    expect(vm!.host_key_fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);

    const { event } = await expectCleanedUp(id);
    expect(event.outcome).toBe('success');
    expect(event.class).toBe(CLASS);
  });

  it("fails the job with the script's exit code, and still cleans up", async () => {
    writeFileSync(join(captureDir, 'exit-code'), '3');
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ['Write-Output before', 'exit 3'], afterScript: ['Write-Output after-ran'], git: false });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect(final.state).toBe('failed');
    expect(final.failureReason).toBe('script_failure');
    expect(final.exitCode).toBe(3);
    if (hasPwsh) expect(final.trace).toContain('after-ran');
    const { script } = received(id);
    expect(script).toContain("$rfFile = Join-Path $rfTmp 'after_script.ps1'");
    expect(script).not.toContain('& git');
    await expectCleanedUp(id);
  });

  it('refuses a job with artifacts (runner_unsupported, naming why) instead of dropping them, and sends the VM nothing', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, git: false, script: ['Write-Output never'], artifacts: [{ paths: ['out/'], artifact_type: 'archive', artifact_format: 'zip' }] });
    const final = await gitlab.waitForFinal(id, 30_000);
    expect([final.state, final.failureReason]).toEqual(['failed', 'runner_unsupported']);
    expect(final.trace).toContain('ERROR: Job failed: artifacts are not supported on Windows classes yet (the job declares artifacts:)');
    expect(final.runnerInfo?.features).toMatchObject({ artifacts: false, multi_build_steps: false });
    expect(() => received(id)).toThrow(/no job script received/);
    await expectCleanedUp(id);
    // A release step (GitLab would not send one to a runner without multi_build_steps) is refused too, not skipped.
    const rel = gitlab.enqueue({ runnerToken: TOKEN, git: false, script: ['Write-Output never'], release: ['release-cli create'] });
    const r = await gitlab.waitForFinal(rel, 30_000);
    expect([r.state, r.failureReason]).toEqual(['failed', 'runner_unsupported']);
    expect(r.trace).toContain('ERROR: Job failed: the release step is not supported on Windows classes yet');
    expect(() => received(rel)).toThrow(/no job script received/);
    await expectCleanedUp(rel);
  });
});
