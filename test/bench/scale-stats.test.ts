// The pure parts of bench/scale.ts: /proc parsing and the CPU profile summary.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { histogramBuckets, parseStatTicks, parseStatus, percentile, quantileBetween, topSelfTime } from '../../bench/scale-stats.js';

describe('scale bench helpers', () => {
  it('reads utime + stime of /proc/<pid>/stat even when the command name holds spaces and parentheses', () => {
    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    const line = '4242 (node (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 1234 567 0 0 20 0 11 0';
    expect(parseStatTicks(line)).toBe(1234 + 567);
    expect(() => parseStatTicks('4242 (node) S 1')).toThrow(/unparsable/);
  });

  it('reads this process\'s own /proc figures', () => {
    const st = parseStatus(readFileSync('/proc/self/status', 'utf8'));
    expect(st.rssKiB).toBeGreaterThan(1024);
    expect(st.hwmKiB).toBeGreaterThanOrEqual(st.rssKiB);
    expect(parseStatTicks(readFileSync('/proc/self/stat', 'utf8'))).toBeGreaterThan(0);
  });

  it('takes the nearest-rank percentile', () => {
    const xs = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(percentile(xs, 0.5)).toBe(50);
    expect(percentile(xs, 0.99)).toBe(99);
    expect(percentile([7], 0.99)).toBe(7);
    expect(percentile([], 0.5)).toBeNaN();
  });

  it('adds self time per function from the samples, not from the call tree', () => {
    const frame = (functionName: string, url: string, lineNumber: number) => ({ functionName, url, lineNumber, columnNumber: 0, scriptId: '1' });
    const profile = {
      nodes: [
        { id: 1, callFrame: frame('(root)', '', -1), hitCount: 0 },
        { id: 2, callFrame: frame('kex', 'file:///x/node_modules/ssh2/lib/protocol/kex.js', 9), hitCount: 0 },
        { id: 3, callFrame: frame('tick', 'file:///x/dist/manager/pool.js', 41), hitCount: 0 },
        // The same function reached by another path: one entry.
        { id: 4, callFrame: frame('kex', 'file:///x/node_modules/ssh2/lib/protocol/kex.js', 9), hitCount: 0 },
      ],
      samples: [2, 3, 4, 2, 3, 2],
      timeDeltas: [1000, 2000, 1000, 1000, 1000, 2000],
    };
    const top = topSelfTime(profile, 5);
    expect(top[0]).toEqual({ fn: 'kex ssh2/lib/protocol/kex.js:10', selfMs: 5, share: 5 / 8 });
    expect(top[1]).toEqual({ fn: 'tick dist/manager/pool.js:42', selfMs: 3, share: 3 / 8 });
    expect(top).toHaveLength(2);
  });
});

describe('histogram quantiles between two scrapes', () => {
  const scrape = (counts: number[]) =>
    ['0.005', '0.1', '1', '+Inf'].map((le, i) => `runner_fleet_event_loop_lag_seconds_bucket{le="${le}",shard="s"} ${counts[i]}`).join('\n');
  it('takes the bucket holding the quantile of what was observed in between', () => {
    const before = histogramBuckets(scrape([90, 100, 100, 100]), 'runner_fleet_event_loop_lag_seconds');
    const after = histogramBuckets(scrape([180, 195, 199, 200]), 'runner_fleet_event_loop_lag_seconds');
    // 100 new observations: 90 under 5 ms, 5 more under 100 ms, 4 more under 1 s, 1 above.
    expect(quantileBetween(before, after, 0.5)).toBe(0.005);
    expect(quantileBetween(before, after, 0.95)).toBe(0.1);
    expect(quantileBetween(before, after, 0.99)).toBe(1);
    expect(quantileBetween(before, after, 1)).toBe(Infinity);
    expect(quantileBetween(after, after, 0.99)).toBeNaN();
  });
});
