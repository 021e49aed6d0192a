// Registers the Compute Engine provider.
import { errorsOf, registerProvider } from '../provider.js';
import { parseGcpConfig, validateGcpMachine } from './config.js';
import { GcpProvider } from './provider.js';

export { GcpProvider, clientOptions, type GcpStats } from './provider.js';
export { parseGcpConfig, parseGcpMachine, validateGcpMachine, type GcpMachine, type GcpProviderConfig } from './config.js';
export { retrieveWindowsPassword } from './windows.js';

registerProvider('gcp', (config, ctx) => new GcpProvider(parseGcpConfig(config), ctx), {
  config: (raw) => errorsOf(() => parseGcpConfig(raw)),
  suspend: true,
  machine: (className, machine) => {
    const errors = validateGcpMachine(className, machine);
    // The provider can fetch a Windows password (windows-keys), but the manager connects with
    // keys only so far: a password-only class would never become reachable.
    if (errors.length === 0 && (machine as Record<string, unknown>)['windowsAccess'] === 'password') {
      errors.push(`classes.${className}.machine.windowsAccess: expected "ssh" (the manager reaches Windows VMs over OpenSSH with the VM's own key; password access over WinRM is not supported yet), got "password"`);
    }
    return errors;
  },
});
