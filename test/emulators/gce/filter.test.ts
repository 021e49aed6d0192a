import { describe, expect, it } from 'vitest';
import { FilterError, matchFilter, parseFilter } from '../../../emulators/gce/filter.js';

const vm = { name: 'ci-a-1', status: 'RUNNING', labels: { 'runner-fleet-shard': 's1', team: 'ci' } };
const m = (f: string) => matchFilter(parseFilter(f), vm);

describe('GCE filter', () => {
  it('matches label equality in quoted and bare forms', () => {
    expect(m('labels.team = "ci"')).toBe(true);
    expect(m('labels.team=ci')).toBe(true);
    expect(m('labels.team = "cd"')).toBe(false);
    expect(m('labels.missing = "x"')).toBe(false);
  });
  it('ANDs parenthesised terms, by juxtaposition or AND', () => {
    expect(m('(labels.runner-fleet-shard = "s1") (labels.team = "ci")')).toBe(true);
    expect(m('(labels.runner-fleet-shard = "s1") AND (labels.team = "x")')).toBe(false);
    expect(m('(labels.team = "x") OR (status = RUNNING)')).toBe(true);
  });
  it('supports !=, has (:*), globs, regex and NOT', () => {
    expect(m('name != "ci-a-1"')).toBe(false);
    expect(m('labels.team:*')).toBe(true);
    expect(m('labels.other:*')).toBe(false);
    expect(m('name:ci-*')).toBe(true);
    expect(m('name ~ "ci-.-\\d"')).toBe(true);
    expect(m('NOT labels.team = ci')).toBe(false);
    expect(m('-labels.team = ci')).toBe(false);
  });
  it('an empty filter matches everything; malformed ones throw', () => {
    expect(parseFilter('  ')).toBeUndefined();
    expect(m('')).toBe(true);
    expect(() => parseFilter('(labels.a = "b"')).toThrow(FilterError);
    expect(() => parseFilter('labels.a "b"')).toThrow(FilterError);
    expect(() => parseFilter('labels.a = "b')).toThrow(FilterError);
  });
});
