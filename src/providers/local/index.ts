// Registers the local provider (development, demo and tests: SSH sandboxes on loopback).
import { registerProvider } from '../provider.js';
import { parseLocalConfig } from './config.js';
import { LocalProvider } from './provider.js';

export { LocalProvider } from './provider.js';
export { parseLocalConfig, type LocalProviderConfig } from './config.js';

registerProvider('local', (config, ctx) => new LocalProvider(parseLocalConfig(config), ctx));
