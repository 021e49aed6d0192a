// Response schemas shared by the route plugins. They serve twice: fastify serializes replies
// with them (dropping undeclared fields), and @fastify/swagger publishes them in /openapi.json.
// A reply a schema does not describe would make the document false, so every status a route
// can send is listed with its route (test/api/openapi.test.ts checks real replies against it).

/** The body of every error reply: `{ error }`, naming the field when the input was bad. */
function errorReply(description: string) {
  return {
    description,
    type: 'object',
    properties: { error: { type: 'string', description: 'What went wrong; for bad input, the field and the rule it broke.' } },
    required: ['error'],
  } as const;
}

export const badRequest = errorReply('Bad input: an invalid, unknown or repeated parameter, named in `error`.');
export const unauthorized = {
  ...errorReply('Missing or wrong bearer token.'),
  headers: {
    'WWW-Authenticate': { type: 'string', pattern: '^Bearer realm=', description: 'The challenge: `Bearer realm="runner-fleet"`, with `error="invalid_token"` for a wrong token.' },
  },
} as const;
export const forbidden = errorReply('This API is disabled: no token is configured for it.');
export const serverError = errorReply('Internal error, e.g. the database failed. The details are logged, never sent.');

/** Security requirement names, declared in openapi.ts. */
export const ADMIN_AUTH = [{ adminToken: [] }] as const;
export const BILLING_AUTH = [{ billingToken: [] }] as const;

/** A plain-text reply (the scrape format, the status page). */
export function textReply(description: string) {
  return { description, content: { 'text/plain': { schema: { type: 'string' } } } } as const;
}

/** JSON schema building blocks of the response bodies. */
export const str = { type: 'string' } as const;
export const nstr = { type: ['string', 'null'] } as const;
export const time = { type: 'string', format: 'date-time' } as const;
export const ntime = { type: ['string', 'null'], format: 'date-time' } as const;
export const nint = { type: ['integer', 'null'] } as const;
export const nnum = { type: ['number', 'null'] } as const;
/** A count: an integer >= 0. */
export const count = { type: 'integer', minimum: 0 } as const;
