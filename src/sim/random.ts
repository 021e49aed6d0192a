// Seeded randomness for the simulator: the same seed gives the same run.

/** mulberry32: small, fast, good enough for simulation. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A log-normal sampler through its median and 95th percentile. */
export function logNormal(random: () => number, medianS: number, p95S: number): () => number {
  const mu = Math.log(medianS);
  const sigma = Math.max(0, Math.log(Math.max(p95S, medianS) / medianS) / 1.6448536);
  return () => {
    const u = Math.max(random(), 1e-12);
    const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
    return Math.exp(mu + sigma * z);
  };
}
