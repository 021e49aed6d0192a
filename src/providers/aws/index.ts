// Registers the EC2 provider (Linux VMs; macOS hosts are the mac provider's).
import { errorsOf, registerProvider } from '../provider.js';
import { parseAwsConfig, validateAwsMachine } from './config.js';
import { AwsProvider } from './provider.js';

export { AwsProvider, ec2ClientConfig, type AwsStats } from './provider.js';
export { parseAwsConfig, parseAwsMachine, validateAwsMachine, type AwsMachine, type AwsProviderConfig } from './config.js';

registerProvider('aws', (config, ctx) => new AwsProvider(parseAwsConfig(config), ctx), {
  config: (raw) => errorsOf(() => parseAwsConfig(raw)),
  machine: validateAwsMachine,
});
