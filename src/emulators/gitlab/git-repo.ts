// A small real git repository served over smart HTTP by `git http-backend` (CGI), so job
// scripts do a real `git fetch` with the job token, as they would from GitLab.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface DemoRepo {
  root: string;
  /** Path under the server, e.g. /demo/project.git */
  path: string;
  sha: string;
  ref: string;
  /** A commit on `with-submodule` whose `lib` is a submodule (`../lib.git`, the same server). */
  submoduleSha: string;
  /** Path of the submodule's repository under the server. */
  libPath: string;
  close(): void;
}

export function createDemoRepo(): DemoRepo {
  const root = mkdtempSync(join(tmpdir(), 'rf-gitlab-emu-'));
  const git = (cwd: string, ...args: string[]) =>
    execFileSync('git', ['-c', 'user.name=runner-fleet', '-c', 'user.email=demo@runner-fleet.invalid', '-c', 'init.defaultBranch=main', ...args], { cwd, encoding: 'utf8' }).trim();
  /** A bare repository `demo/<name>.git` whose main holds one commit of `files`; its work tree stays for more. */
  const repository = (name: string, files: Record<string, string>, message: string) => {
    const bare = join(root, 'demo', `${name}.git`);
    const work = join(root, `${name}-work`);
    mkdirSync(work, { recursive: true });
    git(root, 'init', '-q', '--bare', bare);
    git(work, 'init', '-q');
    for (const [file, text] of Object.entries(files)) writeFileSync(join(work, file), text);
    git(work, 'add', '.');
    git(work, 'commit', '-q', '-m', message);
    git(work, 'push', '-q', bare, 'HEAD:refs/heads/main');
    git(bare, 'symbolic-ref', 'HEAD', 'refs/heads/main');
    return { bare, work, sha: git(work, 'rev-parse', 'HEAD') };
  };
  const project = repository('project', { 'README.md': '# demo project\n\nServed by the runner-fleet GitLab emulator.\n', 'test.sh': '#!/bin/sh\necho "tests pass"\n' }, 'demo project');
  // A submodule repository beside it, and a branch that uses it (the gitlink written directly:
  // no clone of it needed here).
  const lib = repository('lib', { 'lib.txt': 'from the submodule\n' }, 'lib');
  const work = project.work;
  git(work, 'checkout', '-q', '-b', 'with-submodule');
  writeFileSync(join(work, '.gitmodules'), '[submodule "lib"]\n\tpath = lib\n\turl = ../lib.git\n');
  git(work, 'add', '.gitmodules');
  git(work, 'update-index', '--add', '--cacheinfo', `160000,${lib.sha},lib`);
  git(work, 'commit', '-q', '-m', 'use lib as a submodule');
  git(work, 'push', '-q', project.bare, 'HEAD:refs/heads/with-submodule');
  const submoduleSha = git(work, 'rev-parse', 'HEAD');
  rmSync(project.work, { recursive: true, force: true });
  rmSync(lib.work, { recursive: true, force: true });
  return { root, path: '/demo/project.git', sha: project.sha, ref: 'main', submoduleSha, libPath: '/demo/lib.git', close: () => rmSync(root, { recursive: true, force: true }) };
}

export interface CgiResult {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** Run one request through `git http-backend`. */
export function gitHttpBackend(repo: DemoRepo, req: { method: string; pathInfo: string; query: string; contentType?: string; contentEncoding?: string; gitProtocol?: string; body?: Buffer }): Promise<CgiResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('git', ['http-backend'], {
      env: {
        PATH: process.env['PATH'] ?? '/usr/bin:/bin',
        GIT_PROJECT_ROOT: repo.root,
        GIT_HTTP_EXPORT_ALL: '1',
        REQUEST_METHOD: req.method,
        PATH_INFO: req.pathInfo,
        QUERY_STRING: req.query,
        CONTENT_TYPE: req.contentType ?? '',
        ...(req.contentEncoding ? { HTTP_CONTENT_ENCODING: req.contentEncoding } : {}),
        ...(req.gitProtocol ? { GIT_PROTOCOL: req.gitProtocol } : {}),
        ...(req.body ? { CONTENT_LENGTH: String(req.body.length) } : {}),
        REMOTE_USER: 'gitlab-ci-token',
        REMOTE_ADDR: '127.0.0.1',
      },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    const out: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.on('error', reject);
    child.on('close', () => {
      const all = Buffer.concat(out);
      let sep = all.indexOf('\r\n\r\n');
      let skip = 4;
      if (sep < 0) {
        sep = all.indexOf('\n\n');
        skip = 2;
      }
      const head = sep < 0 ? '' : all.subarray(0, sep).toString('latin1');
      const headers: Record<string, string> = {};
      let status = 200;
      for (const line of head.split(/\r?\n/)) {
        const i = line.indexOf(':');
        if (i < 0) continue;
        const k = line.slice(0, i).trim().toLowerCase();
        const v = line.slice(i + 1).trim();
        if (k === 'status') status = parseInt(v, 10) || 200;
        else headers[k] = v;
      }
      resolve({ status, headers, body: sep < 0 ? all : all.subarray(sep + skip) });
    });
    // git may answer and exit before reading the whole body (EPIPE): its answer still counts.
    child.stdin.on('error', () => {});
    child.stdin.end(req.body ?? Buffer.alloc(0));
  });
}
