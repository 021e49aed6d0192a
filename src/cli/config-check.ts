// `runner-fleet config check`: validate a shard config without starting anything.
import { checkConfigFile } from '../config/load.js';
import { configArg } from './args.js';

export async function configCheck(args: string[]): Promise<number> {
  const path = configArg(args);
  const res = checkConfigFile(path);
  if (res.ok) {
    const classes = Object.keys(res.config.classes);
    process.stdout.write(`${path}: ok (shard ${res.config.shard}, ${classes.length} class${classes.length === 1 ? '' : 'es'}: ${classes.join(', ')})\n`);
    return 0;
  }
  process.stderr.write(`${path}: ${res.errors.length} error${res.errors.length === 1 ? '' : 's'}\n${res.errors.map((e) => `  ${e}`).join('\n')}\n`);
  return 1;
}
