// Short-lived signed URLs for the distributed cache, made by the manager per job: a VM reads and
// writes its cache objects with them and never holds cloud credentials. GCS (V4 signing with a
// service account key, @google-cloud/storage) or S3 (SigV4 presigning, @aws-sdk/client-s3);
// both sign locally, without a call to the cloud. The SDK is imported only when a shard has a
// cache of that type.
import { readFileSync } from 'node:fs';
import type { CacheConfig } from '../config/types.js';

/** GCS V4 and S3 SigV4 URLs live at most seven days. */
export const MAX_URL_SECONDS = 7 * 24 * 3600;

export interface CacheSigner {
  /** A URL that GETs `object` for `seconds`. */
  read(object: string, seconds: number): Promise<string>;
  /** A URL that PUTs `object` for `seconds`. */
  write(object: string, seconds: number): Promise<string>;
  /** Where `object` lives, without any signature (for the trace). */
  where(object: string): string;
}

const clampTtl = (s: number) => Math.max(60, Math.min(MAX_URL_SECONDS, Math.ceil(s)));

/** Bounded: signing is local, but a misconfigured credential chain must not hold a job. */
function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: no answer within 10 s`)), 10_000);
    t.unref();
    p.then(resolve, reject).finally(() => clearTimeout(t));
  });
}

export async function createCacheSigner(cfg: CacheConfig): Promise<CacheSigner> {
  return cfg.type === 'gcs' ? gcsSigner(cfg) : s3Signer(cfg);
}

async function gcsSigner(cfg: CacheConfig): Promise<CacheSigner> {
  let key: { client_email?: unknown; private_key?: unknown; project_id?: unknown };
  try {
    key = JSON.parse(readFileSync(cfg.credentialsFile!, 'utf8')) as typeof key;
  } catch (err) {
    throw new Error(`cache.credentialsFile: cannot read a service account key from ${cfg.credentialsFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (typeof key.client_email !== 'string' || typeof key.private_key !== 'string') throw new Error(`cache.credentialsFile: ${cfg.credentialsFile} has no client_email and private_key`);
  const { Storage } = await import('@google-cloud/storage');
  const storage = new Storage({
    credentials: { client_email: key.client_email, private_key: key.private_key },
    ...(typeof key.project_id === 'string' ? { projectId: key.project_id } : {}),
    ...(cfg.endpoint ? { apiEndpoint: cfg.endpoint.replace(/\/+$/, '') } : {}),
  });
  const bucket = storage.bucket(cfg.bucket);
  const base = (cfg.endpoint ?? 'https://storage.googleapis.com').replace(/\/+$/, '');
  const sign = async (object: string, seconds: number, action: 'read' | 'write') =>
    (await bounded(bucket.file(object).getSignedUrl({ version: 'v4', action, expires: Date.now() + clampTtl(seconds) * 1000 }), 'signing a GCS URL'))[0];
  return {
    read: (o, s) => sign(o, s, 'read'),
    write: (o, s) => sign(o, s, 'write'),
    where: (o) => `${base}/${cfg.bucket}/${o}`,
  };
}

async function s3Signer(cfg: CacheConfig): Promise<CacheSigner> {
  const [{ S3Client, GetObjectCommand, PutObjectCommand }, { getSignedUrl }] = await Promise.all([import('@aws-sdk/client-s3'), import('@aws-sdk/s3-request-presigner')]);
  const client = new S3Client({
    region: cfg.region,
    ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
    forcePathStyle: cfg.forcePathStyle,
    ...(cfg.accessKeyId && cfg.secretAccessKey ? { credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey } } : {}),
    // A presigned PUT must not carry a checksum of an empty body (the SDK's default since 3.729).
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const base = cfg.endpoint ? `${cfg.endpoint.replace(/\/+$/, '')}/${cfg.bucket}` : `https://${cfg.bucket}.s3.${cfg.region}.amazonaws.com`;
  return {
    read: (o, s) => bounded(getSignedUrl(client, new GetObjectCommand({ Bucket: cfg.bucket, Key: o }), { expiresIn: clampTtl(s) }), 'presigning an S3 URL'),
    write: (o, s) => bounded(getSignedUrl(client, new PutObjectCommand({ Bucket: cfg.bucket, Key: o }), { expiresIn: clampTtl(s) }), 'presigning an S3 URL'),
    where: (o) => `${base}/${o}`,
  };
}
