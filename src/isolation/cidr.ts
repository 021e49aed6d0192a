// IPv4 CIDR math (pure): parse, overlap, and the first free aligned block of a size inside a range.
// Addresses are unsigned 32-bit integers held in plain numbers (no bit tricks past 2^31).

export interface Cidr {
  /** The network address, as an unsigned 32-bit integer. */
  base: number;
  prefix: number;
}

const TOTAL = 2 ** 32;

export class CidrError extends Error {
  override name = 'CidrError';
}

/** `10.12.8.0/21` -> its block; an error names what is wrong (bad octet, host bits set, ...). */
export function parseCidr(text: string): Cidr {
  return parse(text, false);
}

/** As a cloud reads a source range: host bits masked (`10.0.0.1/24` is 10.0.0.0/24), a bare address is a /32. */
export function parseNetwork(text: string): Cidr {
  return parse(text.includes('/') ? text : `${text.trim()}/32`, true);
}

function parse(text: string, loose: boolean): Cidr {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(text.trim());
  if (!m) throw new CidrError(`expected an IPv4 CIDR like 10.12.8.0/21, got ${JSON.stringify(text)}`);
  const octets = m.slice(1, 5).map(Number);
  const prefix = Number(m[5]);
  if (octets.some((o) => o > 255)) throw new CidrError(`${text}: an octet is above 255`);
  if (prefix > 32) throw new CidrError(`${text}: prefix length above 32`);
  const addr = octets.reduce((a, o) => a * 256 + o, 0);
  const base = addr - (addr % blockSize(prefix));
  if (base !== addr && !loose) throw new CidrError(`${text}: host bits are set; the network is ${formatCidr({ base, prefix })}`);
  return { base, prefix };
}

export function formatCidr(c: Cidr): string {
  const o: number[] = [];
  let a = c.base;
  for (let i = 0; i < 4; i++) {
    o.unshift(a % 256);
    a = Math.floor(a / 256);
  }
  return `${o.join('.')}/${c.prefix}`;
}

export function blockSize(prefix: number): number {
  return 2 ** (32 - prefix);
}

/** One past the block's last address. */
export function cidrEnd(c: Cidr): number {
  return c.base + blockSize(c.prefix);
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.base < cidrEnd(b) && b.base < cidrEnd(a);
}

export function contains(outer: Cidr, inner: Cidr): boolean {
  return inner.base >= outer.base && cidrEnd(inner) <= cidrEnd(outer);
}

const PRIVATE = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'];
/** RFC 1918 private ranges: runner subnets must sit in one of them. */
const PRIVATE_RANGES: readonly Cidr[] = PRIVATE.map(parseCidr);

export function isPrivate(c: Cidr): boolean {
  return PRIVATE_RANGES.some((r) => contains(r, c));
}

/** `10.12.8.0/21 is not inside a private range (10.0.0.0/8, ...)`: the error both the registry and the CLI give. */
export function notPrivate(text: string): string {
  return `${text} is not inside a private range (${PRIVATE.join(', ')})`;
}

/**
 * The lowest block of `/prefix` inside `within` that overlaps none of `used`, or null when the
 * range is full. Skips past each used block instead of stepping block by block, so it costs
 * O(used log used) whatever the size of the range.
 */
export function firstFree(within: Cidr, prefix: number, used: readonly Cidr[]): Cidr | null {
  if (prefix < within.prefix) return null;
  const size = blockSize(prefix);
  const end = cidrEnd(within);
  const taken = used.filter((u) => overlaps(u, within)).sort((x, y) => x.base - y.base);
  let at = within.base;
  for (const u of taken) {
    if (at + size <= u.base) break; // the gap before this used block fits one
    at = Math.max(at, Math.ceil(cidrEnd(u) / size) * size);
  }
  return at + size <= end && at + size <= TOTAL ? { base: at, prefix } : null;
}

/** What is left of `a` once every block of `minus` is taken out, as the fewest aligned blocks. */
export function subtract(a: Cidr, minus: readonly Cidr[]): Cidr[] {
  const hits = minus.filter((m) => overlaps(a, m));
  if (hits.length === 0) return [a];
  if (hits.some((m) => contains(m, a))) return [];
  // Some block lies strictly inside: split in halves and look again.
  const half = blockSize(a.prefix + 1);
  return [...subtract({ base: a.base, prefix: a.prefix + 1 }, hits), ...subtract({ base: a.base + half, prefix: a.prefix + 1 }, hits)];
}
