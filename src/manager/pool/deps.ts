// What the pool is given: the shard's config, its store and providers, and the probe that opens
// a VM's first SSH session. Shared by the pool's parts (src/manager/pool.ts composes them).
import type { Logger } from 'pino';
import type { ShardConfig } from '../../config/types.js';
import type { SshSession } from '../../connect/ssh.js';
import type { ConnectInfo, Provider } from '../../providers/provider.js';
import type { DemandModel } from '../predictive.js';
import type { Clock } from '../clock.js';
import type { Metrics } from '../metrics.js';
import type { Store } from '../store.js';

export type Probe = (info: ConnectInfo, opts: { deadlineMs: number; signal: AbortSignal }) => Promise<SshSession>;

export interface PoolDeps {
  config: ShardConfig;
  store: Store;
  providers: Map<string, Provider>;
  metrics: Metrics;
  log: Logger;
  clock: Clock;
  probe: Probe;
  tickMs?: number;
  /** Learned demand per class (predictive policy). */
  demand?: Map<string, DemandModel>;
  /** How often the view is re-read from the table (default RESYNC_MS). */
  resyncMs?: number;
  /** Concurrent database writes of background tasks (default POOL_DB_WRITES). */
  dbWrites?: number;
}
