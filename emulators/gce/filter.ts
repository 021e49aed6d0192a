// The Compute Engine list `filter` language, the part our callers use (pure):
//   labels.KEY = "VALUE", labels.KEY=VALUE, name != "x", status = RUNNING, labels.KEY:*,
//   name ~ "regex", terms AND-ed by juxtaposition or `AND`, `OR`, `NOT`/`-`, parentheses.
// A malformed filter throws FilterError (GCE answers 400 `invalid`).

export class FilterError extends Error {}

type Op = '=' | '!=' | ':' | '~' | '!~';
export type FilterNode =
  | { kind: 'cmp'; field: string; op: Op; value: string }
  | { kind: 'and' | 'or'; parts: FilterNode[] }
  | { kind: 'not'; part: FilterNode };

type Token = { t: 'lp' | 'rp' | 'op' | 'word' | 'str'; v: string };

function tokenize(src: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '(') {
      out.push({ t: 'lp', v: c });
      i++;
    } else if (c === ')') {
      out.push({ t: 'rp', v: c });
      i++;
    } else if (c === '"' || c === "'") {
      let j = i + 1;
      let v = '';
      while (j < src.length && src[j] !== c) {
        // Only an escaped quote or backslash is unescaped: regex escapes like \d stay as written.
        if (src[j] === '\\' && (src[j + 1] === c || src[j + 1] === '\\')) j++;
        v += src[j];
        j++;
      }
      if (j >= src.length) throw new FilterError(`unterminated string in filter at ${i}`);
      out.push({ t: 'str', v });
      i = j + 1;
    } else if (src.startsWith('!=', i) || src.startsWith('!~', i)) {
      out.push({ t: 'op', v: src.slice(i, i + 2) });
      i += 2;
    } else if (c === '=' || c === ':' || c === '~') {
      out.push({ t: 'op', v: c });
      i++;
    } else {
      const m = /^[^\s()=:~!"']+/.exec(src.slice(i));
      if (!m) throw new FilterError(`unexpected ${JSON.stringify(c)} in filter at ${i}`);
      out.push({ t: 'word', v: m[0] });
      i += m[0].length;
    }
  }
  return out;
}

export function parseFilter(src: string): FilterNode | undefined {
  const toks = tokenize(src);
  if (!toks.length) return undefined;
  let pos = 0;
  const peek = () => toks[pos];
  const isWord = (w: string) => peek()?.t === 'word' && peek()!.v === w;

  const primary = (): FilterNode => {
    const tok = toks[pos++];
    if (!tok) throw new FilterError('filter ends early');
    if (tok.t === 'lp') {
      const inner = or();
      if (toks[pos++]?.t !== 'rp') throw new FilterError('missing ) in filter');
      return inner;
    }
    if (tok.t !== 'word') throw new FilterError(`expected a field name in filter, got ${JSON.stringify(tok.v)}`);
    const op = toks[pos++];
    if (!op || op.t !== 'op') throw new FilterError(`expected an operator after ${tok.v}`);
    const val = toks[pos++];
    if (!val || (val.t !== 'word' && val.t !== 'str')) throw new FilterError(`expected a value after ${tok.v} ${op.v}`);
    return { kind: 'cmp', field: tok.v, op: op.v as Op, value: val.v };
  };
  const unary = (): FilterNode => {
    if (isWord('NOT')) {
      pos++;
      return { kind: 'not', part: unary() };
    }
    if (peek()?.t === 'word' && peek()!.v.startsWith('-') && peek()!.v.length > 1) {
      toks[pos] = { t: 'word', v: peek()!.v.slice(1) };
      return { kind: 'not', part: primary() };
    }
    return primary();
  };
  const and = (): FilterNode => {
    const parts = [unary()];
    while (pos < toks.length && peek()!.t !== 'rp' && !isWord('OR')) {
      if (isWord('AND')) pos++;
      parts.push(unary());
    }
    return parts.length === 1 ? parts[0]! : { kind: 'and', parts };
  };
  const or = (): FilterNode => {
    const parts = [and()];
    while (isWord('OR')) {
      pos++;
      parts.push(and());
    }
    return parts.length === 1 ? parts[0]! : { kind: 'or', parts };
  };
  const node = or();
  if (pos !== toks.length) throw new FilterError(`unexpected ${JSON.stringify(toks[pos]!.v)} in filter`);
  return node;
}

function fieldValue(resource: Record<string, unknown>, path: string): unknown {
  let cur: unknown = resource;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

const glob = (pattern: string) => new RegExp(`^${pattern.split('*').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);

export function matchFilter(node: FilterNode | undefined, resource: Record<string, unknown>): boolean {
  if (!node) return true;
  switch (node.kind) {
    case 'and':
      return node.parts.every((p) => matchFilter(p, resource));
    case 'or':
      return node.parts.some((p) => matchFilter(p, resource));
    case 'not':
      return !matchFilter(node.part, resource);
    case 'cmp': {
      const raw = fieldValue(resource, node.field);
      const has = raw !== undefined && raw !== null && typeof raw !== 'object';
      const v = has ? String(raw) : undefined;
      switch (node.op) {
        case '=':
          return v === node.value;
        case '!=':
          return v !== node.value;
        case ':':
          return node.value === '*' ? has : v !== undefined && glob(node.value).test(v);
        case '~':
        case '!~': {
          let re: RegExp;
          try {
            re = new RegExp(`^(?:${node.value})$`);
          } catch (err) {
            throw new FilterError(`bad regular expression ${JSON.stringify(node.value)}: ${(err as Error).message}`);
          }
          const hit = v !== undefined && re.test(v);
          return node.op === '~' ? hit : !hit;
        }
      }
    }
  }
}
