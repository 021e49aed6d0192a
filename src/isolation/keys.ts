// Per-VM ephemeral SSH keys and encryption of secrets at rest (docs/architecture.md "Isolation").
import { createCipheriv, createDecipheriv, createHash, generateKeyPairSync, randomBytes, scryptSync } from 'node:crypto';

export interface VmKeyPair {
  /** OpenSSH public key line: `ssh-ed25519 AAAA... comment`. */
  publicKey: string;
  /** OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`): ssh2 does not parse PKCS8 ed25519. */
  privateKey: string;
}

/** SSH wire format: uint32 length + bytes. */
function sshString(data: Buffer | string): Buffer {
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(buf.length);
  return Buffer.concat([len, buf]);
}

function uint32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

// RFC 8410: an Ed25519 key in PKCS#8 / SubjectPublicKeyInfo DER is a fixed prefix and 32 bytes.
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function derTail(der: Buffer, prefix: Buffer): Buffer {
  if (der.length !== prefix.length + 32 || !der.subarray(0, prefix.length).equals(prefix)) throw new Error('unexpected Ed25519 DER encoding from node:crypto');
  return Buffer.from(der.subarray(prefix.length));
}

/** A fresh ed25519 key pair for one VM. */
export function generateVmKeyPair(comment: string): VmKeyPair {
  // DER straight out of the key generation, never a KeyObject exported afterwards: on Node 20, a
  // GC during KeyObject.export({ format: 'jwk' }) can collect the finished key job, whose destructor
  // takes the mutex the export holds; that deadlocked a process after some thousands of keys.
  const der = generateKeyPairSync('ed25519', { privateKeyEncoding: { type: 'pkcs8', format: 'der' }, publicKeyEncoding: { type: 'spki', format: 'der' } });
  const seed = derTail(der.privateKey, PKCS8_ED25519_PREFIX);
  const pub = derTail(der.publicKey, SPKI_ED25519_PREFIX);
  const pubBlob = Buffer.concat([sshString('ssh-ed25519'), sshString(pub)]);

  // openssh-key-v1, unencrypted: the key is encrypted at rest by encryptSecret instead.
  const check = randomBytes(4);
  let priv = Buffer.concat([check, check, sshString('ssh-ed25519'), sshString(pub), sshString(Buffer.concat([seed, pub])), sshString(comment)]);
  const pad: number[] = [];
  for (let i = 1; (priv.length + pad.length) % 8 !== 0; i++) pad.push(i);
  priv = Buffer.concat([priv, Buffer.from(pad)]);
  const body = Buffer.concat([
    Buffer.from('openssh-key-v1\0'),
    sshString('none'),
    sshString('none'),
    sshString(''),
    uint32(1),
    sshString(pubBlob),
    sshString(priv),
  ]).toString('base64');
  const lines = body.match(/.{1,70}/g) ?? [];
  return {
    publicKey: `ssh-ed25519 ${pubBlob.toString('base64')}${comment ? ` ${comment}` : ''}`,
    privateKey: `-----BEGIN OPENSSH PRIVATE KEY-----\n${lines.join('\n')}\n-----END OPENSSH PRIVATE KEY-----\n`,
  };
}

// v1 ciphertexts (written before 007) used one fixed salt for every shard; kept only to read them.
const LEGACY_SCRYPT_SALT = 'runner-fleet/secrets/v1';
/**
 * scrypt, not HKDF: a passphrase is low-entropy, and scrypt's memory-hard work makes guessing it
 * from a stolen database expensive; HKDF suits only material that is already uniformly random.
 * N = 2^15 (32 MiB, ~0.1 s): paid once per manager start.
 */
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;

/** 64 hex chars or base64(url) of 32 bytes: a key used as is; null for anything else (a passphrase). */
export function rawKey(material: string): Buffer | null {
  const m = material.trim();
  if (/^[0-9a-fA-F]{64}$/.test(m)) return Buffer.from(m, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(m) || /^[A-Za-z0-9_-]{43}$/.test(m)) {
    const b = Buffer.from(m, m.includes('-') || m.includes('_') ? 'base64url' : 'base64');
    if (b.length === 32) return b;
  }
  return null;
}

/**
 * A 32-byte key from configured material: a raw key is used as is, a passphrase goes through
 * scrypt with `salt` (the shard's random salt, kept in the database: it is not secret).
 * Without a salt: the v1 derivation (fixed salt), for ciphertexts written before 007.
 */
export function deriveKey(material: string, salt?: Buffer): Buffer {
  const m = material.trim();
  if (m.length === 0) throw new Error('secret key material is empty');
  const raw = rawKey(m);
  if (raw) return raw;
  if (!salt) return scryptSync(m, LEGACY_SCRYPT_SALT, 32);
  if (salt.length < 16) throw new Error(`secret key salt must be at least 16 bytes, got ${salt.length}`);
  return scryptSync(m, salt, 32, SCRYPT);
}

/** The key new secrets are sealed with, and the one v1 ciphertexts were (computed on first need). */
export interface SecretKeys {
  key: Buffer;
  legacy: Buffer | (() => Buffer);
}

/** Keys of configured material: for a raw key both are the key itself. */
export function secretKeys(material: string, salt: Buffer): SecretKeys {
  const key = deriveKey(material, salt);
  if (rawKey(material)) return { key, legacy: key };
  let legacy: Buffer | null = null;
  return { key, legacy: () => (legacy ??= deriveKey(material)) };
}

const V1 = 'v1';
const V2 = 'v2';

/**
 * AES-256-GCM: `v2:<iv b64>:<tag b64>:<ciphertext b64>`, authenticated with `context` as
 * associated data, so a ciphertext only opens where it was written: its table, column, shard and
 * row (`jobs.token_enc:<shard>:<job id>`). Copied to another row, it fails to decrypt.
 */
export function encryptSecret(plain: string, key: Buffer, context: string): string {
  assertKey(key);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(context, 'utf8'));
  const ct = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
  return [V2, iv.toString('base64'), cipher.getAuthTag().toString('base64'), ct.toString('base64')].join(':');
}

/**
 * Opens a v2 ciphertext under `context`, or a v1 one (no associated data, written before 007)
 * under `legacyKey`. Throws when the key or the context is not the one it was written with.
 */
export function decryptSecret(enc: string, key: Buffer, context: string, legacyKey: Buffer = key): string {
  const parts = enc.split(':');
  if (parts.length !== 4 || (parts[0] !== V1 && parts[0] !== V2)) throw new Error(`encrypted secret has an unknown format (expected ${V2}:iv:tag:ciphertext)`);
  const [version, iv, tag, ct] = parts as [string, string, string, string];
  const k = version === V1 ? legacyKey : key;
  assertKey(k);
  const decipher = createDecipheriv('aes-256-gcm', k, Buffer.from(iv, 'base64'));
  if (version === V2) decipher.setAAD(Buffer.from(context, 'utf8'));
  decipher.setAuthTag(Buffer.from(tag, 'base64'));
  try {
    return Buffer.concat([decipher.update(Buffer.from(ct, 'base64')), decipher.final()]).toString('utf8');
  } catch {
    // GCM authentication failed: a different secrets key than the one that wrote it, or a
    // ciphertext moved from the row it was written for.
    throw new Error('cannot decrypt secret: wrong key (secrets.key changed?), a ciphertext moved to another row, or corrupted data');
  }
}

/** Opens with a key ring (SecretKeys); the legacy key is derived only if a v1 ciphertext shows up. */
export function openSecret(enc: string, keys: SecretKeys, context: string): string {
  const legacy = enc.startsWith(`${V1}:`) ? (typeof keys.legacy === 'function' ? keys.legacy() : keys.legacy) : keys.key;
  return decryptSecret(enc, keys.key, context, legacy);
}

function assertKey(key: Buffer): void {
  if (key.length !== 32) throw new Error(`secret key must be 32 bytes, got ${key.length}`);
}

/** `SHA256:<base64, no padding>` of an OpenSSH public key line, as `ssh-keygen -lf` prints it. */
export function sshFingerprint(publicKeyLine: string): string {
  const blob = publicKeyLine.trim().split(/\s+/)[1];
  if (!blob) throw new Error('not an OpenSSH public key line (expected "<type> <base64> [comment]")');
  return `SHA256:${createHash('sha256').update(Buffer.from(blob, 'base64')).digest('base64').replace(/=+$/, '')}`;
}

/** A VM's SSH host key made by the manager: the private half goes to the VM, the fingerprint is pinned. */
export function generateHostKey(comment: string): { privateKey: string; fingerprint: string } {
  const k = generateVmKeyPair(comment);
  return { privateKey: k.privateKey, fingerprint: sshFingerprint(k.publicKey) };
}
