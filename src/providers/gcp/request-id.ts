// Deterministic requestIds (pure): a retried insert/delete carries the same id, so GCE runs it once.
import { createHash } from 'node:crypto';

/** A name-based (v5-style, SHA-1) UUID of `parts`. */
export function requestId(...parts: string[]): string {
  const h = createHash('sha1').update(`runner-fleet/gcp\0${parts.join('\0')}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}
