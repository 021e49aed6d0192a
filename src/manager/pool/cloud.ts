// Provider calls as the pool makes them: by the class's provider name, timed per operation.
import type { Provider } from '../../providers/provider.js';
import type { Metrics } from '../metrics.js';

export function providerOf(providers: Map<string, Provider>, name: string): Provider {
  const p = providers.get(name);
  if (!p) throw new Error(`provider ${name} is not configured`);
  return p;
}

/** Time a pool-level provider operation; the provider reports its API calls one by one. */
export async function timedCall<T>(metrics: Metrics, provider: Provider, operation: string, fn: () => Promise<T>): Promise<T> {
  const start = performance.now();
  let outcome = 'ok';
  try {
    return await fn();
  } catch (err) {
    outcome = (err as { kind?: string }).kind ?? 'error';
    throw err;
  } finally {
    metrics.providerOperationSeconds.observe({ provider: provider.name, operation, outcome }, (performance.now() - start) / 1000);
  }
}
