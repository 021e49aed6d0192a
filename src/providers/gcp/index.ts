// Registers the Compute Engine provider. The provider module (and @google-cloud/compute, ~110 MiB
// of heap) loads only when a class uses gcp: config checks need nothing but ./config.js.
import { errorsOf, registerProvider } from '../provider.js';
import { parseGcpConfig, validateGcpMachine } from './config.js';

export { parseGcpConfig, parseGcpMachine, validateGcpMachine, type GcpMachine, type GcpProviderConfig } from './config.js';

registerProvider('gcp', async (config, ctx) => {
  const parsed = parseGcpConfig(config);
  const { GcpProvider } = await import('./provider.js');
  return new GcpProvider(parsed, ctx);
}, {
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
