// Logging with secrets removed at the source: tokens, keys and passwords never reach a log line,
// whatever object a caller happens to log (docs/security.md: private keys never logged).
// scrubUrls is the one function that takes credentials, paths and query strings out of URLs in
// error text: the logger applies it to every `err`, and error text stored in the database goes
// through it too.
import { pino, type DestinationStream, type Logger, type LoggerOptions as PinoOptions } from 'pino';

const SECRET_FIELDS = [
  'token',
  'runnerToken',
  'runner_token',
  'jobToken',
  'job_token',
  'privateKey',
  'private_key',
  'private_key_enc',
  'password',
  'adminToken',
  'secretKey',
  'apiKey',
  'secretAccessKey',
  'sessionToken',
  'authorization',
  // A VM's SSH host key (VmSpec.hostKey): whoever holds it can pose as the VM.
  'hostKey',
];

// Bracket notation: pino paths cannot hold '-' in dotted form.
const SECRET_HEADERS = ['authorization', 'job-token', 'private-token', 'x-api-key', 'cookie', 'set-cookie'].map((h) => `["${h}"]`);

/** pino `redact` paths: each secret field at the top level and one level down, plus HTTP headers. */
export const REDACT_PATHS: readonly string[] = [
  ...SECRET_FIELDS.flatMap((f) => [f, `*.${f}`]),
  // Nested two levels is common enough for config and request bodies ({ config: { gitlab: { token } } }).
  ...['token', 'runnerToken', 'privateKey', 'password', 'adminToken'].map((f) => `*.*.${f}`),
  ...SECRET_HEADERS.flatMap((h) => [`headers${h}`, `*.headers${h}`, `req.headers${h}`, `res.headers${h}`]),
  // Job variables: masked values inside job payloads.
  'variables[*].value',
  '*.variables[*].value',
  'secrets.key',
  '*.secrets.key',
];

export interface LoggerOptions {
  level: string;
  shard?: string;
  /** A pino destination stream, a file path, or stdout when absent. */
  destination?: DestinationStream | string;
}

export function createLogger(opts: LoggerOptions): Logger {
  const dest = typeof opts.destination === 'string' ? pino.destination({ dest: opts.destination, sync: false, mkdir: true }) : opts.destination;
  const options: PinoOptions = {
    level: opts.level,
    redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
    base: { pid: process.pid, ...(opts.shard ? { shard: opts.shard } : {}) },
    serializers: { err: scrubError, error: scrubError },
    hooks: {
      // Messages too: `log.warn('... %s', url)` must not carry a password either.
      logMethod(args, method) {
        // log.error(err) takes err.message as the message: scrub it like the rest.
        const [first, second] = args as unknown[];
        const norm = first instanceof Error && typeof second !== 'string' ? [{ err: first }, first.message, ...args.slice(1)] : args;
        method.apply(this, norm.map((a) => (typeof a === 'string' ? scrubUrls(a) : a)) as Parameters<typeof method>);
      },
    },
  };
  return dest ? pino(options, dest) : pino(options);
}

// scheme://authority then the rest of the URL (path, query, fragment) up to whitespace or a quote.
const URL_IN_TEXT = /\b([a-z][a-z0-9+.-]*:\/\/)([^\s/"'<>`]*)([^\s"'<>`]*)/gi;
const TRAILING_PUNCTUATION = /[.,;:!)\]}]+$/;

/**
 * Text with every URL cut to `scheme://host[:port]`: userinfo becomes `***@`, a path, query or
 * fragment becomes `/…`. `known` URLs (a sink's, say) also have their secret parts (user,
 * password, path, query values) removed wherever they appear, e.g. echoed in a receiver's answer.
 */
export function scrubUrls(text: string, known: readonly string[] = []): string {
  let out = text.replace(URL_IN_TEXT, (whole: string, scheme: string, authority: string, rest: string) => {
    if (scheme.toLowerCase() === 'file://') return whole; // stack frames
    const trailing = TRAILING_PUNCTUATION.exec(rest)?.[0] ?? '';
    const tail = rest.slice(0, rest.length - trailing.length);
    // A malformed password may hold '?' or '#': everything up to the last '@' is userinfo.
    const at = authority.lastIndexOf('@');
    const hostPart = at >= 0 ? authority.slice(at + 1) : authority;
    const cut = hostPart.search(/[?#]/);
    const host = cut >= 0 ? hostPart.slice(0, cut) : hostPart;
    const more = cut >= 0 || (tail !== '' && tail !== '/');
    return `${scheme}${at >= 0 ? '***@' : ''}${host}${more ? '/…' : tail}${trailing}`;
  });
  for (const piece of known.flatMap(urlSecrets)) out = out.split(piece).join('[redacted]');
  return out;
}

/** The parts of a URL that may be secret, longest first; pieces under 4 characters are left. */
function urlSecrets(url: string): string[] {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return [];
  }
  const pieces = [u.username, u.password, u.pathname === '/' ? '' : u.pathname, u.search.slice(1), u.hash.slice(1), ...[...u.searchParams.values()]];
  const decoded = pieces.flatMap((p) => {
    try {
      return [p, decodeURIComponent(p)];
    } catch {
      return [p];
    }
  });
  return [...new Set(decoded)].filter((p) => p.length >= 4).sort((a, b) => b.length - a.length);
}

/** pino serializer of `err`: an Error (with its cause chain) or a string, URLs scrubbed. */
export function scrubError(err: unknown): unknown {
  if (err instanceof Error) return scrubStrings(pino.stdSerializers.err(err), 0);
  return scrubStrings(err, 0);
}

function scrubStrings(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return scrubUrls(value);
  if (depth > 6 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error) return scrubStrings(pino.stdSerializers.err(value), depth + 1);
  if (Array.isArray(value)) return value.map((v) => scrubStrings(v, depth + 1));
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, scrubStrings(v, depth + 1)]));
}
