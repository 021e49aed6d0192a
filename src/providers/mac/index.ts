// Registers the mac provider: macOS VMs on EC2 Mac dedicated hosts. The provider module (and
// @aws-sdk/client-ec2) loads only when a class uses mac.
import { errorsOf, registerProvider } from '../provider.js';
import { parseMacConfig, validateMacMachine } from './config.js';

export { parseMacConfig, parseMacMachine, validateMacMachine, type MacMachine, type MacProviderConfig } from './config.js';

registerProvider('mac', async (config, ctx) => {
  const parsed = parseMacConfig(config);
  const { MacProvider } = await import('./provider.js');
  return new MacProvider(parsed, ctx);
}, {
  config: (raw) => errorsOf(() => parseMacConfig(raw)),
  machine: validateMacMachine,
});
