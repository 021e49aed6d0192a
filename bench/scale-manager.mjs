// The manager under test of bench/scale.ts, in its own process from compiled JS (as production
// runs it, without the tsx loader's memory): `runner-fleet start` with the GCE emulator's sandbox
// ports as its connect override. Usage: node scale-manager.mjs <.bench-dist dir> <config.yaml> <gce data dir>
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [dist, configPath, gceDataDir] = process.argv.slice(2);
if (!dist || !configPath || !gceDataDir) {
  process.stderr.write('usage: scale-manager <.bench-dist dir> <config.yaml> <gce data dir>\n');
  process.exit(2);
}
const load = (m) => import(pathToFileURL(join(dist, m)).href);
const { untilSignal } = await load('src/cli/signals.js');
const { loadConfigFile } = await load('src/config/load.js');
const { gceConnectOverride } = await load('emulators/connect-override.js');
const { createLogger } = await load('src/isolation/redact.js');
const { startShard } = await load('src/manager/shard.js');
const config = loadConfigFile(configPath);
const log = createLogger({ level: config.log.level, shard: config.shard });
const shard = await startShard({ config, log, waitActive: false, connectOverride: gceConnectOverride(gceDataDir) });
process.exitCode = await untilSignal(shard, log);
setTimeout(() => process.exit(), 200).unref();
