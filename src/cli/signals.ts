// How a long-running command (start, demo) ends: a signal drains the shard.
import type { Logger } from 'pino';
import type { Shard } from '../manager/shard.js';

/** SIGTERM/SIGINT drain the shard; a second signal exits at once (VMs stay for the next start). */
export function untilSignal(shard: Shard, log: Logger, before?: () => Promise<void>): Promise<number> {
  return new Promise((resolve) => {
    let draining = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (draining) {
        log.warn({ signal: sig }, 'second signal: exiting without finishing the drain');
        resolve(130);
        return;
      }
      draining = true;
      log.info({ signal: sig }, 'draining');
      void (async () => {
        await before?.();
        await shard.drain();
        resolve(0);
      })().catch((err) => {
        log.error({ err }, 'drain failed');
        resolve(1);
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
