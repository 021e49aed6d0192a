// docs/operations.md: its own links resolve (sections and files), and so does every
// docs/operations.md#section that the deploy files (manifests, rules) point operators to.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { markdownAnchors, OPERATIONS_MD, operationsAnchors } from './anchors.js';

const root = resolve(import.meta.dirname, '../..');
const md = readFileSync(OPERATIONS_MD, 'utf8');

describe('docs/operations.md', () => {
  it('links only to sections and files that exist', () => {
    const anchors = operationsAnchors();
    const broken: string[] = [];
    for (const [, target] of md.matchAll(/\]\(([^)\s]+)\)/g)) {
      const [path, anchor] = target!.split('#') as [string, string | undefined];
      if (/^[a-z]+:/.test(path)) continue; // absolute URLs
      const file = path ? resolve(dirname(OPERATIONS_MD), path) : OPERATIONS_MD;
      if (!existsSync(file)) broken.push(`${target}: no file ${relative(root, file)}`);
      else if (anchor && !markdownAnchors(readFileSync(file, 'utf8')).has(anchor)) broken.push(`${target}: no section #${anchor}`);
      else if (anchor && file === OPERATIONS_MD && !anchors.has(anchor)) broken.push(`${target}: no section`);
    }
    expect(broken).toEqual([]);
  });

  it('names files of the repository that exist', () => {
    const named = [...md.matchAll(/`((?:deploy|src|sql|test|docs)\/[\w./@-]+)`/g)].map((m) => m[1]!);
    expect(named.length).toBeGreaterThan(10);
    expect(named.filter((f) => !existsSync(join(root, f)))).toEqual([]);
  });

  it('has every section the deploy files point to', () => {
    const anchors = operationsAnchors();
    const refs: string[] = [];
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(d, e.name));
        else for (const [, a] of readFileSync(join(d, e.name), 'utf8').matchAll(/docs\/operations\.md#([\w-]+)/g)) refs.push(`${relative(root, join(d, e.name))}#${a}`);
      }
    };
    walk(join(root, 'deploy'));
    expect(refs.length).toBeGreaterThan(10);
    expect(refs.filter((r) => !anchors.has(r.split('#')[1]!))).toEqual([]);
  });
});
