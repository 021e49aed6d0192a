// Masking throughput: MiB/s of job output through the trace masker with 2, 100 and 1,000 masked
// values of 32 characters, over a synthetic log (ASCII lines, some secrets in it) fed in 4 KiB
// chunks, as the executor feeds SSH output. One core, the manager's event loop.
//   node --import tsx bench/mask-throughput.ts [--mib 64] [--chunk 4096] [--counts 2,100,1000] [--runs 3] [--module src/gitlab/mask.ts]
// Each figure is the best of --runs passes, over the process's CPU time (user + system), so time
// spent waiting for a core on a shared machine does not count; wall time is printed too.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { rng } from '../src/sim/random.js';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '64' },
    chunk: { type: 'string', default: '4096' },
    counts: { type: 'string', default: '2,100,1000' },
    module: { type: 'string', default: 'src/gitlab/mask.ts' },
    runs: { type: 'string', default: '3' },
  },
});
const BYTES = Number(values.mib) * 1024 * 1024;
const CHUNK = Number(values.chunk);
const COUNTS = values.counts.split(',').map(Number);

interface StreamMasker {
  push(chunk: Buffer): Buffer;
  end(): Buffer;
}
const mod = (await import(pathToFileURL(resolve(values.module)).href)) as { Masker: new (secrets: string[]) => StreamMasker };

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function secrets(n: number, random: () => number): string[] {
  return Array.from({ length: n }, () => Array.from({ length: 32 }, () => ALNUM[Math.floor(random() * ALNUM.length)]).join(''));
}

/** A log of `bytes` bytes: lines of words (letters and digits, so secrets' prefixes occur), a secret every ~64 KiB. */
function trace(bytes: number, hidden: string[], random: () => number): Buffer {
  const out = Buffer.alloc(bytes);
  let i = 0;
  let nextSecret = 65_536;
  while (i < bytes) {
    let line = `${(i % 9973).toString().padStart(5, '0')} `;
    const words = 3 + Math.floor(random() * 12);
    for (let w = 0; w < words; w++) {
      const len = 1 + Math.floor(random() * 10);
      for (let k = 0; k < len; k++) line += ALNUM[Math.floor(random() * ALNUM.length)];
      line += ' ';
    }
    if (i >= nextSecret) {
      line += hidden[Math.floor(random() * hidden.length)];
      nextSecret += 65_536;
    }
    line += '\n';
    i += out.write(line, i);
  }
  return out;
}

console.log(`masker ${values.module}, ${values.mib} MiB in ${CHUNK}-byte chunks, secrets of 32 characters`);
for (const n of COUNTS) {
  const random = rng(42 + n);
  const s = secrets(n, random);
  const data = trace(BYTES, s, random);
  let seconds = Infinity;
  let wall = Infinity;
  let outBytes = 0;
  for (let run = 0; run < Number(values.runs); run++) {
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    const m = new mod.Masker(s);
    outBytes = 0;
    for (let off = 0; off < data.length; off += CHUNK) outBytes += m.push(data.subarray(off, off + CHUNK)).length;
    outBytes += m.end().length;
    const cpu = process.cpuUsage(c0);
    seconds = Math.min(seconds, (cpu.user + cpu.system) / 1e6);
    wall = Math.min(wall, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  // Each mask turns 32 bytes into 8.
  const masked = Math.round((BYTES - outBytes) / (32 - 8));
  const mib = BYTES / 1024 / 1024;
  console.log(`${String(n).padStart(5)} secrets: ${(mib / seconds).toFixed(2).padStart(8)} MiB/s of CPU time (${seconds.toFixed(2)} s; wall ${(mib / wall).toFixed(2)} MiB/s), ~${masked} masked`);
}
