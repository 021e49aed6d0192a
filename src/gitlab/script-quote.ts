// Quoting for the generated bash (its own module: script.ts and the step modules it uses share it).

/** Quote for bash: a single-quoted string with embedded single quotes spliced in. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
