// How a long-running command (start, demo) ends: a signal drains the shard, or (start --handover)
// hands it to the standby at once.
import type { Logger } from 'pino';
import type { Shard } from '../manager/shard.js';

/**
 * What the first SIGTERM/SIGINT does. `drain`: stop intake, let running jobs finish, delete the
 * warm VMs, exit (a second signal exits at once). `handover`: stop intake and exit now, leaving
 * running jobs and warm VMs to the manager that takes the shard next (the standby, within ~2 s of
 * the lease going with this process's sessions): what a rolling restart wants.
 */
export type ShutdownMode = 'drain' | 'handover';

export function untilSignal(shard: Shard, log: Logger, before?: () => Promise<void>, mode: ShutdownMode = 'drain'): Promise<number> {
  return new Promise((resolve) => {
    let draining = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (draining) {
        log.warn({ signal: sig }, 'second signal: exiting without finishing the drain');
        resolve(130);
        return;
      }
      draining = true;
      if (mode === 'handover') log.info({ signal: sig }, 'handing the shard over: intake stops; running jobs and warm VMs stay for the next active manager');
      else log.info({ signal: sig }, 'draining');
      void (async () => {
        await before?.();
        // close() stops intake and lets go of running jobs without ending them (the next active
        // re-attaches them); its database sessions, and with them the shard lease, end with it.
        await (mode === 'handover' ? shard.close() : shard.drain());
        resolve(0);
      })().catch((err) => {
        log.error({ err }, mode === 'handover' ? 'handover failed' : 'drain failed');
        resolve(1);
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
