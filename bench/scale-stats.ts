// Pure helpers of bench/scale.ts: percentiles, /proc parsing, the figures table.

/** Nearest-rank percentile (p in 0..1) of unsorted values; NaN when there are none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
}

export interface Summary { n: number; p50: number; p99: number; max: number }

export function summarize(values: readonly number[]): Summary {
  return { n: values.length, p50: percentile(values, 0.5), p99: percentile(values, 0.99), max: values.length ? Math.max(...values) : NaN };
}

/** VmRSS and VmHWM (KiB) from the text of /proc/<pid>/status. */
export function parseStatus(text: string): { rssKiB: number; hwmKiB: number } {
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
}

/**
 * utime + stime in clock ticks from the text of /proc/<pid>/stat. The command name (field 2) may
 * hold spaces and parentheses: fields are counted from the last ')'.
 */
export function parseStatTicks(text: string): number {
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`unparsable /proc stat line: ${text.slice(0, 80)}`);
  return utime + stime;
}

export interface FigureRow { figure: string; measured: string; goal: string; baseline?: string }

export function markdownTable(rows: readonly FigureRow[]): string {
  const withBaseline = rows.some((r) => r.baseline !== undefined);
  const head = withBaseline ? '| figure | measured | goal | bare ssh2 baseline |\n|---|---|---|---|' : '| figure | measured | goal |\n|---|---|---|';
  return [head, ...rows.map((r) => `| ${r.figure} | ${r.measured} | ${r.goal} |${withBaseline ? ` ${r.baseline ?? ''} |` : ''}`)].join('\n');
}

/** Top self-time functions of a V8 .cpuprofile (nodes with callFrame and hitCount, samples with timeDeltas). */
export function topSelfTime(profile: { nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }[]; samples?: number[]; timeDeltas?: number[] }, n: number): { fn: string; selfMs: number; share: number }[] {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + (deltas[i] ?? 0));
  const byFn = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)?.callFrame;
    if (!cf) continue;
    const where = cf.url ? `${cf.url.replace(/^.*\/node_modules\//, '').replace(/^file:\/\/.*\/(dist|src)\//, '$1/')}:${cf.lineNumber + 1}` : '';
    const key = `${cf.functionName || '(anonymous)'} ${where}`.trim();
    byFn.set(key, (byFn.get(key) ?? 0) + us);
  }
  const total = [...byFn.values()].reduce((a, b) => a + b, 0) || 1;
  return [...byFn.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([fn, us]) => ({ fn, selfMs: us / 1000, share: us / total }));
}

/** Cumulative bucket counts (le -> count) of one histogram, summed over its label sets, from /metrics text. */
export function histogramBuckets(text: string, name: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const m of text.matchAll(new RegExp(`^${name}_bucket\\{([^}]*)\\} (\\S+)$`, 'gm'))) {
    const le = /(?:^|,)le="([^"]+)"/.exec(m[1]!)?.[1];
    if (le === undefined) continue;
    const bound = le === '+Inf' ? Infinity : Number(le);
    out.set(bound, (out.get(bound) ?? 0) + Number(m[2]));
  }
  return out;
}

/**
 * The bucket bound holding quantile q of the observations made between two scrapes (a Prometheus
 * histogram's upper estimate); NaN when nothing was observed in between.
 */
export function quantileBetween(before: Map<number, number>, after: Map<number, number>, q: number): number {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const delta = bounds.map((b) => (after.get(b) ?? 0) - (before.get(b) ?? 0));
  const total = delta.at(-1) ?? 0;
  if (total <= 0) return NaN;
  const rank = q * total;
  const i = delta.findIndex((c) => c >= rank);
  return bounds[i]!;
}
