import { setFlagsFromString } from 'node:v8';

/**
 * V8 lets the old generation grow to up to 4x what survived the last full GC on a machine with
 * several GiB (its growing factor scales with the heap limit, and the limit with physical
 * memory). A manager's garbage is steady (trace uploads, job updates), so that headroom was only
 * RSS: with 300 jobs running, 368-386 MiB at the default against 279-298 MiB at 1.5x, with the
 * same burst start rate and CPU (`npm run bench:scale`, README Figures). An operator's own
 * `--heap-growing-percent` (argv or NODE_OPTIONS) wins.
 */
export const HEAP_GROWING_PERCENT = 50;

export function tuneHeap(percent = HEAP_GROWING_PERCENT): boolean {
  const given = [...process.execArgv, process.env['NODE_OPTIONS'] ?? ''].some((a) => /heap[-_]growing[-_]percent/.test(a));
  if (given) return false;
  setFlagsFromString(`--heap-growing-percent=${percent}`);
  return true;
}
