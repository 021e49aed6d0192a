// Registers the Compute Engine provider.
import { registerProvider } from '../provider.js';
import { parseGcpConfig } from './config.js';
import { GcpProvider } from './provider.js';

export { GcpProvider, clientOptions, type GcpStats } from './provider.js';
export { parseGcpConfig, parseGcpMachine, validateGcpMachine, type GcpMachine, type GcpProviderConfig } from './config.js';
export { retrieveWindowsPassword } from './windows.js';

registerProvider('gcp', (config, ctx) => new GcpProvider(parseGcpConfig(config), ctx));
