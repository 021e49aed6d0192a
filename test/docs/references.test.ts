// The docs point only at things that exist: every relative link in README.md and docs/*.md names
// an existing file (and, into a Markdown file, an existing heading), every backticked repository
// path they mention exists, and no file cites the design notes that live outside the repository.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
const docs = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchors(markdown: string): Set<string> {
  const out = new Set<string>();
  const seen = new Map<string, number>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const m = !fenced && /^#{1,6}\s+(.*)$/.exec(line);
    if (!m) continue;
    const base = m[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n ? `${base}-${n}` : base);
  }
  return out;
}

/** Markdown text outside fenced code blocks. */
const prose = (markdown: string) => markdown.split(/^```.*$/m).filter((_, i) => i % 2 === 0).join('\n');

describe('documentation references', () => {
  it('every relative link names an existing file and heading', () => {
    const broken: string[] = [];
    for (const doc of docs) {
      const text = prose(readFileSync(join(root, doc), 'utf8'));
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (/^(https?:|mailto:)/.test(target)) continue;
        const [path, anchor] = target.split('#') as [string, string | undefined];
        const file = path ? resolve(root, dirname(doc), path) : join(root, doc);
        if (!existsSync(file)) {
          broken.push(`${doc}: ${target} (no such file)`);
          continue;
        }
        if (anchor && file.endsWith('.md') && !anchors(readFileSync(file, 'utf8')).has(anchor)) broken.push(`${doc}: ${target} (no such heading in ${relative(root, file)})`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('every backticked repository path exists', () => {
    const missing: string[] = [];
    const tops = ['src', 'test', 'bench', 'deploy', 'docs', 'sql', 'emulators', 'bin', '.ci'];
    for (const doc of docs) {
      const text = readFileSync(join(root, doc), 'utf8');
      for (const m of text.matchAll(/`([A-Za-z0-9_.\-/]+\/[A-Za-z0-9_.\-]+\.(?:ts|mjs|js|md|ya?ml|json|sql|csv|png|service))`/g)) {
        const p = m[1]!;
        // docs/architecture.md names modules relative to src/ (manager/pool.ts); a path may also be
        // relative to the document.
        const candidates = [join(root, p), join(root, 'src', p), resolve(root, dirname(doc), p)];
        if (!tops.includes(p.split('/')[0]!) && !candidates.slice(1).some((c) => existsSync(c))) {
          missing.push(`${doc}: ${p}`);
          continue;
        }
        if (!candidates.some((c) => existsSync(c))) missing.push(`${doc}: ${p}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('no file cites the design notes kept outside the repository', () => {
    const citing: string[] = [];
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        if (name === 'node_modules' || name.startsWith('.') || name === 'dist') continue;
        const full = join(dir, name);
        if (statSync(full).isDirectory()) walk(full);
        else if (/\.(ts|mjs|js|md|ya?ml|json|sql)$/.test(name) && full !== import.meta.filename) {
          if (/\b(DESIGN|STYLE|STACK)\.md\b/.test(readFileSync(full, 'utf8'))) citing.push(relative(root, full));
        }
      }
    };
    for (const top of ['src', 'test', 'bench', 'deploy', 'docs', 'sql', 'emulators', 'bin']) if (existsSync(join(root, top))) walk(join(root, top));
    for (const f of ['README.md', 'package.json']) if (/\b(DESIGN|STYLE|STACK)\.md\b/.test(readFileSync(join(root, f), 'utf8'))) citing.push(f);
    expect(citing).toEqual([]);
  });
});
