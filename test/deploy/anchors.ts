// The anchors GitHub gives a Markdown file's headings, to check links such as
// docs/operations.md#runnerfleetleakedvms against the file they point into.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

/** GitHub's heading slug: lower case, punctuation dropped, spaces to hyphens; repeats get -1, -2. */
export function markdownAnchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  // Fenced code holds `# comments`, not headings.
  const text = markdown.replace(/^```[\s\S]*?^```/gm, '');
  for (const [, title] of text.matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const base = title!.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

export const OPERATIONS_MD = resolve(import.meta.dirname, '../../docs/operations.md');
export const operationsAnchors = (): Set<string> => markdownAnchors(readFileSync(OPERATIONS_MD, 'utf8'));
