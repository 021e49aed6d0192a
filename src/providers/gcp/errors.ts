// Classifies Compute Engine failures into ProviderError kinds (pure). Inputs: a GaxiosError
// (`status` + the JSON error body in `message` or `response.data`), a gax GoogleError (`code`),
// a finished Operation's `error`, or a network/timeout error.
import { ProviderError, type ProviderErrorKind } from '../provider.js';

interface Facts {
  status?: number;
  reasons: string[];
  message: string;
}

const STOCKOUT = /^(ZONE_RESOURCE_POOL_EXHAUSTED.*|resourcePoolExhausted|insufficientCapacity|RESOURCE_POOL_EXHAUSTED|ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS)$/;
const RATE = /^(rateLimitExceeded|userRateLimitExceeded|RATE_LIMIT_EXCEEDED)$/;
const QUOTA = /^(quotaExceeded|QUOTA_EXCEEDED|.*_QUOTA_EXCEEDED)$/;
const NOT_FOUND = /^(notFound|RESOURCE_NOT_FOUND|NOT_FOUND)$/;
const EXISTS = /^(alreadyExists|RESOURCE_ALREADY_EXISTS|ALREADY_EXISTS)$/;
const NETWORK_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENOTFOUND', 'ENETUNREACH', 'EHOSTUNREACH', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'ECONNABORTED']);
/** gRPC status codes gax uses -> HTTP. */
const GRPC_HTTP: Record<number, number> = { 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 13: 500, 14: 503, 16: 401 };

const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The `{ error: {...} }` body of a Google API answer, wherever the client put it. */
function errorBody(err: Record<string, unknown>): Record<string, unknown> | undefined {
  const candidates: unknown[] = [isRecord(err['response']) ? err['response']['data'] : undefined, err['message'], err['details']];
  for (const c of candidates) {
    let v = c;
    if (typeof v === 'string') {
      const start = v.indexOf('{');
      if (start < 0) continue;
      try {
        v = JSON.parse(v.slice(start));
      } catch {
        continue;
      }
    }
    if (isRecord(v) && isRecord(v['error'])) return v['error'];
    if (isRecord(v) && Array.isArray(v['errors'])) return v;
  }
  return undefined;
}

function collect(body: Record<string, unknown>, into: Facts): void {
  for (const key of ['status', 'reason', 'code']) if (typeof body[key] === 'string') into.reasons.push(body[key] as string);
  if (typeof body['code'] === 'number' && into.status === undefined) into.status = body['code'];
  if (typeof body['message'] === 'string' && body['message']) into.message = body['message'];
  for (const list of [body['errors'], body['details']]) {
    if (!Array.isArray(list)) continue;
    for (const e of list) {
      if (!isRecord(e)) continue;
      for (const key of ['reason', 'code']) if (typeof e[key] === 'string') into.reasons.push(e[key] as string);
      if (typeof e['message'] === 'string' && e['message'] && into.message === '') into.message = e['message'];
    }
  }
}

function facts(err: unknown): Facts {
  const f: Facts = { reasons: [], message: '' };
  if (!isRecord(err) && !(err instanceof Error)) {
    f.message = String(err);
    return f;
  }
  const e = err as Record<string, unknown>;
  // An Operation (or its `error`): { error: { errors: [{ code, message }] }, httpErrorStatusCode }.
  if (typeof e['httpErrorStatusCode'] === 'number') f.status = e['httpErrorStatusCode'];
  if (isRecord(e['error']) && Array.isArray(e['error']['errors'])) collect(e['error'], f);
  const status = e['status'] ?? (isRecord(e['response']) ? e['response']['status'] : undefined);
  if (typeof status === 'number') f.status = status;
  const body = errorBody(e);
  if (body) collect(body, f);
  if (typeof e['reason'] === 'string') f.reasons.push(e['reason']);
  if (typeof e['code'] === 'string') f.reasons.push(e['code']);
  if (f.status === undefined && typeof e['code'] === 'number' && GRPC_HTTP[e['code']]) f.status = GRPC_HTTP[e['code']];
  if (f.message === '') f.message = typeof e['message'] === 'string' ? e['message'] : String(err);
  return f;
}

function isTimeout(err: unknown, f: Facts): boolean {
  if (!isRecord(err) && !(err instanceof Error)) return false;
  const e = err as { name?: unknown; code?: unknown };
  return e.name === 'TimeoutError' || e.name === 'AbortError' || e.code === 4 || e.code === 'DEADLINE_EXCEEDED' || f.reasons.includes('DEADLINE_EXCEEDED') || /timed? ?out|deadline exceeded/i.test(f.message);
}

/** Which kind of failure this is. `alreadyExists` is not an error kind: see isAlreadyExists. */
export function errorKind(err: unknown): ProviderErrorKind {
  if (err instanceof ProviderError) return err.kind;
  const f = facts(err);
  const any = (re: RegExp) => f.reasons.some((r) => re.test(r));
  if (any(STOCKOUT) || /does not have enough resources available/i.test(f.message)) return 'stockout';
  if (f.status === 429 || any(RATE)) return 'rateLimited';
  if (any(QUOTA) || /^Quota '.+' exceeded/i.test(f.message)) return 'quota';
  if (f.status === 404 || any(NOT_FOUND)) return 'notFound';
  if (f.status !== undefined && f.status >= 500) return 'retryable';
  if (f.status !== undefined && f.status >= 400) return 'fatal';
  if (f.reasons.some((r) => NETWORK_CODES.has(r)) || isTimeout(err, f)) return 'retryable';
  if (err instanceof TypeError && /fetch failed|network|socket/i.test(err.message)) return 'retryable';
  return 'fatal';
}

/** A 412 / `conditionNotMet`: the fingerprint we sent is stale; read the resource again. */
export function isStaleFingerprint(err: unknown): boolean {
  if (err instanceof ProviderError) return isStaleFingerprint(err.details.cause);
  const f = facts(err);
  return f.status === 412 || f.reasons.some((r) => /conditionNotMet/i.test(r));
}

/** A 409 / `alreadyExists`: for an insert of our own deterministic name, that is success. */
export function isAlreadyExists(err: unknown): boolean {
  if (err instanceof ProviderError) return isAlreadyExists(err.details.cause);
  const f = facts(err);
  return f.status === 409 || f.reasons.some((r) => EXISTS.test(r));
}

/** The cloud's own message, without the JSON wrapping. */
export function cloudMessage(err: unknown): string {
  return facts(err).message;
}

export function classifyError(err: unknown, ctx: { operation?: string; zone?: string } = {}): ProviderError {
  if (err instanceof ProviderError) return err;
  const kind = errorKind(err);
  const f = facts(err);
  const where = [ctx.operation, ctx.zone].filter(Boolean).join(' in ');
  const status = f.status !== undefined ? ` (HTTP ${f.status}${f.reasons[0] ? ` ${f.reasons[0]}` : ''})` : f.reasons[0] ? ` (${f.reasons[0]})` : '';
  return new ProviderError(kind, `gcp${where ? ` ${where}` : ''}: ${f.message}${status}`, { provider: 'gcp', ...ctx, cause: err });
}
