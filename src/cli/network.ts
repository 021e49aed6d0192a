// `runner-fleet network check|allocate|terraform`: the shard network plan over a CIDR registry
// file, and the Terraform of a shard's runner network.
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { CidrError, formatCidr, isPrivate, notPrivate, parseCidr } from '../isolation/cidr.js';
import { RegistryError, allocate, describeConflict, findConflicts, parseRegistry, registryLine, type RegistryRow } from '../isolation/network-plan.js';
import { TerraformError, terraformFor } from '../isolation/terraform.js';
import { loadOrExplain } from './args.js';
import { UsageError } from './args.js';


export async function networkCommand(sub: 'check' | 'allocate' | 'terraform', args: string[]): Promise<number> {
  const { values, tokens } = parseArgs({
    args,
    tokens: true,
    options: {
      registry: { type: 'string' }, environment: { type: 'string' }, network: { type: 'string' },
      within: { type: 'string', default: '10.0.0.0/8' }, prefix: { type: 'string', default: '21' }, write: { type: 'boolean', default: false },
      config: { type: 'string', short: 'c' }, out: { type: 'string' },
    },
    strict: true,
  });
  // Flags of one subcommand are mistakes on another: say so rather than ignore them.
  const own: Record<typeof sub, string[]> = { check: [], allocate: ['environment', 'network', 'within', 'prefix', 'write'], terraform: ['config', 'environment', 'network', 'out'] };
  for (const t of tokens) if (t.kind === 'option' && t.name !== 'registry' && !own[sub].includes(t.name)) throw new UsageError(`--${t.name}: not an option of network ${sub}`);
  if (!values.registry) throw new UsageError('--registry FILE is required');
  if (sub === 'terraform' && !values.config) throw new UsageError('--config FILE is required');
  if (sub === 'terraform' && (values.environment === undefined) !== (values.network === undefined)) throw new UsageError('--environment and --network name a registry row together: give both or neither');
  const path = values.registry;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    process.stderr.write(`${path}: cannot read: ${(err as Error).message}\n`);
    return 1;
  }
  let rows: RegistryRow[];
  try {
    rows = parseRegistry(text);
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
    process.stderr.write(`${path}: invalid registry\n${err.message.split('\n').map((l) => `  ${l}`).join('\n')}\n`);
    return 1;
  }
  const conflicts = findConflicts(rows);
  if (conflicts.length) {
    process.stderr.write(`${path}: ${conflicts.length} overlapping subnet pair${conflicts.length === 1 ? '' : 's'}\n${conflicts.map((c) => `  ${describeConflict(c)}`).join('\n')}\n`);
    return 1;
  }
  if (sub === 'check') {
    process.stdout.write(`${path}: ok (${rows.length} subnets, no overlaps)\n`);
    return 0;
  }
  if (sub === 'terraform') return terraform(path, rows, values);

  const name = (flag: string, v: string | undefined) => {
    if (!v) throw new UsageError(`--${flag} is required`);
    if (!/^[A-Za-z0-9][A-Za-z0-9._\/-]*$/.test(v)) throw new UsageError(`--${flag}: expected letters, digits and . _ / -, got ${JSON.stringify(v)}`);
    return v;
  };
  const environment = name('environment', values.environment);
  const network = name('network', values.network);
  let within;
  try {
    within = parseCidr(values.within);
  } catch (err) {
    if (err instanceof CidrError) throw new UsageError(`--within: ${err.message}`);
    throw err;
  }
  if (!isPrivate(within)) throw new UsageError(`--within: ${notPrivate(values.within)}`);
  const prefix = Number(values.prefix);
  if (!/^\d{1,2}$/.test(values.prefix) || prefix < within.prefix || prefix > 29) throw new UsageError(`--prefix: expected an integer from ${within.prefix} (the --within range) to 29, got ${JSON.stringify(values.prefix)}`);

  const got = allocate(rows, { environment, network, within, prefix });
  if (got.kind === 'full') {
    process.stderr.write(`${path}: no free /${prefix} left in ${formatCidr(within)}\n`);
    return 1;
  }
  process.stdout.write(`${registryLine(got.row)}\n`);
  if (got.kind === 'existing') {
    process.stderr.write(`${environment} ${network} already has ${formatCidr(got.row.cidr)} (line ${got.row.line}); nothing allocated\n`);
    return 0;
  }
  if (values.write) {
    appendFileSync(path, `${text.endsWith('\n') || text === '' ? '' : '\n'}${registryLine(got.row)}\n`);
    process.stderr.write(`allocated ${formatCidr(got.row.cidr)} to ${environment} ${network}; appended to ${path}\n`);
  } else {
    process.stderr.write(`free: ${formatCidr(got.row.cidr)} (not written; add --write to append it to ${path})\n`);
  }
  return 0;
}

/** Terraform JSON of the shard's runner network, to stdout or --out FILE. */
function terraform(registry: string, rows: RegistryRow[], values: { config?: string; environment?: string; network?: string; out?: string }): number {
  const config = loadOrExplain(values.config!);
  if (!config) return 1;
  let doc;
  try {
    doc = terraformFor({ config, rows, ...(values.environment !== undefined ? { key: { environment: values.environment, network: values.network! } } : {}) });
  } catch (err) {
    if (!(err instanceof TerraformError)) throw err;
    const where = (e: string) => (e.startsWith('registry: ') ? `${registry}: ${e.slice('registry: '.length).replace('--registry FILE', `--registry ${registry}`)}` : e);
    process.stderr.write(`${values.config}: no runner network to write\n${err.errors.map((e) => `  ${where(e)}`).join('\n')}\n`);
    return 1;
  }
  const text = `${JSON.stringify(doc, null, 2)}\n`;
  if (values.out) {
    writeFileSync(values.out, text);
    process.stderr.write(`wrote ${values.out}\n`);
  } else process.stdout.write(text);
  return 0;
}
