import { describe, expect, it } from 'vitest';
import { parseCidr, parseNetwork, subtract, formatCidr } from '../../src/isolation/cidr.js';
import { auditIngress, fromGceFirewall } from '../../src/isolation/firewall-audit.js';

type Gce = Parameters<typeof fromGceFirewall>[0];
const rules = (fs: Gce[]) => fs.map(fromGceFirewall).filter((r) => r !== null);
const MANAGER = [parseCidr('10.0.0.5/32')];
const audit = (fs: Gce[], o: { tags?: string[]; ports?: number[]; managers?: string[] } = {}) =>
  auditIngress({ rules: rules(fs), vmTags: o.tags ?? ['runner-vm'], managerRanges: o.managers ? o.managers.map(parseCidr) : MANAGER, accessPorts: o.ports ?? [22] });

const SSH_FROM_MANAGER: Gce = { name: 'allow-manager-ssh', sourceRanges: ['10.0.0.5/32'], targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'tcp', ports: ['22'] }] };

describe('isolation audit of ingress rules', () => {
  it('subtracts blocks into the fewest aligned blocks', () => {
    expect(subtract(parseCidr('10.0.0.0/30'), [parseCidr('10.0.0.1/32')]).map(formatCidr)).toEqual(['10.0.0.0/32', '10.0.0.2/31']);
    expect(subtract(parseCidr('10.0.0.0/24'), [parseCidr('10.0.0.0/8')])).toEqual([]);
    expect(subtract(parseCidr('10.0.0.0/24'), [parseCidr('10.1.0.0/16')]).map(formatCidr)).toEqual(['10.0.0.0/24']);
    expect(formatCidr(parseNetwork('10.0.0.7/24'))).toBe('10.0.0.0/24');
    expect(formatCidr(parseNetwork('10.0.0.7'))).toBe('10.0.0.7/32');
  });

  it('passes a network where only the manager reaches the job VMs, on SSH', () => {
    expect(audit([SSH_FROM_MANAGER])).toEqual([]);
    // Rules for other VMs, egress and disabled rules do not matter.
    expect(audit([SSH_FROM_MANAGER, { name: 'web', sourceRanges: ['0.0.0.0/0'], targetTags: ['web'], allowed: [{ IPProtocol: 'tcp', ports: ['443'] }] }, { name: 'out', direction: 'EGRESS', destinationRanges: ['0.0.0.0/0'], allowed: [{ IPProtocol: 'all' }] } as Gce, { name: 'off', disabled: true, sourceRanges: ['0.0.0.0/0'], allowed: [{ IPProtocol: 'all' }] }, { name: 'sa', sourceRanges: ['0.0.0.0/0'], targetServiceAccounts: ['x@p.iam.gserviceaccount.com'], allowed: [{ IPProtocol: 'all' }] }])).toEqual([]);
  });

  it("names the default network's openings: internal traffic between VMs and SSH from anywhere", () => {
    const found = audit([
      SSH_FROM_MANAGER,
      { name: 'default-allow-internal', priority: 65534, sourceRanges: ['10.128.0.0/9'], allowed: [{ IPProtocol: 'tcp', ports: ['0-65535'] }, { IPProtocol: 'udp', ports: ['0-65535'] }, { IPProtocol: 'icmp' }] },
      { name: 'default-allow-ssh', priority: 65534, sourceRanges: ['0.0.0.0/0'], allowed: [{ IPProtocol: 'tcp', ports: ['22'] }] },
    ]);
    expect(found).toEqual([
      { kind: 'others-can-reach', rule: 'default-allow-internal', message: 'firewall rule "default-allow-internal" (priority 65534) lets 10.128.0.0/9 reach the job VMs on tcp:all, udp:all, icmp:all; only the manager (10.0.0.5/32) should' },
      { kind: 'others-can-reach', rule: 'default-allow-ssh', message: 'firewall rule "default-allow-ssh" (priority 65534) lets 0.0.0.0/0 reach the job VMs on tcp:22; only the manager (10.0.0.5/32) should' },
    ]);
  });

  it('calls a rule between VMs of the runner tag VM-to-VM traffic, and other tags and service accounts openings', () => {
    const found = audit([SSH_FROM_MANAGER, { name: 'mesh', sourceTags: ['runner-vm', 'bastion'], targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'all' }] }, { name: 'by-sa', sourceServiceAccounts: ['ci@p.iam.gserviceaccount.com'], allowed: [{ IPProtocol: 'tcp', ports: ['8080-8090'] }] }]);
    expect(found.map((f) => [f.kind, f.rule, f.message])).toEqual([
      ['vm-to-vm', 'mesh', 'firewall rule "mesh" (priority 1000) lets VMs tagged runner-vm (the job VMs themselves) reach the job VMs on all traffic'],
      ['others-can-reach', 'mesh', 'firewall rule "mesh" (priority 1000) lets VMs tagged bastion reach the job VMs on all traffic'],
      ['others-can-reach', 'by-sa', 'firewall rule "by-sa" (priority 1000) lets VMs of ci@p.iam.gserviceaccount.com reach the job VMs on tcp:8080-8090'],
    ]);
  });

  it('weighs deny rules by priority: a higher-priority deny closes an allow, a lower-priority one does not', () => {
    const internal: Gce = { name: 'allow-internal', priority: 1000, sourceRanges: ['10.128.0.0/9'], sourceTags: ['runner-vm'], allowed: [{ IPProtocol: 'tcp' }] };
    const denyAll: Gce = { name: 'deny-runner-ingress', priority: 900, sourceRanges: ['0.0.0.0/0'], sourceTags: ['runner-vm'], targetTags: ['runner-vm'], denied: [{ IPProtocol: 'all' }] };
    const allowManagerFirst: Gce = { ...SSH_FROM_MANAGER, priority: 800 };
    expect(audit([allowManagerFirst, internal, denyAll])).toEqual([]);
    // Same priority: deny wins (GCE's rule).
    expect(audit([allowManagerFirst, internal, { ...denyAll, priority: 1000 }])).toEqual([]);
    // A deny below the allow in priority closes nothing.
    expect(audit([allowManagerFirst, internal, { ...denyAll, priority: 2000 }]).map((f) => f.kind)).toEqual(['vm-to-vm', 'others-can-reach']);
    // A deny of only udp does not cover a tcp allow.
    expect(audit([allowManagerFirst, internal, { ...denyAll, denied: [{ IPProtocol: 'udp' }] }]).map((f) => f.kind)).toEqual(['vm-to-vm', 'others-can-reach']);
    // The deny also shuts the manager out when it comes first.
    expect(audit([{ ...SSH_FROM_MANAGER, priority: 1000 }, denyAll])).toEqual([
      { kind: 'manager-cannot-reach', message: 'no firewall rule lets the manager (10.0.0.5/32) reach the job VMs on tcp:22: they would never become ready' },
    ]);
  });

  it('reads a rule with no source as GCE does: from everywhere', () => {
    expect(audit([SSH_FROM_MANAGER, { name: 'no-source', targetTags: ['runner-vm'], allowed: [{ IPProtocol: 'tcp', ports: ['80'] }] }]).map((f) => f.message)).toEqual([
      'firewall rule "no-source" (priority 1000) lets 0.0.0.0/0 reach the job VMs on tcp:80; only the manager (10.0.0.5/32) should',
    ]);
  });

  it('says when the manager cannot reach an access port', () => {
    expect(audit([SSH_FROM_MANAGER], { ports: [22, 5986] }).map((f) => f.message)).toEqual(['no firewall rule lets the manager (10.0.0.5/32) reach the job VMs on tcp:5986: they would never become ready']);
    expect(audit([SSH_FROM_MANAGER], { managers: ['10.0.0.5/32', '10.0.1.0/28'] }).map((f) => f.kind)).toEqual(['manager-cannot-reach']);
    // A rule for the manager's whole subnet is an opening for the rest of that subnet.
    expect(audit([{ ...SSH_FROM_MANAGER, sourceRanges: ['10.0.0.0/24'] }]).map((f) => f.kind)).toEqual(['others-can-reach']);
    expect(audit([{ ...SSH_FROM_MANAGER, sourceRanges: ['10.0.0.0/24'] }], { managers: ['10.0.0.0/24'] })).toEqual([]);
  });
});
