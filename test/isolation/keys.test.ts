import ssh2 from 'ssh2';
import { describe, expect, it } from 'vitest';
import { decryptSecret, deriveKey, encryptSecret, generateHostKey, generateVmKeyPair, sshFingerprint } from '../../src/isolation/keys.js';
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
  it('derives 32-byte keys from hex, base64 or a passphrase', () => {
    const hex = 'ab'.repeat(32);
    expect(deriveKey(hex).toString('hex')).toBe(hex);
    const b64 = Buffer.alloc(32, 7).toString('base64');
    expect(deriveKey(b64).equals(Buffer.alloc(32, 7))).toBe(true);
    const k = deriveKey('correct horse battery staple');
    expect(k).toHaveLength(32);
    expect(deriveKey('correct horse battery staple').equals(k)).toBe(true);
  });

  it('round-trips and refuses a wrong key with a clear error', () => {
    const key = deriveKey('one');
    const enc = encryptSecret('s3cret', key);
    expect(enc).toMatch(/^v1:[^:]+:[^:]+:[^:]+$/);
    expect(enc).not.toContain('s3cret');
    expect(decryptSecret(enc, key)).toBe('s3cret');
    expect(encryptSecret('s3cret', key)).not.toBe(enc);
    expect(() => decryptSecret(enc, deriveKey('two'))).toThrow(/wrong key/);
    expect(() => decryptSecret('garbage', key)).toThrow(/unknown format/);
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
