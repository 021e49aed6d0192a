// A bucket emulator for the distributed cache: the object GET/PUT/HEAD of Cloud Storage's XML API
// and of S3 (path style), reached with signed URLs only, each checked as the services check them:
// GCS V4 (GOOG4-RSA-SHA256 over the canonical request, verified with the service account's
// public key) and S3 SigV4 query presigning (AWS4-HMAC-SHA256 with the secret key). A URL past
// X-Goog-Expires / X-Amz-Expires, a signature that does not match, or a method it was not signed
// for is refused with the service's error XML. It makes its own service account key and S3 key
// pair for the manager's config. Used by the demo and the tests; loopback only.
import { createHash, createHmac, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';

export interface BucketEmulator {
  url: string;
  /** A service account key file's content (GCS): client_email, private_key, project_id. */
  gcsKey: { type: 'service_account'; client_email: string; private_key: string; project_id: string };
  s3: { accessKeyId: string; secretAccessKey: string; region: string };
  /** Stored objects of a bucket (name -> bytes). */
  objects(bucket: string): Map<string, Buffer>;
  /** Every request answered: method, path (no query), status, and which API. */
  requests: { method: string; path: string; status: number; api: 'gcs' | 's3' | 'none' }[];
  faults: { failNext?: { status: number; times: number } };
  close(): Promise<void>;
}

/** RFC 3986 encoding, as both services canonicalize query strings. */
const enc = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

function parseQuery(raw: string): [string, string][] {
  if (!raw) return [];
  return raw.split('&').filter(Boolean).map((p) => {
    const i = p.indexOf('=');
    const k = i < 0 ? p : p.slice(0, i);
    const v = i < 0 ? '' : p.slice(i + 1);
    const dec = (x: string) => decodeURIComponent(x.replace(/\+/g, '%20'));
    return [dec(k), dec(v)];
  });
}

const canonicalQuery = (q: [string, string][], drop: string) =>
  q
    .filter(([k]) => k !== drop)
    .map(([k, v]) => [enc(k), enc(v)] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');

/** `YYYYMMDDTHHMMSSZ` -> ms, or NaN. */
function parseStamp(s: string | undefined): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s ?? '');
  return m ? Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) : NaN;
}

const sha256hex = (s: string) => createHash('sha256').update(s).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();

function xmlError(res: ServerResponse, status: number, code: string, message: string): void {
  res.writeHead(status, { 'content-type': 'application/xml' });
  res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message></Error>`);
}

export async function startBucketEmulator(opts: { host?: string; port?: number } = {}): Promise<BucketEmulator> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const gcsKey = {
    type: 'service_account' as const,
    client_email: 'runner-fleet-cache@emulator-project.iam.gserviceaccount.com',
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    project_id: 'emulator-project',
  };
  const s3 = { accessKeyId: `AKIA${randomBytes(8).toString('hex').toUpperCase()}`, secretAccessKey: randomBytes(30).toString('base64'), region: 'us-east-1' };
  const buckets = new Map<string, Map<string, Buffer>>();
  const bucket = (name: string) => buckets.get(name) ?? buckets.set(name, new Map()).get(name)!;
  const requests: BucketEmulator['requests'] = [];
  const faults: BucketEmulator['faults'] = {};

  /** Why a signed request is refused, or null when its signature holds. */
  function check(req: IncomingMessage, path: string, q: [string, string][]): { api: 'gcs' | 's3'; refusal: [number, string, string] | null } | null {
    const get = (k: string) => q.find(([n]) => n === k)?.[1];
    const headers = (list: string) =>
      list.split(';').map((h) => `${h}:${String(h === 'host' ? req.headers.host : req.headers[h] ?? '').trim().replace(/\s{2,}/g, ' ')}\n`).join('');
    if (get('X-Goog-Algorithm') !== undefined) {
      if (get('X-Goog-Algorithm') !== 'GOOG4-RSA-SHA256') return { api: 'gcs', refusal: [400, 'InvalidArgument', 'Unsupported X-Goog-Algorithm'] };
      const [email, ...scope] = (get('X-Goog-Credential') ?? '').split('/');
      if (email !== gcsKey.client_email) return { api: 'gcs', refusal: [403, 'AccessDenied', 'Unknown service account'] };
      const at = parseStamp(get('X-Goog-Date'));
      const expires = Number(get('X-Goog-Expires'));
      if (!Number.isFinite(at) || !(expires > 0 && expires <= 604800)) return { api: 'gcs', refusal: [400, 'AuthorizationQueryParametersError', 'Invalid X-Goog-Date or X-Goog-Expires'] };
      if (Date.now() > at + expires * 1000) return { api: 'gcs', refusal: [400, 'ExpiredToken', 'The provided token has expired.'] };
      // The client library signs the endpoint's host name without a port (GCS serves on 443).
      const signed = get('X-Goog-SignedHeaders') ?? '';
      const hdrs = headers(signed).replace(/^host:([^\n]*?):\d+\n/m, 'host:$1\n');
      const canonical = [req.method, path, canonicalQuery(q, 'X-Goog-Signature'), hdrs, signed, 'UNSIGNED-PAYLOAD'].join('\n');
      const toSign = ['GOOG4-RSA-SHA256', get('X-Goog-Date'), scope.join('/'), sha256hex(canonical)].join('\n');
      const ok = verify('sha256', Buffer.from(toSign), publicKey, Buffer.from(get('X-Goog-Signature') ?? '', 'hex'));
      return { api: 'gcs', refusal: ok ? null : [403, 'SignatureDoesNotMatch', 'Access denied. The request signature we calculated does not match the signature you provided.'] };
    }
    if (get('X-Amz-Algorithm') !== undefined) {
      if (get('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256') return { api: 's3', refusal: [400, 'AuthorizationQueryParametersError', 'Unsupported X-Amz-Algorithm'] };
      const [akid, date, region, service, term] = (get('X-Amz-Credential') ?? '').split('/');
      if (akid !== s3.accessKeyId) return { api: 's3', refusal: [403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.'] };
      const at = parseStamp(get('X-Amz-Date'));
      const expires = Number(get('X-Amz-Expires'));
      if (!Number.isFinite(at) || !(expires > 0 && expires <= 604800)) return { api: 's3', refusal: [400, 'AuthorizationQueryParametersError', 'Invalid X-Amz-Date or X-Amz-Expires'] };
      if (Date.now() > at + expires * 1000) return { api: 's3', refusal: [403, 'AccessDenied', 'Request has expired'] };
      const signed = get('X-Amz-SignedHeaders') ?? '';
      const canonical = [req.method, path, canonicalQuery(q, 'X-Amz-Signature'), headers(signed), signed, get('X-Amz-Content-Sha256') ?? 'UNSIGNED-PAYLOAD'].join('\n');
      const scope = [date, region, service, term].join('/');
      const toSign = ['AWS4-HMAC-SHA256', get('X-Amz-Date'), scope, sha256hex(canonical)].join('\n');
      const key = hmac(hmac(hmac(hmac(`AWS4${s3.secretAccessKey}`, date ?? ''), region ?? ''), service ?? ''), term ?? '');
      const ok = createHmac('sha256', key).update(toSign).digest('hex') === get('X-Amz-Signature');
      return { api: 's3', refusal: ok ? null : [403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.'] };
    }
    return null;
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<'gcs' | 's3' | 'none'> {
    const raw = req.url ?? '/';
    const qi = raw.indexOf('?');
    const path = qi < 0 ? raw : raw.slice(0, qi);
    const q = parseQuery(qi < 0 ? '' : raw.slice(qi + 1));
    const body: Buffer[] = [];
    for await (const c of req) body.push(c as Buffer);
    const verdict = check(req, path, q);
    if (!verdict) {
      xmlError(res, 403, 'AccessDenied', 'Anonymous caller does not have access; only signed URLs are served.');
      return 'none';
    }
    if (verdict.refusal) {
      xmlError(res, ...verdict.refusal);
      return verdict.api;
    }
    const fail = faults.failNext;
    if (fail && fail.times > 0) {
      fail.times--;
      xmlError(res, fail.status, 'InternalError', 'injected fault');
      return verdict.api;
    }
    const m = /^\/([^/]+)\/(.+)$/.exec(path);
    if (!m) {
      xmlError(res, 400, 'InvalidURI', 'Expected /<bucket>/<object>');
      return verdict.api;
    }
    const objects = bucket(decodeURIComponent(m[1]!));
    const name = decodeURIComponent(m[2]!);
    if (req.method === 'PUT') {
      const data = Buffer.concat(body);
      objects.set(name, data);
      res.writeHead(200, { etag: `"${createHash('md5').update(data).digest('hex')}"` });
      res.end();
    } else if (req.method === 'GET' || req.method === 'HEAD') {
      const data = objects.get(name);
      if (!data) xmlError(res, 404, 'NoSuchKey', 'The specified key does not exist.');
      else {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(data.length) });
        res.end(req.method === 'HEAD' ? undefined : data);
      }
    } else xmlError(res, 405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.');
    return verdict.api;
  }

  const server = createServer((req, res) => {
    handle(req, res).then(
      (api) => requests.push({ method: req.method ?? '', path: (req.url ?? '').split('?')[0]!, status: res.statusCode, api }),
      () => {
        if (!res.headersSent) xmlError(res, 500, 'InternalError', 'emulator error');
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve));
  const addr = server.address() as { port: number };
  return {
    url: `http://${opts.host ?? '127.0.0.1'}:${addr.port}`,
    gcsKey,
    s3,
    objects: bucket,
    requests,
    faults,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}
