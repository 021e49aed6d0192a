// Classifies EC2 failures into ProviderError kinds (pure). The SDK throws a ServiceException whose
// `name` is the EC2 error Code, with `$metadata.httpStatusCode`; network and timeout errors carry
// Node error codes.
import { ProviderError, type ProviderErrorKind } from '../provider.js';

const STOCKOUT = new Set(['InsufficientInstanceCapacity', 'InsufficientHostCapacity', 'InsufficientCapacity', 'Unsupported', 'InsufficientCapacityOnHost']);
const RATE = new Set(['RequestLimitExceeded', 'Throttling', 'ThrottlingException', 'RequestThrottled']);
const QUOTA = new Set(['InstanceLimitExceeded', 'VcpuLimitExceeded', 'HostLimitExceeded', 'MaxHostsExceeded', 'VolumeLimitExceeded', 'InsufficientAddressCapacity']);
const RETRYABLE = new Set(['InternalError', 'InternalFailure', 'ServiceUnavailable', 'Unavailable', 'IncorrectState', 'TimeoutError', 'RequestTimeout']);
const NETWORK_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENOTFOUND', 'ENETUNREACH', 'EHOSTUNREACH', 'ECONNABORTED']);

const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object';

export function awsErrorKind(err: unknown): ProviderErrorKind {
  if (err instanceof ProviderError) return err.kind;
  if (!isRecord(err)) return 'fatal';
  const name = typeof err['name'] === 'string' ? err['name'] : '';
  const code = typeof err['Code'] === 'string' ? err['Code'] : typeof err['code'] === 'string' ? err['code'] : '';
  const status = isRecord(err['$metadata']) && typeof err['$metadata']['httpStatusCode'] === 'number' ? err['$metadata']['httpStatusCode'] : undefined;
  const id = code && !NETWORK_CODES.has(code) ? code : name;
  if (STOCKOUT.has(id)) return 'stockout';
  if (RATE.has(id) || status === 429) return 'rateLimited';
  if (QUOTA.has(id)) return 'quota';
  if (/\.NotFound$/.test(id) || id === 'InvalidInstanceID.NotFound') return 'notFound';
  if (RETRYABLE.has(id) || NETWORK_CODES.has(code) || name === 'AbortError' || (status !== undefined && status >= 500)) return 'retryable';
  if (err instanceof TypeError && /fetch failed|socket|network/i.test(String(err.message))) return 'retryable';
  return 'fatal';
}

export function classifyAwsError(err: unknown, ctx: { operation?: string; zone?: string } = {}): ProviderError {
  if (err instanceof ProviderError) return err;
  const kind = awsErrorKind(err);
  const e = isRecord(err) ? err : {};
  const code = typeof e['name'] === 'string' && e['name'] !== 'Error' ? ` (${e['name']})` : '';
  const message = typeof e['message'] === 'string' ? e['message'] : String(err);
  const where = [ctx.operation, ctx.zone ? `in ${ctx.zone}` : ''].filter(Boolean).join(' ');
  return new ProviderError(kind, `aws${where ? ` ${where}` : ''}: ${message}${code}`, { provider: 'aws', ...ctx, cause: err });
}
