// Registers the EC2 provider (Linux VMs; macOS hosts are the mac provider's). The provider module
// (and @aws-sdk/client-ec2) loads only when a class uses aws.
import { errorsOf, registerProvider } from '../provider.js';
import { parseAwsConfig, validateAwsMachine } from './config.js';

export { parseAwsConfig, parseAwsMachine, validateAwsMachine, type AwsMachine, type AwsProviderConfig } from './config.js';

registerProvider('aws', async (config, ctx) => {
  const parsed = parseAwsConfig(config);
  const { AwsProvider } = await import('./provider.js');
  return new AwsProvider(parsed, ctx);
}, {
  config: (raw) => errorsOf(() => parseAwsConfig(raw)),
  machine: validateAwsMachine,
});
