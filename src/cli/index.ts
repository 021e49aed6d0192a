// The command line: dispatch to one module per command (each loaded only when run), and the
// usage text. Commands: start, demo, migrate, config check, simulate, billing export, network
// check|allocate|terraform.
import { UsageError } from './args.js';

const USAGE = `runner-fleet: a fresh VM for every GitLab CI job

Usage:
  runner-fleet start --config SHARD.yaml [--handover]
                                              run one shard's manager; SIGTERM drains it (with
                                              --handover: leaves running jobs and warm VMs to the
                                              standby and exits at once)
  runner-fleet demo [--listen HOST:PORT]      GitLab emulator + sample jobs + a manager on PGlite
  runner-fleet migrate --config SHARD.yaml    apply database migrations and exit
  runner-fleet config check --config SHARD.yaml
                                              validate a shard config; exit 1 on any error
  runner-fleet simulate --config SHARD.yaml --trace TRACE.csv [--policy static|predictive]
                       [--boot CLASS=MEDIAN_S:P95_S ...] [--seed N] --report OUT.json
                                              run the pool policy on a job trace, on a virtual clock
  runner-fleet billing export --config SHARD.yaml [--since TIME] [--until TIME] [--format csv|jsonl]
                                              compute-minute events of jobs finished in [since, until)
                                              to stdout (default: all of them, csv)
  runner-fleet network check --registry CIDRS.csv
                                              find overlapping subnets in a CIDR registry; exit 1 on any
  runner-fleet network allocate --registry CIDRS.csv --environment ENV --network NET
                       [--within 10.0.0.0/8] [--prefix 21] [--write]
                                              the subnet CIDR of a shard network: its registered one, else
                                              the lowest free block (--write appends it to the registry)
  runner-fleet network terraform --config SHARD.yaml --registry CIDRS.csv
                       [--environment ENV --network NET] [--out FILE]
                                              Terraform JSON of the shard's runner network: its subnet from
                                              the registry, and firewall rules (gcp) or security groups (aws,
                                              mac) letting only the manager in
`;

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'start':
      return (await import('./start.js')).start(rest);
    case 'demo': {
      const { runDemo } = await import('./demo.js');
      return runDemo(rest);
    }
    case 'migrate':
      return (await import('./migrate.js')).migrate(rest);
    case 'config':
      if (rest[0] === 'check') return (await import('./config-check.js')).configCheck(rest.slice(1));
      process.stderr.write(`unknown config subcommand ${JSON.stringify(rest[0] ?? '')}\n\n${USAGE}`);
      return 2;
    case 'simulate':
      return (await import('./simulate.js')).simulateCommand(rest);
    case 'billing':
      if (rest[0] === 'export') return (await import('./billing.js')).billingExport(rest.slice(1));
      process.stderr.write(`unknown billing subcommand ${JSON.stringify(rest[0] ?? '')}\n\n${USAGE}`);
      return 2;
    case 'network':
      if (rest[0] === 'check' || rest[0] === 'allocate' || rest[0] === 'terraform') {
        const { networkCommand } = await import('./network.js');
        return networkCommand(rest[0], rest.slice(1));
      }
      process.stderr.write(`unknown network subcommand ${JSON.stringify(rest[0] ?? '')}\n\n${USAGE}`);
      return 2;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`);
      return 2;
  }
}

export async function runCli(): Promise<void> {
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`runner-fleet: ${(err as Error).stack ?? err}\n`);
      process.exitCode = 1;
    }
  }
  // Sandboxes and sockets must not keep a finished command alive.
  setTimeout(() => process.exit(), 200).unref();
}
