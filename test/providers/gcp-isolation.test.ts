// The isolation audit through the real FirewallsClient against the GCE emulator: the provider
// reads the project's firewall rules once, keeps the runner network's, and audits them for each
// class's network tags; the shard refuses to start on findings with `isolation.audit: enforce`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGceEmulator, type GceEmulator } from '../../emulators/gce/server.js';
import { parseCidr } from '../../src/isolation/cidr.js';
import { createLogger } from '../../src/isolation/redact.js';
import { parseGcpConfig } from '../../src/providers/gcp/config.js';
import { GcpProvider } from '../../src/providers/gcp/provider.js';
import { startGceShard } from '../helpers/gce-shard.js';

const IMAGE = 'projects/debian-cloud/global/images/family/debian-12';
const MANAGER = [parseCidr('10.0.0.5/32')];
const allowManager = { name: 'allow-manager-ssh', network: 'global/networks/runners', sourceRanges: ['10.0.0.5/32'], targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'tcp', ports: ['22'] }] };

describe('isolation audit on gcp', () => {
  let emu: GceEmulator;
  let dir: string;
  let provider: GcpProvider;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rf-gce-iso-'));
    emu = await startGceEmulator({ dataDir: dir });
    provider = new GcpProvider(parseGcpConfig({ project: 'iso-proj', endpoint: emu.url, network: 'runners', callTimeout: '3s', retryBase: '20ms' }), {
      shard: 'iso', dataDir: dir, log: createLogger({ level: 'silent' }),
      classes: {
        'linux-small': { machineType: 'e2-standard-2', image: IMAGE, zones: ['us-central1-a'], networkTags: ['runner-vm'] },
        'linux-large': { machineType: 'e2-standard-8', image: IMAGE, zones: ['us-central1-a'], networkTags: ['runner-vm'] },
        'untagged': { machineType: 'e2-standard-2', image: IMAGE, zones: ['us-central1-a'] },
      },
    });
  });
  afterAll(async () => {
    await provider?.close();
    await emu?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds nothing when only the manager reaches the tagged VMs; rules of other networks do not count', async () => {
    emu.setFirewalls('iso-proj', [allowManager, { name: 'default-allow-internal', network: 'global/networks/default', sourceRanges: ['10.128.0.0/9'], allowed: [{ IPProtocol: 'all' }] }]);
    emu.resetCalls();
    const found = await provider.auditIsolation(MANAGER);
    // The untagged class is out of the manager's rule's reach: its VMs would never be ready.
    expect(found).toEqual([{ kind: 'manager-cannot-reach', message: 'no firewall rule lets the manager (10.0.0.5/32) reach the job VMs on tcp:22: they would never become ready', classes: ['untagged'] }]);
    expect(emu.calls.firewallsList).toBe(1);
  });

  it('names a rule between runner VMs once, with every class it concerns', async () => {
    emu.setFirewalls('iso-proj', [
      allowManager,
      { name: 'allow-all-internal', network: 'projects/iso-proj/global/networks/runners', priority: 65534, sourceRanges: ['10.20.0.0/21'], allowed: [{ IPProtocol: 'tcp', ports: ['0-65535'] }] },
      { name: 'mesh', network: 'global/networks/runners', sourceTags: ['runner-vm'], targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'icmp' }] },
    ]);
    const found = await provider.auditIsolation(MANAGER);
    expect(found.map((f) => [f.kind, f.rule, f.classes])).toEqual([
      ['vm-to-vm', 'mesh', ['linux-small', 'linux-large']], // by priority: 1000 first
      ['others-can-reach', 'allow-all-internal', ['linux-small', 'linux-large', 'untagged']],
      ['manager-cannot-reach', undefined, ['untagged']],
    ]);
    expect(found[1]!.message).toBe('firewall rule "allow-all-internal" (priority 65534) lets 10.20.0.0/21 reach the job VMs on tcp:all; only the manager (10.0.0.5/32) should');
  });

  it('a shard with audit: enforce refuses to start on an opening, and starts when only the manager gets in', async () => {
    const open = [{ ...allowManager, network: 'global/networks/default' }, { name: 'default-allow-ssh', sourceRanges: ['0.0.0.0/0'], allowed: [{ IPProtocol: 'tcp', ports: ['22'] }] }];
    const o = { className: 'linux-gce', token: 'iso-token', pool: '{ idle: 0, max: 2 }', isolation: '{ managerRanges: ["10.0.0.5/32"], audit: enforce }' };
    await expect(startGceShard({ ...o, shard: 'iso-refused', firewalls: open })).rejects.toThrow(
      /isolation audit \(isolation.audit: enforce\) found 1 opening into job VMs:\n {2}firewall rule "default-allow-ssh" \(priority 1000\) lets 0\.0\.0\.0\/0 reach the job VMs on tcp:22/,
    );
    // An audit that cannot run (no compute.firewalls.list permission) proves nothing: no start either.
    await expect(
      startGceShard({ ...o, shard: 'iso-denied', firewalls: [open[0]!], beforeStart: (gce) => (gce.faults.failNextWith = { status: 403, reason: 'forbidden', message: "Required 'compute.firewalls.list' permission for 'projects/iso-denied-project'" }) }),
    ).rejects.toThrow(/isolation audit \(isolation.audit: enforce\) could not run:\n {2}gcp: .*compute\.firewalls\.list/);
    const env = await startGceShard({ ...o, shard: 'iso-ok', firewalls: [open[0]!] });
    try {
      const text = await env.shard.metrics.registry.metrics();
      expect(text).toMatch(/runner_fleet_isolation_findings\{provider="gcp",kind="others-can-reach"[^}]*\} 0/);
      expect(text).toMatch(/runner_fleet_isolation_audit_timestamp_seconds\{provider="gcp"[^}]*\} \d/);
    } finally {
      await env.close();
    }
  });
});
