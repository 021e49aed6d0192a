// Per-VM ephemeral SSH keys and encryption of secrets at rest (DESIGN.md "Isolation").
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

/** A fresh ed25519 key pair for one VM. */
export function generateVmKeyPair(comment: string): VmKeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  const seed = Buffer.from(jwk.d!, 'base64url');
  const pub = Buffer.from(jwk.x!, 'base64url');
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

// Fixed salt: the key must be reproducible from the same material on every manager of a shard.
const SCRYPT_SALT = 'runner-fleet/secrets/v1';

/** A 32-byte key from configured material: 64 hex chars or base64 of 32 bytes are used as is, anything else goes through scrypt. */
export function deriveKey(material: string): Buffer {
  const m = material.trim();
  if (m.length === 0) throw new Error('secret key material is empty');
  if (/^[0-9a-fA-F]{64}$/.test(m)) return Buffer.from(m, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(m) || /^[A-Za-z0-9_-]{43}$/.test(m)) {
    const b = Buffer.from(m, m.includes('-') || m.includes('_') ? 'base64url' : 'base64');
    if (b.length === 32) return b;
  }
  return scryptSync(m, SCRYPT_SALT, 32);
}

const VERSION = 'v1';

/** AES-256-GCM: `v1:<iv b64>:<tag b64>:<ciphertext b64>`. */
export function encryptSecret(plain: string, key: Buffer): string {
  assertKey(key);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  const ct = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
  return [VERSION, iv.toString('base64'), cipher.getAuthTag().toString('base64'), ct.toString('base64')].join(':');
}

export function decryptSecret(enc: string, key: Buffer): string {
  assertKey(key);
  const parts = enc.split(':');
  if (parts.length !== 4 || parts[0] !== VERSION) throw new Error(`encrypted secret has an unknown format (expected ${VERSION}:iv:tag:ciphertext)`);
  const [, iv, tag, ct] = parts as [string, string, string, string];
  const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64'));
  decipher.setAuthTag(Buffer.from(tag, 'base64'));
  try {
    return Buffer.concat([decipher.update(Buffer.from(ct, 'base64')), decipher.final()]).toString('utf8');
  } catch {
    // GCM authentication failed: almost always a different secrets.key than the one that wrote it.
    throw new Error('cannot decrypt secret: wrong key (secrets.key changed?) or corrupted data');
  }
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
