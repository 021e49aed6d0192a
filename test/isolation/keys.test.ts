import { randomBytes } from 'node:crypto';
import ssh2 from 'ssh2';
import { describe, expect, it } from 'vitest';
import { decryptSecret, deriveKey, encryptSecret, generateHostKey, generateVmKeyPair, openSecret, secretKeys, sshFingerprint } from '../../src/isolation/keys.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

describe('generateVmKeyPair', () => {
  it('produces an OpenSSH public key and a private key ssh2 parses and that matches it', () => {
    const k = generateVmKeyPair('vm-abc');
    expect(k.publicKey).toMatch(/^ssh-ed25519 AAAA[A-Za-z0-9+/=]+ vm-abc$/);
    const priv = ssh2.utils.parseKey(k.privateKey);
    const pub = ssh2.utils.parseKey(k.publicKey);
    if (priv instanceof Error) throw priv;
    if (pub instanceof Error) throw pub;
    const p = Array.isArray(priv) ? priv[0]! : priv;
    const q = Array.isArray(pub) ? pub[0]! : pub;
    expect(p.type).toBe('ssh-ed25519');
    expect(p.getPublicSSH().equals(q.getPublicSSH())).toBe(true);
    expect(q.verify(Buffer.from('data'), p.sign(Buffer.from('data')))).toBe(true);
  });

  it('gives every VM a different key', () => {
    expect(generateVmKeyPair('a').publicKey.split(' ')[1]).not.toBe(generateVmKeyPair('a').publicKey.split(' ')[1]);
  });
});

describe('secrets at rest', () => {
  const salt = Buffer.alloc(16, 9);
  const ctx = 'jobs.token_enc:shard-a:42';

  it('uses 64 hex chars or base64 of 32 bytes as the key, and stretches a passphrase with the salt', () => {
    const hex = 'ab'.repeat(32);
    expect(deriveKey(hex, salt).toString('hex')).toBe(hex);
    const b64 = Buffer.alloc(32, 7).toString('base64');
    expect(deriveKey(b64, salt).equals(Buffer.alloc(32, 7))).toBe(true);
    const k = deriveKey('correct horse battery staple', salt);
    expect(k).toHaveLength(32);
    expect(deriveKey('correct horse battery staple', salt).equals(k)).toBe(true);
    // Another shard's salt: another key from the same passphrase; the v1 fixed salt another still.
    expect(deriveKey('correct horse battery staple', Buffer.alloc(16, 8)).equals(k)).toBe(false);
    expect(deriveKey('correct horse battery staple').equals(k)).toBe(false);
    expect(() => deriveKey('correct horse battery staple', Buffer.alloc(4))).toThrow(/salt must be at least 16 bytes/);
  });

  it('round-trips a v2 ciphertext and refuses a wrong key with a clear error', () => {
    const key = deriveKey('one-passphrase', salt);
    const enc = encryptSecret('s3cret', key, ctx);
    expect(enc).toMatch(/^v2:[^:]+:[^:]+:[^:]+$/);
    expect(enc).not.toContain('s3cret');
    expect(decryptSecret(enc, key, ctx)).toBe('s3cret');
    expect(encryptSecret('s3cret', key, ctx)).not.toBe(enc);
    expect(() => decryptSecret(enc, deriveKey('two-passphrase', salt), ctx)).toThrow(/wrong key/);
    expect(() => decryptSecret('garbage', key, ctx)).toThrow(/unknown format/);
  });

  it('binds a ciphertext to its row: opened under another row, column or shard it fails', () => {
    const key = randomBytes(32);
    const enc = encryptSecret('glrt-token-of-job-42', key, ctx);
    for (const other of ['jobs.token_enc:shard-a:43', 'jobs.payload_enc:shard-a:42', 'jobs.token_enc:shard-b:42', '']) {
      expect(() => decryptSecret(enc, key, other), other).toThrow(/moved to another row/);
    }
  });

  // Written by the code before 007 (fixed-salt scrypt, no associated data): rows of jobs that were
  // running across the upgrade must still open.
  const V1_PASSPHRASE = 'v1:W5QsSa22dxhIPn0H:F9PIlg7MR+JAN9oN0VfL3Q==:wgtFe68bHdAzJL5Im8pOR2+J6/dh';
  const V1_HEX = 'v1:d0YdmmJCxuxptxY3:4fsC/GIFTRyl1I+6jbErOQ==:B4Rz6Lnt8HIdhG0ZtOv9/neGjnh9';

  it('still opens v1 ciphertexts, with the legacy derivation of a passphrase and as is for a raw key', () => {
    const pass = secretKeys('legacy passphrase of the shard', salt);
    expect(openSecret(V1_PASSPHRASE, pass, 'any context')).toBe('glrt-legacy-job-token');
    expect(openSecret(V1_HEX, secretKeys('ab'.repeat(32), salt), 'any context')).toBe('glrt-legacy-job-token');
    // New secrets of the same key ring are v2 under the salted key, not the legacy one.
    const enc = encryptSecret('x', pass.key, ctx);
    expect(openSecret(enc, pass, ctx)).toBe('x');
    expect(() => decryptSecret(enc, deriveKey('legacy passphrase of the shard'), ctx)).toThrow(/wrong key/);
    expect(() => openSecret(V1_PASSPHRASE, secretKeys('another passphrase here', salt), 'c')).toThrow(/wrong key/);
  });
});

describe('host keys', () => {
  it('fingerprints a key as ssh-keygen -lf does', () => {
    const k = generateVmKeyPair('fp');
    const dir = mkdtempSync(join(tmpdir(), 'rf-fp-'));
    try {
      writeFileSync(join(dir, 'k.pub'), `${k.publicKey}\n`);
      const out = execFileSync('ssh-keygen', ['-lf', join(dir, 'k.pub')], { encoding: 'utf8' });
      expect(out.split(' ')[1]).toBe(sshFingerprint(k.publicKey));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(() => sshFingerprint('garbage')).toThrow(/OpenSSH public key/);
  });

  it('makes a host key whose fingerprint is that of its public half', () => {
    const h = generateHostKey('vm-host');
    const parsed = ssh2.utils.parseKey(h.privateKey);
    if (parsed instanceof Error) throw parsed;
    const blob = (Array.isArray(parsed) ? parsed[0]! : parsed).getPublicSSH();
    expect(h.fingerprint).toBe(sshFingerprint(`ssh-ed25519 ${blob.toString('base64')}`));
  });
});
