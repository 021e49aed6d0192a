// Registers the local provider (development, demo and tests: SSH sandboxes on loopback).
import { errorsOf, registerProvider } from '../provider.js';
import { machineBootDelayMs, parseLocalConfig } from './config.js';
import { LocalProvider } from './provider.js';

export { LocalProvider } from './provider.js';
export { parseLocalConfig, type LocalProviderConfig } from './config.js';

registerProvider('local', (config, ctx) => new LocalProvider(parseLocalConfig(config), ctx), {
  config: (raw) => errorsOf(() => parseLocalConfig(raw)),
  machine: (className, machine) =>
    errorsOf(() => machineBootDelayMs((machine ?? {}) as Record<string, unknown>, 0)).map((e) => (e.startsWith('machine.') ? `classes.${className}.${e}` : `classes.${className}.machine: ${e}`)),
});
