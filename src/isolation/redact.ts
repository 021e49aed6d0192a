// Logging with secrets removed at the source: tokens, keys and passwords never reach a log line,
// whatever object a caller happens to log (DESIGN.md "Isolation": private keys never logged).
import { pino, type DestinationStream, type Logger } from 'pino';

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
  const options = {
    level: opts.level,
    redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
    base: { pid: process.pid, ...(opts.shard ? { shard: opts.shard } : {}) },
  };
  return dest ? pino(options, dest) : pino(options);
}
