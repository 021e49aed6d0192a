// The baseline of bench/scale.ts, in its own process: a bare ssh2 client doing the manager's part
// of a job start and nothing else, against the same kind of SSH peers (the local provider's
// sandboxes): connect, exec a command printing a line, read that line. All targets at once.
// Usage: node scale-baseline.mjs <plan.json>  (plan: targets [{host, port}], username,
// privateKeyPath, command, holdMs). Prints one JSON line: per-exec latencies and own CPU/RSS.
import { readFileSync } from 'node:fs';
import ssh2 from 'ssh2';

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const privateKey = readFileSync(plan.privateKeyPath);

function one(target) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const conn = new ssh2.Client();
    let done = false;
    const finish = (r) => {
      if (done) return;
      done = true;
      resolve(r);
      // Hold the session like a running job would, then close.
      setTimeout(() => conn.end(), plan.holdMs);
    };
    conn.on('error', (err) => finish({ ok: false, error: err.message }));
    conn.on('ready', () => {
      conn.exec(plan.command, (err, stream) => {
        if (err) return finish({ ok: false, error: err.message });
        stream.on('data', () => finish({ ok: true, ms: performance.now() - t0 }));
        stream.stderr.on('data', () => {});
        stream.on('close', () => finish({ ok: false, error: 'closed before a line' }));
      });
    });
    conn.connect({ host: target.host, port: target.port, username: plan.username, privateKey, readyTimeout: 30_000 });
  });
}

const cpu0 = process.cpuUsage();
const t0 = performance.now();
const results = await Promise.all(plan.targets.map(one));
const wallMs = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const status = readFileSync('/proc/self/status', 'utf8');
const kib = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
process.stdout.write(`${JSON.stringify({ wallMs, cpuMs: (cpu.user + cpu.system) / 1000, rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM'), results })}\n`);
await new Promise((r) => setTimeout(r, plan.holdMs + 200));
process.exit(0);
