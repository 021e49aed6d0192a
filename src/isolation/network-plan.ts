// The shard network plan (pure): every shard's runner subnet has its own CIDR, unique across all
// networks peered directly or through one common network. The registry is a CSV with the header
// `environment,network,cidr` (a row per subnet, as in shared/data/ephemeral-runner-cidrs.csv);
// the whole registry is one peering domain, so any two overlapping rows are a conflict.
import { CidrError, type Cidr, cidrEnd, formatCidr, firstFree, isPrivate, notPrivate, parseCidr } from './cidr.js';

export interface RegistryRow {
  /** 1-based line in the registry file. */
  line: number;
  environment: string;
  network: string;
  cidr: Cidr;
}

export class RegistryError extends Error {
  override name = 'RegistryError';
}

export const REGISTRY_HEADER = 'environment,network,cidr';

/** Every bad line is named in one error (the first 20), so a file is fixed in one pass. */
export function parseRegistry(text: string): RegistryRow[] {
  const lines = text.split(/\r?\n/);
  const header = (lines[0] ?? '').trim().replace(/^\uFEFF/, '');
  if (header !== REGISTRY_HEADER) throw new RegistryError(`line 1: expected the header "${REGISTRY_HEADER}", got ${JSON.stringify(header.slice(0, 80))}`);
  const rows: RegistryRow[] = [];
  const errors: string[] = [];
  for (let i = 1; i < lines.length && errors.length < 20; i++) {
    const text = lines[i]!.trim();
    if (text === '' || text.startsWith('#')) continue;
    const cells = text.split(',').map((c) => c.trim());
    if (cells.length !== 3) {
      errors.push(`line ${i + 1}: expected 3 fields (${REGISTRY_HEADER}), got ${cells.length}`);
      continue;
    }
    const [environment, network, cidrText] = cells as [string, string, string];
    if (!environment) errors.push(`line ${i + 1}: environment: expected a name, got ""`);
    else if (!network) errors.push(`line ${i + 1}: network: expected a name, got ""`);
    else {
      try {
        const cidr = parseCidr(cidrText);
        if (!isPrivate(cidr)) errors.push(`line ${i + 1}: cidr: ${notPrivate(cidrText)}`);
        else rows.push({ line: i + 1, environment, network, cidr });
      } catch (err) {
        if (!(err instanceof CidrError)) throw err;
        errors.push(`line ${i + 1}: cidr: ${err.message}`);
      }
    }
  }
  if (errors.length) throw new RegistryError(errors.join('\n'));
  return rows;
}

export interface Conflict {
  a: RegistryRow;
  b: RegistryRow;
}

/** Every pair of overlapping rows (a sweep over rows sorted by address: O(n log n + conflicts)). */
export function findConflicts(rows: readonly RegistryRow[]): Conflict[] {
  const sorted = [...rows].sort((x, y) => x.cidr.base - y.cidr.base || x.cidr.prefix - y.cidr.prefix);
  const out: Conflict[] = [];
  const open: RegistryRow[] = []; // rows whose block may still reach the next one
  for (const r of sorted) {
    // Sorted by address, a block ending before this one starts can overlap nothing after it.
    for (let i = open.length - 1; i >= 0; i--) if (cidrEnd(open[i]!.cidr) <= r.cidr.base) open.splice(i, 1);
    for (const o of open) out.push(o.line < r.line ? { a: o, b: r } : { a: r, b: o });
    open.push(r);
  }
  return out.sort((x, y) => x.a.line - y.a.line || x.b.line - y.b.line);
}

export function describeConflict(c: Conflict): string {
  const side = (r: RegistryRow) => `line ${r.line} (${r.environment} ${r.network} ${formatCidr(r.cidr)})`;
  return `${side(c.a)} overlaps ${side(c.b)}`;
}

export type Allocation =
  | { kind: 'existing'; row: RegistryRow }
  | { kind: 'new'; row: Omit<RegistryRow, 'line'> }
  | { kind: 'full' };

/**
 * The subnet for one shard network: the one it already has (allocation is idempotent: asking
 * twice never hands out a second block), else the lowest free `/prefix` in `within`.
 */
export function allocate(rows: readonly RegistryRow[], want: { environment: string; network: string; within: Cidr; prefix: number }): Allocation {
  const existing = rows.find((r) => r.environment === want.environment && r.network === want.network);
  if (existing) return { kind: 'existing', row: existing };
  const cidr = firstFree(want.within, want.prefix, rows.map((r) => r.cidr));
  return cidr ? { kind: 'new', row: { environment: want.environment, network: want.network, cidr } } : { kind: 'full' };
}

export function registryLine(row: Omit<RegistryRow, 'line'>): string {
  return `${row.environment},${row.network},${formatCidr(row.cidr)}`;
}
