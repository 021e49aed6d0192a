// Config bytes -> plain JS tree. YAML can do more than a config may: alias bombs (exponential
// expansion), keys that set an object's prototype once copied (`__proto__`), tags that build
// Buffers and Sets, invalid UTF-8 read as U+FFFD. Each is refused here with its line, before
// anything reads the tree.
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import type { Path } from './env.js';
import { formatPath } from './format.js';

/** A shard config is a few KiB; a bigger file is a mistake or an attack. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
const MAX_DEPTH = 32;
const MAX_ALIAS_COUNT = 100;
/** Keys that change an object's prototype when copied with `obj[key] = v`. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

export type TreeResult = { ok: true; tree: unknown } | { ok: false; errors: string[] };

/** UTF-8 text of a config file, or the line of its first invalid byte. */
export function decodeConfig(bytes: Uint8Array): { ok: true; text: string } | { ok: false; errors: string[] } {
  if (bytes.length > MAX_CONFIG_BYTES) return { ok: false, errors: [tooBig(bytes.length)] };
  try {
    return { ok: true, text: new TextDecoder('utf-8', { fatal: true }).decode(bytes) };
  } catch {
    // The longest valid prefix ends at the first bad byte; its newlines give the line.
    const text = new TextDecoder('utf-8').decode(bytes);
    const bad = text.indexOf('\uFFFD');
    const line = text.slice(0, Math.max(0, bad)).split('\n').length;
    return { ok: false, errors: [`yaml: line ${line}: invalid UTF-8 (the file must be UTF-8 text)`] };
  }
}

export function parseYamlTree(text: string): TreeResult {
  if (text.length > MAX_CONFIG_BYTES) return { ok: false, errors: [tooBig(text.length)] };
  const lines = new LineCounter();
  // resolveKnownTags off: !!binary, !!set, !!timestamp... become "unresolved tag" warnings.
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, stringKeys: true, resolveKnownTags: false, lineCounter: lines });
  const problems = [...doc.errors, ...doc.warnings];
  if (problems.length > 0) return { ok: false, errors: problems.map(yamlError) };

  const errors: string[] = [];
  const at = (range: readonly number[] | null | undefined) => {
    const pos = lines.linePos(range?.[0] ?? 0);
    return `line ${pos.line}, column ${pos.col}`;
  };
  let firstAlias: string | null = null;
  const open = new Set<unknown>(); // the collections enclosing the node being walked
  const walk = (node: unknown, path: Path, depth: number): void => {
    if (depth > MAX_DEPTH) {
      errors.push(`${formatPath(path)}: expected at most ${MAX_DEPTH} levels of nesting (yaml ${at((node as { range?: number[] }).range)})`);
      return;
    }
    if (isAlias(node)) {
      firstAlias ??= at(node.range);
      const target = node.resolve(doc as Document);
      if (!target) errors.push(`yaml: ${at(node.range)}: alias *${node.source} has no anchor &${node.source} before it`);
      // `a: &x [*x]` would be a value that contains itself.
      else if (open.has(target)) errors.push(`yaml: ${at(node.range)}: alias *${node.source} refers to a value that contains it`);
      return;
    }
    open.add(node);
    if (isMap(node)) {
      for (const pair of node.items) {
        if (!isPair(pair)) continue;
        const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
        if (FORBIDDEN_KEYS.has(key)) {
          errors.push(`${formatPath([...path, key])}: key not allowed anywhere (__proto__, constructor, prototype) (yaml ${at(isScalar(pair.key) ? pair.key.range : null)})`);
          continue;
        }
        walk(pair.value, [...path, key], depth + 1);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item, [...path, i], depth + 1));
    }
    open.delete(node);
  };
  walk(doc.contents, [], 0);
  if (errors.length > 0) return { ok: false, errors };
  try {
    return { ok: true, tree: doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) };
  } catch (err) {
    // yaml throws a ReferenceError when aliases expand too far (an alias bomb).
    const why = /excessive alias count/i.test((err as Error).message)
      ? `aliases expand to too many nodes (more than ${MAX_ALIAS_COUNT} per alias); write the values out instead`
      : (err as Error).message;
    return { ok: false, errors: [`yaml: ${firstAlias ?? 'line 1, column 1'}: ${why}`] };
  }
}

function tooBig(size: number): string {
  return `yaml: the file is ${size} bytes; a shard config is at most ${MAX_CONFIG_BYTES} bytes`;
}

function yamlError(err: { message: string; linePos?: [{ line: number; col: number }, ...unknown[]] }): string {
  // prettyErrors appends " at line L, column C:" and a source excerpt; keep the sentence only.
  const sentence = err.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
  const pos = err.linePos?.[0];
  return pos ? `yaml: line ${pos.line}, column ${pos.col}: ${sentence}` : `yaml: ${sentence}`;
}
