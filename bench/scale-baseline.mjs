// The baseline of bench/scale.ts, in its own process: a bare ssh2 client doing the manager's part
// of job starts and nothing else, against the same kind of SSH peers (the local provider's
// sandboxes). The manager keeps the boot probe's SSH connection of a warm VM and execs on it, so
// this does the same: connect to every target (key exchange, all at once), then, at once on every
// connection, exec a command printing a line and read that line.
// Usage: node scale-baseline.mjs <plan.json>  (plan: targets [{host, port}], username,
// privateKeyPath, command, holdMs). Prints one JSON line: latencies and own CPU/RSS per phase.
import { readFileSync } from 'node:fs';
import ssh2 from 'ssh2';

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const privateKey = readFileSync(plan.privateKeyPath);

function connect(target) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const conn = new ssh2.Client();
    conn.once('error', (err) => resolve({ ok: false, error: err.message }));
    conn.once('ready', () => resolve({ ok: true, ms: performance.now() - t0, conn }));
    conn.connect({ host: target.host, port: target.port, username: plan.username, privateKey, readyTimeout: 60_000 });
  });
}

function exec(conn) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let done = false;
    const finish = (r) => {
      if (!done) resolve(r);
      done = true;
    };
    conn.exec(plan.command, (err, stream) => {
      if (err) return finish({ ok: false, error: err.message });
      stream.on('data', () => finish({ ok: true, ms: performance.now() - t0 }));
      stream.stderr.on('data', () => {});
      stream.on('close', () => finish({ ok: false, error: 'closed before a line' }));
    });
  });
}

const cpuMs = (since) => {
  const c = process.cpuUsage(since);
  return (c.user + c.system) / 1000;
};
let cpu0 = process.cpuUsage();
let t0 = performance.now();
const connected = await Promise.all(plan.targets.map(connect));
const connect_ = { wallMs: performance.now() - t0, cpuMs: cpuMs(cpu0), results: connected.map(({ conn, ...r }) => r) };
const conns = connected.filter((c) => c.ok).map((c) => c.conn);
cpu0 = process.cpuUsage();
t0 = performance.now();
const results = await Promise.all(conns.map(exec));
const wallMs = performance.now() - t0;
const execCpuMs = cpuMs(cpu0);
await new Promise((r) => setTimeout(r, plan.holdMs)); // the sessions stay open like running jobs
const status = readFileSync('/proc/self/status', 'utf8');
const kib = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
process.stdout.write(`${JSON.stringify({ wallMs, cpuMs: execCpuMs, rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM'), results, connect: connect_ })}\n`);
for (const c of conns) c.end();
setTimeout(() => process.exit(0), 200);
