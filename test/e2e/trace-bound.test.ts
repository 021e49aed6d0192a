// A job that prints far more than the manager's per-job trace buffer: reading from the VM pauses
// while GitLab has not acknowledged a buffer's worth (the output waits in the VM's file), and when
// GitLab loses part of the trace (416 below what was dropped) the executor produces it again from
// the VM's file. GitLab ends with every line once, in order, and a matching checksum.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { startGitLabEmulator, type GitLabEmulator } from '../../src/emulators/gitlab/server.js';
import { TRACE_BUFFER_BYTES } from '../../src/gitlab/trace.js';
import { createLogger } from '../../src/isolation/redact.js';
import { startShard, type Shard } from '../../src/manager/shard.js';
import { databaseKinds, freshDatabase, type TestDatabase } from '../helpers/database.js';
import { shardYaml, TOKEN } from '../helpers/shard.js';

const LINES = 400_000; // ~3.3 MB of output

describe.each(databaseKinds())('trace memory bound on %s', (kind) => {
  let gitlab: GitLabEmulator;
  let shard: Shard;
  let db: TestDatabase;
  let dataDir: string;
  const logLines: string[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rf-trace-bound-'));
    db = await freshDatabase(kind);
    gitlab = await startGitLabEmulator({ traceUpdateIntervalS: 1 });
    const config = parseConfig(shardYaml({ shard: `trace-${kind}`, gitlabUrl: gitlab.url, dbUrl: db.url, dataDir, idle: 1, max: 2 }));
    const destination = { write: (line: string) => void logLines.push(line) };
    shard = await startShard({ config, log: createLogger({ level: 'info', destination }), tickMs: 100, defaultMetrics: false, http: false, reportPollMs: 200 });
  });

  afterAll(async () => {
    await shard?.drain({ timeoutMs: 20_000 });
    await gitlab?.close();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('keeps at most about one buffer per job in memory and resends from the VM file after GitLab loses trace', async () => {
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: [`seq 1 ${LINES}`], git: false });
    // Once GitLab holds 1 MB, it loses everything past 100 KB: far below what the manager still holds.
    const arm = setInterval(() => {
      if (gitlab.job(id).trace.length > 1024 * 1024) {
        gitlab.faults.traceTruncateOnce = 100 * 1024;
        clearInterval(arm);
      }
    }, 5);
    const final = await gitlab.waitForFinal(id, 120_000);
    clearInterval(arm);
    expect(gitlab.faults.traceTruncateOnce).toBeUndefined(); // the loss did happen
    expect(final.state).toBe('success');
    const numbers = final.trace.split('\n').filter((l) => /^\d+$/.test(l));
    expect(numbers.length).toBe(LINES);
    expect(numbers.every((n, i) => Number(n) === i + 1)).toBe(true);
    expect(final.traceValid).toBe(true);
    const highWater = (await shard.metrics.traceBufferHighWater.get()).values.find((v) => v.labels['class'] === 'saas-linux-small-amd64')?.value ?? -1;
    expect(highWater).toBeGreaterThan(0);
    // One buffer, plus what arrives in the SSH packet that crosses the mark.
    expect(highWater).toBeLessThanOrEqual(TRACE_BUFFER_BYTES + 64 * 1024);
  }, 150_000);

  it('stops reading a job\'s output once its log is past the size cap, and still reports its end', async () => {
    // 40 MiB of output against the 32 MiB cap, then a last line that must never be read.
    const id = gitlab.enqueue({ runnerToken: TOKEN, script: ["head -c 41943040 /dev/zero | tr '\\0' x", 'echo', 'echo after-the-flood', 'exit 4'], git: false });
    const final = await gitlab.waitForFinal(id, 120_000);
    expect(final.state).toBe('failed');
    expect(final.exitCode).toBe(4);
    expect(final.trace).toContain('job log size limit exceeded');
    expect(final.trace).not.toContain('after-the-flood');
    expect(final.trace.length).toBeLessThan(32 * 1024 * 1024 + 1024);
    const skipped = logLines.filter((l) => l.includes('no longer reading its output') && l.includes(`"job":${id}`));
    expect(skipped).toHaveLength(1);
    const read = (JSON.parse(skipped[0]!) as { read: number }).read;
    expect(read).toBeGreaterThan(32 * 1024 * 1024 - 64 * 1024);
    expect(read).toBeLessThan(33 * 1024 * 1024);
  }, 150_000);
});
