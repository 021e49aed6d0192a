// Durations as operators write them ("500ms", "3s", "2m", "3h", "1h30m") <-> milliseconds.

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
type Unit = keyof typeof UNIT_MS;
const ORDER: Unit[] = ['d', 'h', 'm', 's', 'ms'];

/** Milliseconds for a duration string, or null when it is not one. Units must go largest first. */
export function tryParseDuration(text: string): number | null {
  const s = text.trim();
  if (s === '') return null;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;
  let total = 0;
  let lastRank = -1;
  while (re.lastIndex < s.length) {
    const m = re.exec(s);
    if (!m) return null;
    const rank = ORDER.indexOf(m[2] as Unit);
    // "3s2m" or "1h1h" read as typos, not as sums.
    if (rank <= lastRank) return null;
    lastRank = rank;
    total += Number(m[1]) * UNIT_MS[m[2] as Unit];
  }
  return Math.round(total);
}

/** Milliseconds for a duration string; throws on anything else. */
export function parseDuration(text: string): number {
  const ms = tryParseDuration(text);
  if (ms === null) throw new Error(`invalid duration ${JSON.stringify(text)}: expected e.g. 500ms, 3s, 2m, 3h, 1h30m`);
  return ms;
}

/** The shortest exact form in h/m/s/ms: 5_400_000 -> "1h30m", 1500 -> "1s500ms", 0 -> "0s". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`cannot format duration ${ms}`);
  let rest = Math.round(ms);
  if (rest === 0) return '0s';
  let out = '';
  // Hours at most: "24h" reads better than "1d" in limits and logs.
  for (const unit of ORDER.slice(1)) {
    const n = Math.floor(rest / UNIT_MS[unit]);
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * UNIT_MS[unit];
    }
  }
  return out;
}
