// Real Docker Engine for the docker-executor tests: whether one answers here, the busybox test
// image (src/emulators/docker-image.ts), and a local registry (Debian's docker-registry) behind a
// Basic-auth proxy, to test pulls with and without credentials.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { docker } from '../../src/emulators/docker-image.js';

export { dockerUnavailable, ensureBusyboxImage as ensureTestImage, BUSYBOX_IMAGE as TEST_IMAGE } from '../../src/emulators/docker-image.js';

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
