// The traces the predictive policy is judged on (bench/start-latency.ts): each a week of history
// the model learns from and a day it has not seen, of a different shape. Seeded: the same seed
// gives the same corpus. Classes as GitLab.com-like hosted runners: 80% Linux small, 12% Windows,
// 8% GPU, and a low-volume Linux arm64 class (a few jobs an hour).
import type { TraceJob } from '../src/sim/trace.js';
import { generateTrace, type TraceClass, type TraceShape } from './trace-gen.js';

export const CORPUS_CLASSES: TraceClass[] = [
  { name: 'linux-small', share: 0.8, fanOut: 10, durationS: [180, 900] },
  { name: 'windows', share: 0.12, fanOut: 3, durationS: [600, 2400] },
  { name: 'gpu', share: 0.077, fanOut: 2, durationS: [900, 3600] },
  { name: 'linux-arm-low', share: 0.003, fanOut: 1.5, durationS: [240, 900] },
];

/** Boot times per class (median:p95 s), as the issue measured them. */
export const CORPUS_BOOT: Record<string, { medianS: number; p95S: number }> = {
  'linux-small': { medianS: 35, p95S: 60 },
  windows: { medianS: 180, p95S: 300 },
  gpu: { medianS: 70, p95S: 130 },
  'linux-arm-low': { medianS: 35, p95S: 60 },
};

export interface Scenario {
  name: string;
  /** Last week (seconds from its Monday 00:00): what the model learns. */
  history: TraceJob[];
  /** The day judged (seconds from its 00:00; simulated as the Monday after the history). */
  day: TraceJob[];
  bootScale?: Record<string, (tS: number) => number>;
}

const DAY = 86_400;
const WEEK = 7 * DAY;

/** Eight days of one shape: the first seven are history, the eighth the day judged. */
function split(jobs: TraceJob[]): { history: TraceJob[]; day: TraceJob[] } {
  return {
    history: jobs.filter((j) => j.arrivalS < WEEK),
    day: jobs.filter((j) => j.arrivalS >= WEEK && j.arrivalS < WEEK + DAY).map((j) => ({ ...j, arrivalS: Math.round((j.arrivalS - WEEK) * 1000) / 1000 })),
  };
}

/** About `perDay` jobs on a working day. */
function eightDays(perDay: number, seed: number, shape: TraceShape = {}): { history: TraceJob[]; day: TraceJob[] } {
  // Eight days hold about 6.5 working days' worth (a weekend day is a quarter of one).
  return split(generateTrace({ jobs: Math.round(perDay * 6.5), days: 8, seed, classes: CORPUS_CLASSES, shape }));
}

/** A monorepo pushing `n` jobs within `withinS` seconds at `atS`. */
function burst(atS: number, n: number, withinS: number, seed: number): TraceJob[] {
  let x = seed;
  const r = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  return Array.from({ length: n }, () => ({ arrivalS: Math.round((atS + r() * withinS) * 1000) / 1000, className: 'linux-small', durationS: Math.round(300 + r() * 600) }));
}

export function corpus(o: { perDay?: number; seed?: number } = {}): Scenario[] {
  const perDay = o.perDay ?? 60_000;
  const seed = o.seed ?? 11;
  const weekday = eightDays(perDay, seed);
  // A Saturday judged after a week that started on a Saturday.
  const weekend = eightDays(perDay, seed + 1, { startDay: 5 });
  const night = eightDays(perDay, seed + 2, { shiftH: 12 });
  const growth = eightDays(perDay / 1.5, seed + 3, { weeklyGrowth: 2 });
  const mono = eightDays(perDay, seed + 4);
  mono.day = [...mono.day, ...burst(10.5 * 3600, 500, 5, seed), ...burst(15 * 3600, 500, 5, seed + 1)].sort((a, b) => a.arrivalS - b.arrivalS);
  const slow = eightDays(perDay, seed + 5);
  // A zone slows down for the working day: boots take 1.8x from 09:00 to 17:00.
  const slower = (t: number) => (t >= 9 * 3600 && t < 17 * 3600 ? 1.8 : 1);
  return [
    { name: 'weekday', ...weekday },
    { name: 'weekend (Saturday)', ...weekend },
    { name: 'night-heavy region', ...night },
    { name: 'traffic doubling over a week', ...growth },
    { name: 'monorepo bursts (2 x 500 jobs in 5 s)', ...mono },
    { name: 'boots drift (a zone 1.8x slower 09-17 h)', ...slow, bootScale: Object.fromEntries(CORPUS_CLASSES.map((c) => [c.name, slower])) },
  ];
}
