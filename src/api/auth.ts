// Bearer-token checks for the admin and billing APIs, in constant time.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';

/** True when `header` is `Bearer <token>`. Hashing first gives equal lengths, so the compare leaks nothing. */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header ?? '');
  if (!m) return false;
  const given = createHash('sha256').update(m[1]!).digest();
  const expected = createHash('sha256').update(token).digest();
  return timingSafeEqual(given, expected);
}

/** onRequest hook: 403 while the admin API is disabled, 401 without the right token. */
export function requireAdmin(adminToken: string | null) {
  return requireBearer(adminToken, 'admin API disabled: set http.adminToken');
}

/** onRequest hook: 403 (`disabled`) when no token is configured, 401 without the right one. */
export function requireBearer(token: string | null, disabled: string) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (token === null) {
      await reply.code(403).send({ error: disabled });
      return;
    }
    const header = req.headers.authorization;
    if (bearerMatches(header, token)) return;
    const missing = header === undefined;
    await reply
      .code(401)
      .header('WWW-Authenticate', missing ? 'Bearer realm="runner-fleet"' : 'Bearer realm="runner-fleet", error="invalid_token"')
      .send({ error: missing ? 'missing bearer token' : 'invalid bearer token' });
  };
}
