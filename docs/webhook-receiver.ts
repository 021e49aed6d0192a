// How a billing webhook receiver checks a runner-fleet delivery: copy this into your receiver.
// Check before parsing, over the raw body bytes exactly as received; answer 2xx only for `ok`,
// then dedupe events on `id` (delivery is at least once). test/manager/billing-delivery.test.ts
// runs it against real deliveries.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** A delivery signed longer ago (or further ahead, clock skew) than this is refused as a replay. */
export const REPLAY_WINDOW_SECONDS = 300;

export type Verdict = { ok: true } | { ok: false; reason: string };

/**
 * `headers` as node:http gives them (lower-case names). A replay inside the window passes this
 * check and is then harmless: its events' ids were seen already.
 */
export function verifyBillingWebhook(
  secret: string,
  headers: Record<string, string | string[] | undefined>,
  rawBody: Buffer | string,
  nowSeconds: number = Date.now() / 1000,
): Verdict {
  const timestamp = headers['x-runner-fleet-timestamp'];
  const signature = headers['x-runner-fleet-signature'];
  if (typeof timestamp !== 'string' || !/^\d{1,12}$/.test(timestamp)) return { ok: false, reason: 'missing or malformed X-Runner-Fleet-Timestamp' };
  if (Math.abs(nowSeconds - Number(timestamp)) > REPLAY_WINDOW_SECONDS) return { ok: false, reason: 'timestamp outside the replay window' };
  if (typeof signature !== 'string') return { ok: false, reason: 'missing X-Runner-Fleet-Signature' };
  // The timestamp is signed with the body: changing either breaks the signature.
  const expected = Buffer.from(`sha256=${createHmac('sha256', secret).update(`${timestamp}.`).update(rawBody).digest('hex')}`);
  const given = Buffer.from(signature);
  // Constant time: a byte-by-byte compare would tell an attacker how much of a guess was right.
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'bad signature' };
  return { ok: true };
}
