// Windows password retrieval through the `windows-keys` metadata flow: the guest agent creates
// (or resets) the user, encrypts its password with our RSA public key and prints it on serial
// port 4 as a JSON line carrying the same modulus.
import { createPrivateKey, createPublicKey, generateKeyPairSync, privateDecrypt, constants, type KeyObject } from 'node:crypto';

export interface WindowsKeyRequest {
  userName: string;
  modulus: string;
  exponent: string;
  email: string;
  expireOn: string;
}

export interface WindowsKeyPair {
  entry: WindowsKeyRequest;
  privateKey: KeyObject;
}

/** A fresh RSA 2048 key and the `windows-keys` entry announcing it (pure but for randomness). */
export function windowsKeyEntry(userName: string, now: number, opts: { email?: string; validMs?: number } = {}): WindowsKeyPair {
  // The public half encoded by the key generation itself (see generateVmKeyPair: exporting a generated
  // KeyObject to JWK can deadlock Node 20 under GC); a key read back from DER has no key job.
  const der = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 65537, publicKeyEncoding: { type: 'spki', format: 'der' }, privateKeyEncoding: { type: 'pkcs8', format: 'der' } });
  const privateKey = createPrivateKey({ key: der.privateKey, format: 'der', type: 'pkcs8' });
  const jwk = createPublicKey({ key: der.publicKey, format: 'der', type: 'spki' }).export({ format: 'jwk' });
  return {
    privateKey,
    entry: {
      userName,
      modulus: Buffer.from(jwk.n!, 'base64url').toString('base64'),
      exponent: Buffer.from(jwk.e!, 'base64url').toString('base64'),
      email: opts.email ?? `${userName}@runner-fleet.invalid`,
      expireOn: new Date(now + (opts.validMs ?? 5 * 60_000)).toISOString(),
    },
  };
}

/** The metadata value with our entry appended (older expired entries dropped). */
export function mergeWindowsKeys(existing: string | undefined, entry: WindowsKeyRequest, now: number): string {
  const kept = (existing ?? '')
    .split('\n')
    .filter((l) => l.trim())
    .filter((l) => {
      try {
        const e = JSON.parse(l) as { expireOn?: string };
        return !e.expireOn || Date.parse(e.expireOn) > now;
      } catch {
        return false;
      }
    });
  return [...kept, JSON.stringify(entry)].join('\n');
}

/** The `encryptedPassword` for our modulus in serial port 4 output, if the agent wrote it yet. */
export function findEncryptedPassword(serialOutput: string, modulus: string): { encryptedPassword: string } | { errorMessage: string } | undefined {
  for (const line of serialOutput.split('\n').reverse()) {
    const start = line.indexOf('{');
    if (start < 0) continue;
    try {
      const j = JSON.parse(line.slice(start)) as { modulus?: string; encryptedPassword?: string; errorMessage?: string; ready?: boolean };
      if (j.modulus !== modulus) continue;
      if (j.errorMessage) return { errorMessage: j.errorMessage };
      if (j.encryptedPassword) return { encryptedPassword: j.encryptedPassword };
    } catch {
      continue;
    }
  }
  return undefined;
}

export function decryptWindowsPassword(encryptedPassword: string, privateKey: KeyObject): string {
  return privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.from(encryptedPassword, 'base64')).toString('utf8');
}

/** What retrieveWindowsPassword needs from the cloud (the provider passes its rate-limited calls). */
export interface WindowsMetadataApi {
  /** Current metadata: items and fingerprint. */
  getMetadata(): Promise<{ items: { key: string; value: string }[]; fingerprint?: string }>;
  /** Replace the metadata (with the fingerprint read before); resolves once applied. */
  setMetadata(items: { key: string; value: string }[], fingerprint?: string): Promise<void>;
  /** Serial port 4 output from `start` on. */
  serialPort4(start: number): Promise<{ contents: string; next: number }>;
}

/**
 * Sets a fresh `windows-keys` entry for `userName` and waits until the agent answers on serial
 * port 4; returns the decrypted password. Never logs it.
 */
export async function retrieveWindowsPassword(
  api: WindowsMetadataApi,
  userName: string,
  opts: { timeoutMs?: number; pollMs?: number; now?: () => number; sleep?: (ms: number) => Promise<void>; email?: string } = {},
): Promise<string> {
  const now = opts.now ?? Date.now;
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const { entry, privateKey } = windowsKeyEntry(userName, now(), opts.email ? { email: opts.email } : {});
  const md = await api.getMetadata();
  const current = md.items.find((i) => i.key === 'windows-keys')?.value;
  const items = [...md.items.filter((i) => i.key !== 'windows-keys'), { key: 'windows-keys', value: mergeWindowsKeys(current, entry, now()) }];
  await api.setMetadata(items, md.fingerprint);
  const end = now() + (opts.timeoutMs ?? 5 * 60_000);
  let start = 0;
  let seen = '';
  for (;;) {
    const out = await api.serialPort4(start);
    seen += out.contents;
    start = out.next;
    const found = findEncryptedPassword(seen, entry.modulus);
    if (found && 'errorMessage' in found) throw new Error(`Windows agent refused the password reset for ${userName}: ${found.errorMessage}`);
    if (found) return decryptWindowsPassword(found.encryptedPassword, privateKey);
    if (now() > end) throw new Error(`no Windows password for ${userName} on serial port 4 within ${opts.timeoutMs ?? 300_000} ms`);
    await sleep(opts.pollMs ?? 2000);
  }
}
