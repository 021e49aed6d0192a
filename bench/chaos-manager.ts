// One manager of the chaos harness: `runner-fleet start` with the GCE emulator's sandbox ports as
// its connect override, a test tool's option the production entry point never sets.
// Usage: node --import tsx bench/chaos-manager.ts <config.yaml> <gce emulator data dir>
import { untilSignal } from '../src/cli/signals.js';
import { loadConfigFile } from '../src/config/load.js';
import { gceConnectOverride } from '../emulators/connect-override.js';
import { createLogger } from '../src/isolation/redact.js';
import { startShard } from '../src/manager/shard.js';

const [configPath, gceDataDir] = process.argv.slice(2);
if (!configPath || !gceDataDir) {
  process.stderr.write('usage: chaos-manager <config.yaml> <gce emulator data dir>\n');
  process.exit(2);
}
const config = loadConfigFile(configPath);
const log = createLogger({ level: config.log.level, shard: config.shard });
const shard = await startShard({ config, log, waitActive: false, connectOverride: gceConnectOverride(gceDataDir) });
process.exitCode = await untilSignal(shard, log);
setTimeout(() => process.exit(), 200).unref();
