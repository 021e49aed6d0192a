// gitlab-runner's artifact globs as the EREs the VM's grep -E runs (pure), checked with grep itself.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { artifactEntries, globToRegex } from '../../src/gitlab/artifacts.js';
import { parseJobPayload } from '../../src/gitlab/job-payload.js';

const PATHS = ['dist/a.txt', 'dist/sub/b.txt', 'dist/logs/x.log', 'distx/c.txt', 'a.log', 'deep/er/z.log', 'top.txt', 'abc', 'axc', 'bb', 'f.tar.gz', 'f.tarxgz'];

/** What grep -E selects from PATHS with the glob's regex (the VM's own matcher). */
function grep(glob: string): string[] {
  const re = globToRegex(glob);
  if (re === null) return [];
  try {
    return execFileSync('grep', ['-E', '-e', re], { input: PATHS.join('\n') + '\n', encoding: 'utf8' }).split('\n').filter(Boolean);
  } catch {
    return []; // grep exits 1 when nothing matches
  }
}

describe('artifact globs', () => {
  it('match as gitlab-runner: a directory takes its contents, * stays in one directory, ** crosses them', () => {
    expect(grep('dist/')).toEqual(['dist/a.txt', 'dist/sub/b.txt', 'dist/logs/x.log']);
    expect(grep('./dist')).toEqual(['dist/a.txt', 'dist/sub/b.txt', 'dist/logs/x.log']);
    expect(grep('*.txt')).toEqual(['top.txt']);
    expect(grep('dist/*.txt')).toEqual(['dist/a.txt']);
    expect(grep('dist/**/*.txt')).toEqual(['dist/a.txt', 'dist/sub/b.txt']);
    expect(grep('**/*.log')).toEqual(['dist/logs/x.log', 'a.log', 'deep/er/z.log']);
    expect(grep('a?c')).toEqual(['abc', 'axc']);
    expect(grep('a[!b]c')).toEqual(['axc']);
    expect(grep('f.tar.gz')).toEqual(['f.tar.gz']); // dots are literal
  });

  it('refuse paths that leave the project directory', () => {
    for (const g of ['../secret', '/etc/passwd', 'a/../../b', '']) expect(globToRegex(g)).toBeNull();
  });

  it('skip an entry with a bad type or format, naming the field, and default name, when and format', () => {
    const p = parseJobPayload({
      id: 1, token: 't', steps: [{ name: 'script', script: ['true'] }],
      artifacts: [{ paths: ['a'] }, { paths: ['b'], artifact_type: 'Bad Type' }, { paths: ['c'], artifact_format: 'tar' }, { paths: ['d'], expire_in: '1 week; rm -rf /' }],
    });
    if (!p.ok) throw new Error(p.error);
    const { entries, warnings } = artifactEntries(p.job);
    expect(entries.map((e) => [e.name, e.when, e.type, e.format, e.expireIn])).toEqual([
      ['artifacts', 'on_success', 'archive', 'zip', null],
      ['artifacts', 'on_success', 'archive', 'zip', null],
    ]);
    expect(warnings).toEqual([
      'artifacts[1].artifact_type: "Bad Type" is not an artifact type; skipped',
      'artifacts[2].artifact_format: "tar" is not zip, gzip or raw; skipped',
      'artifacts[3].expire_in: "1 week; rm -rf /" is not a duration; GitLab\'s default applies',
    ]);
  });
});
