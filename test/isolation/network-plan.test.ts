import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatCidr, parseCidr } from '../../src/isolation/cidr.js';
import { allocate, describeConflict, findConflicts, parseRegistry, registryLine } from '../../src/isolation/network-plan.js';

const registry = (rows: string[]) => ['environment,network,cidr', ...rows].join('\n');

describe('shard network plan', () => {
  it('reads the project registry: no overlaps in it', () => {
    const rows = parseRegistry(readFileSync('deploy/network/cidr-registry.csv', 'utf8'));
    expect(rows.length).toBeGreaterThan(60);
    expect(findConflicts(rows)).toEqual([]);
  });

  it('names every bad line of a registry', () => {
    expect(() => parseRegistry('env,net,cidr\n')).toThrow('line 1: expected the header "environment,network,cidr", got "env,net,cidr"');
    let msg = '';
    try {
      parseRegistry(registry(['GCP/a,net/a,10.0.0.0/21', 'GCP/b,net/b', 'GCP/c,net/c,10.0.9.0/21', ',net/d,10.0.16.0/21', '# a comment', 'GCP/e,net/e,8.8.8.0/24']));
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg.split('\n')).toEqual([
      'line 3: expected 3 fields (environment,network,cidr), got 2',
      'line 4: cidr: 10.0.9.0/21: host bits are set; the network is 10.0.8.0/21',
      'line 5: environment: expected a name, got ""',
      'line 7: cidr: 8.8.8.0/24 is not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)',
    ]);
  });

  it('finds every overlapping pair: nested, identical and partial, and none between neighbours', () => {
    const rows = parseRegistry(
      registry([
        'GCP/a,net/a,10.12.0.0/16', // line 2: holds lines 3 and 5
        'GCP/b,net/b,10.12.8.0/21', // 3
        'GCP/c,net/c,10.13.0.0/21', // 4: neighbour of nothing
        'GCP/d,net/d,10.12.8.0/21', // 5: the same block as line 3
        'AWS/e,vpc/e,10.13.8.0/21', // 6: adjacent to line 4
      ]),
    );
    expect(findConflicts(rows).map(describeConflict)).toEqual([
      'line 2 (GCP/a net/a 10.12.0.0/16) overlaps line 3 (GCP/b net/b 10.12.8.0/21)',
      'line 2 (GCP/a net/a 10.12.0.0/16) overlaps line 5 (GCP/d net/d 10.12.8.0/21)',
      'line 3 (GCP/b net/b 10.12.8.0/21) overlaps line 5 (GCP/d net/d 10.12.8.0/21)',
    ]);
  });

  it('allocates the lowest free block once: asking again gives the same network its own block', () => {
    const rows = parseRegistry(registry(['GCP/a,net/a,10.12.0.0/24', 'GCP/b,net/b,10.12.8.0/21']));
    const want = { environment: 'GCP/new', network: 'net/new', within: parseCidr('10.12.0.0/16'), prefix: 21 };
    const first = allocate(rows, want);
    expect(first.kind).toBe('new');
    if (first.kind !== 'new') return;
    expect(registryLine(first.row)).toBe('GCP/new,net/new,10.12.16.0/21');
    const after = parseRegistry(registry(['GCP/a,net/a,10.12.0.0/24', 'GCP/b,net/b,10.12.8.0/21', registryLine(first.row)]));
    const again = allocate(after, want);
    expect(again.kind === 'existing' && formatCidr(again.row.cidr)).toBe('10.12.16.0/21');
    expect(findConflicts(after)).toEqual([]);
    expect(allocate(after, { ...want, network: 'net/other', within: parseCidr('10.12.0.0/19') })).toEqual({ kind: 'new', row: { environment: 'GCP/new', network: 'net/other', cidr: parseCidr('10.12.24.0/21') } });
    expect(allocate(after, { ...want, network: 'net/other', within: parseCidr('10.12.0.0/20') })).toEqual({ kind: 'full' });
  });
});
