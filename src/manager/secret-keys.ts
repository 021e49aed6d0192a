// Where a shard's secrets key comes from: secrets.key, secrets.keyFile (a mounted Kubernetes
// secret, say), or, in `runner-fleet demo` only, a key kept in the database next to the
// ciphertexts it protects. A passphrase is stretched with a random salt of the shard's own.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { ConfigError, type ShardConfig } from '../config/types.js';
import type { Database } from '../db/schema.js';
import { rawKey, secretKeys, type SecretKeys } from '../isolation/keys.js';

/** The configured material, read once; `database` means no key was configured (demo). */
export type KeySource = { kind: 'config'; material: string } | { kind: 'file'; material: string; path: string } | { kind: 'database' };

const MIN_KEY_CHARS = 16;

export const MISSING_KEY_ERROR =
  'secrets: expected secrets.key or secrets.keyFile outside `runner-fleet demo`, got neither: without one the key that encrypts job tokens and VM private keys would be kept in the same database as them ' +
  '(set secrets.key: "${RUNNER_FLEET_SECRETS_KEY}", or secrets.keyFile: a file holding the key, such as a mounted Kubernetes secret)';

/** Reads secrets.keyFile (trimmed) or takes secrets.key; refuses no key at all unless `demo`. Never logs the material. */
export function keySource(secrets: ShardConfig['secrets'], demo: boolean): KeySource {
  if (secrets.key) return { kind: 'config', material: secrets.key };
  if (secrets.keyFile) return { kind: 'file', material: readKeyFile(secrets.keyFile), path: secrets.keyFile };
  if (demo) return { kind: 'database' };
  throw new ConfigError([MISSING_KEY_ERROR]);
}

export function readKeyFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError([`secrets.keyFile: cannot read ${path}: ${code ?? (err as Error).message}`]);
  }
  const material = text.trim();
  if (material.length < MIN_KEY_CHARS) {
    throw new ConfigError([`secrets.keyFile: expected ${path} to hold a key of at least ${MIN_KEY_CHARS} characters (64 hex, base64 of 32 bytes, or a passphrase), got ${material.length}`]);
  }
  return material;
}

/** The shard's keys: a passphrase gets the shard's random salt (created on first use). */
export async function shardKeys(db: Kysely<Database>, shard: string, source: KeySource, log: Logger): Promise<SecretKeys> {
  if (source.kind === 'database') {
    log.warn('secrets.key is not set (demo): VM keys and job tokens are encrypted with a key kept in the same database');
    const material = await databaseHeldKey(db, shard);
    return secretKeys(material, Buffer.alloc(0));
  }
  const salt = rawKey(source.material) ? Buffer.alloc(0) : await shardSalt(db, shard);
  return secretKeys(source.material, salt);
}

/** The key used when no key is configured (demo); created on first use. */
export async function databaseHeldKey(db: Kysely<Database>, shard: string): Promise<string> {
  await db.insertInto('shard_secrets').values({ shard, key: randomBytes(32).toString('hex') }).onConflict((oc) => oc.column('shard').doNothing()).execute();
  const row = await db.selectFrom('shard_secrets').select('key').where('shard', '=', shard).executeTakeFirstOrThrow();
  return row.key;
}

/**
 * The shard's scrypt salt: random, made once, shared by every manager of the shard (they must
 * derive the same key). Not secret; losing the row makes every v2 ciphertext of the shard unreadable.
 */
export async function shardSalt(db: Kysely<Database>, shard: string): Promise<Buffer> {
  await db.insertInto('shard_key_salts').values({ shard, salt: randomBytes(16).toString('base64') }).onConflict((oc) => oc.column('shard').doNothing()).execute();
  const row = await db.selectFrom('shard_key_salts').select('salt').where('shard', '=', shard).executeTakeFirstOrThrow();
  return Buffer.from(row.salt, 'base64');
}
