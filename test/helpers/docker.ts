// Real Docker Engine for the docker-executor tests: whether one answers here, a tiny test image
// (`docker import` of a busybox rootfs: no registry is reachable), and a local registry (Debian's
// docker-registry) behind a Basic-auth proxy, to test pulls with and without credentials.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, copyFileSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const TEST_IMAGE = 'rf-test/busybox:1';

const BUSYBOX = ['/usr/bin/busybox', '/bin/busybox'].find((p) => existsSync(p));

function docker(args: string[], input?: Buffer): string {
  return execFileSync('docker', args, { encoding: 'utf8', timeout: 120_000, ...(input ? { input } : {}), stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Why the docker tests cannot run here, or null when Docker Engine answers and busybox exists. */
export function dockerUnavailable(): string | null {
  try {
    const v = docker(['version', '--format', '{{.Server.Version}}']).trim();
    if (!v) return 'docker answered without a server version';
  } catch (err) {
    return `Docker Engine does not answer (${((err as { stderr?: string }).stderr ?? (err as Error).message).trim().split('\n').pop()}); start it with "dockerd --iptables=false"`;
  }
  if (!BUSYBOX) return 'no static busybox to build the test image from (apt-get install busybox-static)';
  return null;
}

/** Build the test image from busybox unless it exists: sh, wget, nc, sleep... and nothing else. */
export function ensureTestImage(name = TEST_IMAGE): void {
  try {
    docker(['image', 'inspect', name]);
    return;
  } catch {
    // Not built yet.
  }
  const root = mkdtempSync(join(tmpdir(), 'rf-img-'));
  try {
    for (const d of ['bin', 'tmp', 'etc', 'root']) mkdirSync(join(root, d));
    copyFileSync(BUSYBOX!, join(root, 'bin/busybox'));
    const applets = execFileSync(BUSYBOX!, ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
    for (const a of applets) symlinkSync('busybox', join(root, 'bin', a));
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    const tar = execFileSync('tar', ['-C', root, '-c', '.'], { maxBuffer: 64 * 1024 * 1024 });
    docker(['import', '--change', 'ENV PATH=/bin', '-', name], tar);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** The containers a job left on this Docker Engine (by the runner-fleet.job label). */
export function jobContainers(jobId: number): string[] {
  return docker(['ps', '-aq', '--filter', `label=runner-fleet.job=${jobId}`]).split('\n').filter(Boolean);
}

export interface TestRegistry {
  /** host:port of the registry itself (no auth): push here. */
  direct: string;
  /** host:port of the Basic-auth proxy in front of it: pulls need `user`/`password`. */
  authed: string;
  user: string;
  password: string;
  /** Tag `image` and push it as `<direct>/<repo>`; returns the name to pull through the proxy. */
  push(image: string, repo: string): string;
  close(): Promise<void>;
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });

/** Debian's docker-registry on loopback (Docker treats 127.0.0.0/8 registries as insecure: plain HTTP). */
export async function startTestRegistry(): Promise<TestRegistry> {
  const dir = mkdtempSync(join(tmpdir(), 'rf-registry-'));
  const port = await freePort();
  writeFileSync(
    join(dir, 'config.yml'),
    `version: 0.1\nlog: { level: error }\nstorage: { filesystem: { rootdirectory: ${join(dir, 'data')} }, delete: { enabled: true } }\nhttp: { addr: 127.0.0.1:${port} }\n`,
  );
  const child: ChildProcess = spawn('docker-registry', ['serve', join(dir, 'config.yml')], { stdio: 'ignore' });
  const direct = `127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const up = await fetch(`http://${direct}/v2/`).then((r) => r.ok, () => false);
    if (up) break;
    if (i > 100) throw new Error('docker-registry did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  const user = 'registry-user';
  const password = 'registry-pass-7Hq2';
  const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  const proxy: Server = createServer((req, res) => {
    if (req.headers.authorization !== expected) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="rf-test-registry"', 'Docker-Distribution-API-Version': 'registry/2.0', 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    const up = request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const authed = `127.0.0.1:${(proxy.address() as { port: number }).port}`;
  return {
    direct,
    authed,
    user,
    password,
    push(image, repo) {
      docker(['tag', image, `${direct}/${repo}`]);
      docker(['push', `${direct}/${repo}`]);
      docker(['rmi', `${direct}/${repo}`]);
      return `${authed}/${repo}`;
    },
    async close() {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
