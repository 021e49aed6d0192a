// A class's pool settings with the schema's defaults (tests, the simulator, code-built configs).
import type { PoolConfig } from './types.js';

export function poolConfig(p: Pick<PoolConfig, 'idle' | 'max'> & Partial<PoolConfig>): PoolConfig {
  return {
    idleTimeMs: 60_000,
    scaleFactor: 0,
    scaleFactorLimit: 0,
    standby: 0,
    standbyMode: 'stop',
    periods: [],
    policy: 'static',
    targetMs: 10_000,
    bound: 0.05,
    idleBudget: null,
    intake: 'auto',
    ...p,
  };
}
