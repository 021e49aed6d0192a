// The short chaos run (bench/chaos-harness.ts; `npm run bench:chaos` is the long one): two
// manager processes on PostgreSQL, the active one SIGKILLed while jobs run, its sessions cut
// once, 10% of cloud calls failing, a zone stocked out and one missing from lists. Every job
// ends in GitLab once, with one billing event; nothing runs twice, nothing leaks.
import { describe, expect, it } from 'vitest';
import { runChaos } from '../../bench/chaos-harness.js';
import { freshDatabase } from '../helpers/database.js';

describe.runIf(process.env['DATABASE_URL'])('chaos (short run)', () => {
  it('keeps every promise while managers die', { timeout: 600_000 }, async () => {
    const db = await freshDatabase('postgres');
    try {
      const r = await runChaos({
        databaseUrl: db.url,
        jobs: 16,
        arrivalS: 40,
        linesPerJob: [4, 10],
        lineS: 1,
        kills: 3,
        cutConnections: true,
        cloudErrorRate: 0.1,
        stockoutZone: 'us-central1-b',
        unreachableZone: 'us-central1-c',
        unreachableForS: 20,
        seed: 7,
      });
      process.stderr.write(`chaos (short run): ${JSON.stringify(r)}\n`);
      expect(r.problems).toEqual([]);
      // A kill while GitLab's answer is on the wire loses that job (the Runner API cannot hand it
      // out again): at most one per kill; every job any manager recorded ends.
      expect(r.lostInFlight).toBeLessThanOrEqual(r.kills);
      expect(r.finalInGitLab).toBe(r.jobs - r.lostInFlight);
      expect(r.runTwice).toBe(0);
      expect(r.vmsWithTwoJobs).toBe(0);
      expect(r.billing).toEqual({ exactlyOne: r.jobs - r.lostInFlight, missing: r.lostInFlight, doubled: 0, billableSystemFailures: 0 });
      expect(r.vmsLeft).toBe(0);
      expect(r.healthyVmsDeleted).toBe(0);
      expect(r.kills).toBe(3);
      // The bench holds failover to 15 s; here the rest of the suite loads the same 2 cores.
      expect(Math.max(...r.failoverS)).toBeLessThan(30);
      // Running jobs ride out the kills (re-attached by the next active manager). A short run on a
      // machine loaded by the rest of the suite is held to 80% so it cannot flake; the long run
      // (npm run bench:chaos) reports the exact share and whole traces.
      expect(r.survivedKills).toBeGreaterThanOrEqual(Math.floor(r.runningAtKills * 0.8));
    } finally {
      await db.drop();
    }
  });
});
