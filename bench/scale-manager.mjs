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
const { tuneHeap } = await load('src/cli/heap.js');
// RF_ALLOC_PROFILE=<file>: SIGWINCH starts V8's sampling heap profiler counting every allocation
// (also those the GCs collected: where the garbage comes from), the next SIGWINCH writes it.
if (process.env.RF_ALLOC_PROFILE) {
  const { Session } = await import('node:inspector/promises');
  const { writeFileSync } = await import('node:fs');
  const session = new Session();
  session.connect();
  let on = false;
  process.on('SIGWINCH', async () => {
    if (!on) {
      on = true;
      await session.post('HeapProfiler.startSampling', { samplingInterval: 16384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
    } else {
      const { profile } = await session.post('HeapProfiler.stopSampling');
      writeFileSync(process.env.RF_ALLOC_PROFILE, JSON.stringify(profile));
      on = false;
    }
  });
}
const config = loadConfigFile(configPath);
const log = createLogger({ level: config.log.level, shard: config.shard });
tuneHeap(); // as `runner-fleet start` does
const shard = await startShard({ config, log, waitActive: false, connectOverride: gceConnectOverride(gceDataDir) });
process.exitCode = await untilSignal(shard, log);
setTimeout(() => process.exit(), 200).unref();
