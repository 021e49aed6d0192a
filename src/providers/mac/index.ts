// Registers the mac provider: macOS VMs on EC2 Mac dedicated hosts.
import { errorsOf, registerProvider } from '../provider.js';
import { parseMacConfig, validateMacMachine } from './config.js';
import { MacProvider } from './provider.js';

export { MacProvider } from './provider.js';
export { parseMacConfig, parseMacMachine, validateMacMachine, type MacMachine, type MacProviderConfig } from './config.js';

registerProvider('mac', (config, ctx) => new MacProvider(parseMacConfig(config), ctx), {
  config: (raw) => errorsOf(() => parseMacConfig(raw)),
  machine: validateMacMachine,
});
