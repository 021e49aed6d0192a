// A tiny image for the demo and the tests, made on this machine: no registry is reachable, so a
// busybox rootfs is `docker import`ed (sh, wget, nc, sleep... and nothing else).
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const BUSYBOX_IMAGE = 'rf-test/busybox:1';

const busybox = () => ['/usr/bin/busybox', '/bin/busybox'].find((p) => existsSync(p));

/** The docker CLI, bounded (2 min), its output as text. */
export function docker(args: string[], input?: Buffer): string {
  return execFileSync('docker', args, { encoding: 'utf8', timeout: 120_000, ...(input ? { input } : {}), stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Why Docker jobs cannot run here, or null when Docker Engine answers and busybox exists. */
export function dockerUnavailable(): string | null {
  try {
    if (!docker(['version', '--format', '{{.Server.Version}}']).trim()) return 'docker answered without a server version';
  } catch (err) {
    return `Docker Engine does not answer (${((err as { stderr?: string }).stderr ?? (err as Error).message).trim().split('\n').pop()}); start it with "dockerd --iptables=false"`;
  }
  if (!busybox()) return 'no static busybox to build the image from (apt-get install busybox-static)';
  return null;
}

/** Build the busybox image unless it exists. */
export function ensureBusyboxImage(name = BUSYBOX_IMAGE): void {
  try {
    docker(['image', 'inspect', name]);
    return;
  } catch {
    // Not built yet.
  }
  const bin = busybox();
  if (!bin) throw new Error('no busybox binary to build the image from');
  const root = mkdtempSync(join(tmpdir(), 'rf-img-'));
  try {
    for (const d of ['bin', 'tmp', 'etc', 'root']) mkdirSync(join(root, d));
    copyFileSync(bin, join(root, 'bin/busybox'));
    const applets = execFileSync(bin, ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
    for (const a of applets) symlinkSync('busybox', join(root, 'bin', a));
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    const tar = execFileSync('tar', ['-C', root, '-c', '.'], { maxBuffer: 64 * 1024 * 1024 });
    docker(['import', '--change', 'ENV PATH=/bin', '-', name], tar);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
