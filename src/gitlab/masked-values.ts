// Which strings a job's trace must never show, and the bounds that keep masking cheap.
//
// - The job token, registry passwords (`credentials`), and every variable GitLab sends with `masked: true`, trimmed of surrounding
//   whitespace (as GitLab Runner does).
// - Masked values shorter than 8 characters are not masked: GitLab refuses to mask such values
//   (a masked variable must have 8 characters or more), so one can only arrive from a GitLab that
//   did not check; masking a value like `main` or `1` would garble the log. The job's trace says
//   which variables (by name) were left unmasked.
// - Each value is also masked in its percent-encoded (URL) forms: RFC 3986 (curl, Go), form
//   encoding (space as `+`), JavaScript's encodeURIComponent, and Python's quote (keeps `/`), so a
//   token inside a URL (`https://user:tok%2Fen@host`) does not show either.
// - Bounds: at most MAX_MASKED_VALUES values, each at most MAX_MASKED_VALUE_BYTES, and at most
//   MAX_MASK_PATTERN_BYTES with the encoded forms (what the automaton's memory grows with). A job
//   over a bound is refused before it runs (failed as runner_unsupported, with a trace line
//   naming the bound): running it with some values unmasked could leak them.
import type { JobPayload } from './job-payload.js';

export const MIN_MASKED_LENGTH = 8;
export const MAX_MASKED_VALUES = 1000;
export const MAX_MASKED_VALUE_BYTES = 8 * 1024;
export const MAX_MASK_PATTERN_BYTES = 256 * 1024;

export type MaskPlan =
  | { ok: true; patterns: Buffer[]; values: number; ignored: string[] }
  | { ok: false; error: string };

const HEX = '0123456789ABCDEF';
const isUnreserved = (b: number) => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x2d || b === 0x2e || b === 0x5f || b === 0x7e;

function percentEncode(bytes: Buffer, keep: (b: number) => boolean, spaceAsPlus = false): string {
  let out = '';
  for (const b of bytes) {
    if (keep(b)) out += String.fromCharCode(b);
    else if (spaceAsPlus && b === 0x20) out += '+';
    else out += `%${HEX[b >> 4]}${HEX[b & 15]}`;
  }
  return out;
}

/** The value's percent-encoded forms that differ from it (over its UTF-8 bytes, so never throws). */
export function urlEncodedForms(value: string): string[] {
  const bytes = Buffer.from(value);
  const forms = new Set([
    percentEncode(bytes, isUnreserved),
    percentEncode(bytes, isUnreserved, true),
    percentEncode(bytes, (b) => isUnreserved(b) || "!*'()".includes(String.fromCharCode(b))),
    percentEncode(bytes, (b) => isUnreserved(b) || b === 0x2f),
  ]);
  forms.delete(value);
  return [...forms];
}

/** A variable's name as a trace line shows it: plain names as they are, others quoted (no line breaks or escapes). */
const name = (key: string) => (/^[A-Za-z0-9_]{1,100}$/.test(key) ? key : JSON.stringify(key.slice(0, 100)));

const kib = (n: number) => `${Math.ceil(n / 1024).toLocaleString('en')} KiB`;

/** What to mask in the job's trace (for MaskAutomaton), or why it cannot be masked safely (it must not run). */
export function maskPlan(job: Pick<JobPayload, 'token' | 'variables'> & Partial<Pick<JobPayload, 'credentials' | 'dependencies'>>): MaskPlan {
  const values = new Map<string, string>(); // value -> the first variable that holds it
  const ignored: string[] = [];
  if (job.token) values.set(job.token, 'the job token');
  // Registry passwords reach the VM (docker pulls) and must not show in the trace either.
  for (const c of job.credentials ?? []) if (c.password && c.password.length >= MIN_MASKED_LENGTH && !values.has(c.password)) values.set(c.password, 'a registry password');
  for (const d of job.dependencies ?? []) if (d.token && d.token.length >= MIN_MASKED_LENGTH && !values.has(d.token)) values.set(d.token, 'a dependency token');
  for (const v of job.variables ?? []) {
    if (!v.masked) continue;
    const value = v.value.trim();
    if (!value) continue;
    if (value.length < MIN_MASKED_LENGTH) {
      if (!ignored.includes(name(v.key))) ignored.push(name(v.key));
      continue;
    }
    const bytes = Buffer.byteLength(value);
    if (bytes > MAX_MASKED_VALUE_BYTES) return { ok: false, error: `masked variable ${name(v.key)} is ${bytes.toLocaleString('en')} bytes long; runner-fleet masks values of at most ${MAX_MASKED_VALUE_BYTES.toLocaleString('en')} bytes` };
    if (!values.has(value)) values.set(value, v.key);
  }
  if (values.size > MAX_MASKED_VALUES) return { ok: false, error: `the job has ${values.size.toLocaleString('en')} masked values; runner-fleet masks at most ${MAX_MASKED_VALUES.toLocaleString('en')}` };
  const patterns = new Set<string>();
  let total = 0;
  for (const value of values.keys()) {
    for (const p of [value, ...urlEncodedForms(value)]) {
      if (patterns.has(p)) continue;
      patterns.add(p);
      total += Buffer.byteLength(p);
    }
  }
  if (total > MAX_MASK_PATTERN_BYTES) return { ok: false, error: `the masked values take ${kib(total)} with their URL-encoded forms; runner-fleet masks at most ${kib(MAX_MASK_PATTERN_BYTES)}` };
  return { ok: true, patterns: [...patterns].map((p) => Buffer.from(p)), values: values.size, ignored };
}

/** The trace line for masked variables left unmasked (by name only), or null. */
export function ignoredWarning(ignored: string[]): string | null {
  if (!ignored.length) return null;
  const names = ignored.slice(0, 10).join(', ') + (ignored.length > 10 ? ` and ${ignored.length - 10} more` : '');
  return `WARNING: masked variable${ignored.length > 1 ? 's' : ''} ${names} shorter than ${MIN_MASKED_LENGTH} characters: not masked in this log (GitLab masks only values of ${MIN_MASKED_LENGTH} characters or more)\n`;
}
