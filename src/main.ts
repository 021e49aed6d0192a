// Process entry point (bin/runner-fleet.js runs the compiled form).
import { runCli } from './cli/index.js';

await runCli();
