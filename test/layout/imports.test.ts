// The folder layout is the architecture: production code (src/) never reaches into test
// infrastructure (emulators/, test/, bench/), and no module imports itself back through others
// (static imports; an import cycle makes load order decide what a module sees).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = join(dir, name);
    return statSync(full).isDirectory() ? files(full) : name.endsWith('.ts') && !name.endsWith('.d.ts') ? [full] : [];
  });
}

/** Static (not `import()`, not type-only) relative imports of a module, as repository paths. */
function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^(?:import|export)\s+(?!type\b)(?:[^'";]*?\sfrom\s+)?['"](\.{1,2}\/[^'"]+)['"]/gm)) {
    out.push(relative(root, resolve(dirname(file), m[1]!.replace(/\.js$/, '.ts'))));
  }
  return out;
}

const src = files(join(root, 'src'));

describe('layout', () => {
  it('src/ imports nothing from emulators/, test/ or bench/', () => {
    const bad = src.flatMap((f) => imports(f).filter((i) => /^(emulators|test|bench)\//.test(i)).map((i) => `${relative(root, f)} -> ${i}`));
    expect(bad).toEqual([]);
  });

  it('has no static import cycle in src/ (the CLI and the demo included)', () => {
    const graph = new Map(src.map((f) => [relative(root, f), imports(f)]));
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const stack: string[] = [];
    const visit = (n: string) => {
      state.set(n, 'open');
      stack.push(n);
      for (const m of graph.get(n) ?? []) {
        if (state.get(m) === 'open') cycles.push([...stack.slice(stack.indexOf(m)), m].join(' -> '));
        else if (!state.has(m) && graph.has(m)) visit(m);
      }
      stack.pop();
      state.set(n, 'done');
    };
    for (const n of graph.keys()) if (!state.has(n)) visit(n);
    expect(graph.size).toBeGreaterThan(50);
    expect(cycles).toEqual([]);
  });
});
