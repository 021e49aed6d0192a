// ${VAR} and ${VAR:-default} expansion over a parsed YAML tree, before validation, so a
// secret can live in the environment while its field is still validated like any other.

export type Env = Record<string, string | undefined>;
export type Path = (string | number)[];

export interface ExpandResult {
  value: unknown;
  /** Field path + message for each variable that is unset and has no default. */
  errors: { path: Path; message: string }[];
}

// `$${` escapes a literal `${`.
const VAR = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/** Expands variables in every string value (not keys) of a JSON-like tree. */
export function expandEnv(tree: unknown, env: Env): ExpandResult {
  const errors: ExpandResult['errors'] = [];
  const walk = (node: unknown, path: Path): unknown => {
    if (typeof node === 'string') return expandString(node, env, (name) => errors.push({ path, message: `environment variable ${name} is not set` }));
    if (Array.isArray(node)) return node.map((v, i) => walk(v, [...path, i]));
    if (node !== null && typeof node === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(node)) out[k] = walk(v, [...path, k]);
      return out;
    }
    return node;
  };
  return { value: walk(tree, []), errors };
}

function expandString(s: string, env: Env, unset: (name: string) => void): string {
  return s.replace(VAR, (whole, name: string | undefined, fallback: string | undefined) => {
    if (whole === '$${') return '${';
    const v = env[name!];
    // Like the shell: `:-` also covers a variable set to the empty string.
    if (fallback !== undefined) return v === undefined || v === '' ? fallback : v;
    if (v === undefined) {
      unset(name!);
      return '';
    }
    return v;
  });
}
