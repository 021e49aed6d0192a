// Turns zod issues into `<path>: expected <what>, got <value>` lines an operator can act on.
import type { z } from 'zod';
import { scrubUrls } from '../isolation/redact.js';
import type { Path } from './env.js';

/** Per-parse zod error map for issues whose schema gave no phrase of its own. */
export function expectedPhrase(iss: { code: string; expected?: string }): string | undefined {
  if (iss.code === 'invalid_type') return iss.expected === 'object' || iss.expected === 'record' ? 'mapping' : iss.expected;
  return undefined;
}

export function formatPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(root)';
  return path.map((k, i) => (typeof k === 'number' ? `[${k}]` : `${i === 0 ? '' : '.'}${String(k)}`)).join('');
}

export function valueAt(tree: unknown, path: readonly PropertyKey[]): unknown {
  let node = tree;
  for (const k of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<PropertyKey, unknown>)[k];
  }
  return node;
}

/** Fields whose values must not be echoed back into error output (logs, CI output). */
function isSecretPath(path: readonly PropertyKey[]): boolean {
  const last = path[path.length - 1];
  return last === 'runnerToken' || last === 'adminToken' || (last === 'key' && path[path.length - 2] === 'secrets') || (last === 'token' && path[0] === 'billing') || (last === 'secret' && path[0] === 'billing');
}

/** JSON of the offending value, shortened; secrets described, URLs cut to scheme and host. */
export function describeValue(value: unknown, path: readonly PropertyKey[]): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'string' && isSecretPath(path)) return `a string of ${value.length} characters`;
  let text = scrubUrls(JSON.stringify(value) ?? String(value));
  if (text.length > 80) text = `${text.slice(0, 77)}...`;
  return text;
}

export function formatIssue(iss: z.core.$ZodIssue, input: unknown): string[] {
  if (iss.code === 'unrecognized_keys') return iss.keys.map((k) => `${formatPath([...iss.path, k])}: unknown key`);
  const value = valueAt(input, iss.path);
  return [`${formatPath(iss.path)}: expected ${iss.message}, got ${describeValue(value, iss.path)}`];
}

export function startsWith(path: readonly PropertyKey[], prefix: Path): boolean {
  return prefix.length <= path.length && prefix.every((k, i) => k === path[i]);
}
