// A job trace for the simulator: CSV with the header `arrival_s,class,duration_s`, one job a row,
// rows in any order; every bad row is an error naming its line.
export interface TraceJob {
  arrivalS: number;
  className: string;
  durationS: number;
}

export class TraceError extends Error {
  override name = 'TraceError';
}

export function parseTrace(text: string, classes: ReadonlySet<string>): TraceJob[] {
  const lines = text.split(/\r?\n/);
  const header = (lines[0] ?? '').trim();
  if (header !== 'arrival_s,class,duration_s') throw new TraceError(`line 1: expected the header "arrival_s,class,duration_s", got ${JSON.stringify(header.slice(0, 80))}`);
  const jobs: TraceJob[] = [];
  const errors: string[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const cells = line.split(',');
    if (cells.length !== 3) {
      errors.push(`line ${i + 1}: expected 3 fields (arrival_s,class,duration_s), got ${cells.length}`);
      continue;
    }
    const [a, c, d] = cells as [string, string, string];
    const arrivalS = Number(a);
    const durationS = Number(d);
    if (a.trim() === '' || !Number.isFinite(arrivalS) || arrivalS < 0) errors.push(`line ${i + 1}: arrival_s: expected seconds >= 0, got ${JSON.stringify(a)}`);
    else if (!classes.has(c.trim())) errors.push(`line ${i + 1}: class: ${JSON.stringify(c)} is not a class of the shard config (${[...classes].join(', ')})`);
    else if (d.trim() === '' || !Number.isFinite(durationS) || durationS < 0) errors.push(`line ${i + 1}: duration_s: expected seconds >= 0, got ${JSON.stringify(d)}`);
    else jobs.push({ arrivalS, className: c.trim(), durationS });
    if (errors.length >= 20) break;
  }
  if (errors.length) throw new TraceError(errors.join('\n'));
  return jobs.sort((x, y) => x.arrivalS - y.arrivalS);
}
