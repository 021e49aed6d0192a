// Streams a job's masked log to GitLab: the first chunk at once (so the job looks alive), then at
// the interval GitLab asks for or when enough is buffered. Holds only what GitLab has not yet
// acknowledged, so memory stays bounded per job: a producer that gets `false` from write() waits
// for drained(). When GitLab asks (416) for bytes no longer held, onRewind asks the producer to
// produce the trace again from its start (the VM keeps the job's output in a file; masking is
// deterministic); bytes GitLab already holds are skipped as they come again. That also serves a
// manager that re-attaches to a job another manager began: it starts at 0 and the first 416
// tells it where GitLab stands.
import { crc32 } from 'node:zlib';
import type { Logger } from 'pino';
import type { GitLabClient } from './client.js';
import type { Masker } from './mask.js';

/** Send early when this much is waiting, without waiting for the interval. */
const FLUSH_BYTES = 64 * 1024;
/** Largest PATCH body; a backlog goes out in several requests. */
const MAX_PATCH_BYTES = 1024 * 1024;
/** Default cap of a job's log; beyond it output is dropped with a notice. */
const MAX_TRACE_BYTES = 32 * 1024 * 1024;
/** Default bound on unacknowledged bytes held in memory before write() asks the producer to wait. */
export const TRACE_BUFFER_BYTES = 256 * 1024;

export interface TraceUploaderOptions {
  client: GitLabClient;
  jobId: number;
  jobToken: string;
  masker: Masker;
  onCancel: () => void;
  /**
   * GitLab holds less than the bytes already dropped: produce the trace again from its start
   * (call restart(), then the same bytes in the same order). Without it such a trace ends there.
   */
  onRewind?: () => void;
  log: Logger;
  clock?: { now(): number };
  /** Interval until GitLab names one (X-GitLab-Trace-Update-Interval); default 3 s. */
  intervalMs?: number;
  /** Floor on the interval GitLab asks for, so a bad header cannot make us hammer it. */
  minIntervalMs?: number;
  /** Cap of the job's log size. */
  maxBytes?: number;
  /** Unacknowledged bytes held before write() returns false. */
  bufferBytes?: number;
}

/** The unacknowledged part of the trace: bytes [start, start + size). */
class Window {
  private chunks: Buffer[] = [];
  start = 0;
  size = 0;

  push(b: Buffer): void {
    if (b.length) this.chunks.push(b);
    this.size += b.length;
  }

  /** Forget everything below `offset`. */
  dropTo(offset: number): void {
    let n = Math.min(this.size, offset - this.start);
    if (n <= 0) return;
    this.start += n;
    this.size -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      if (c.length <= n) {
        this.chunks.shift();
        n -= c.length;
      } else {
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }

  /** Up to `max` bytes from `offset` (which must be held). */
  slice(offset: number, max: number): Buffer {
    let skip = offset - this.start;
    const parts: Buffer[] = [];
    let want = max;
    for (const c of this.chunks) {
      if (want <= 0) break;
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      const part = c.subarray(skip, skip + want);
      skip = 0;
      parts.push(part);
      want -= part.length;
    }
    if (parts.length > 1) {
      // Merge what was sliced so a slow GitLab does not leave thousands of tiny chunks behind.
      const merged = Buffer.concat(parts);
      return merged;
    }
    return parts[0] ?? Buffer.alloc(0);
  }

  clear(at: number): void {
    this.chunks = [];
    this.start = at;
    this.size = 0;
  }
}

export class TraceUploader {
  private readonly held = new Window();
  /** Masked bytes produced so far in this pass (the trace offset of the next byte). */
  private produced = 0;
  /** What GitLab holds (its last answer). */
  private sent = 0;
  private crc = 0;
  private masker: Masker;
  private intervalMs: number;
  private readonly minIntervalMs: number;
  private readonly maxBytes: number;
  private readonly bufferBytes: number;
  private readonly clock: { now(): number };
  private lastSendAt = 0;
  private attempted = false;
  private timer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private sending: Promise<void> | null = null;
  private canceled = false;
  /** GitLab refuses more trace (403/404): the job is over on its side. */
  private gone = false;
  private truncated = false;
  private closed = false;
  /** A rewind was asked and the producer has not restarted yet. */
  private rewinding = false;
  private drainWaiters: (() => void)[] = [];
  /** False once catchUp() skipped bytes this uploader never saw. */
  private crcKnown = true;
  /** Most unacknowledged bytes ever held at once (the memory bound, for tests and metrics). */
  highWater = 0;

  constructor(private readonly o: TraceUploaderOptions) {
    this.minIntervalMs = o.minIntervalMs ?? 250;
    this.intervalMs = Math.max(this.minIntervalMs, o.intervalMs ?? 3000);
    this.maxBytes = o.maxBytes ?? MAX_TRACE_BYTES;
    this.bufferBytes = o.bufferBytes ?? TRACE_BUFFER_BYTES;
    this.clock = o.clock ?? Date;
    this.masker = o.masker;
  }

  /** Past the size cap: further job output is dropped, so a producer may stop reading it. */
  get capped(): boolean {
    return this.truncated;
  }

  /** Bytes of masked trace produced so far, and how many of them GitLab has. */
  get progress(): { size: number; sent: number; held: number } {
    return { size: this.produced, sent: this.sent, held: this.held.size };
  }

  /**
   * Output from the job: masked, held, sent soon. False: the buffer is full, wait for drained().
   * Past the size cap (or once GitLab took the job back) output is dropped unmasked: no work
   * is spent on what will never be sent.
   */
  write(chunk: Buffer): boolean {
    if (!this.truncated && !this.gone && !this.closed) this.add(this.masker.push(chunk));
    return this.held.size < this.bufferBytes || this.gone || this.closed;
  }

  /**
   * A line from the runner itself. Masked too, in the same stream as the job's output (it may
   * quote the VM's errors), so the masked trace is the same however often it is produced again.
   */
  append(text: string): void {
    this.add(this.masker.push(Buffer.from(text)));
  }

  /** Resolves once the held bytes are below half the buffer (or nothing more will be sent). */
  drained(): Promise<void> {
    if (this.held.size < this.bufferBytes / 2 || this.gone || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** The producer starts the trace again from its first byte, with a fresh masker (see onRewind). */
  restart(masker: Masker): void {
    this.masker = masker;
    this.produced = 0;
    this.crc = 0;
    this.crcKnown = true;
    this.truncated = false;
    this.rewinding = false;
    this.held.clear(0);
  }

  private wakeDrained(): void {
    if (!(this.held.size < this.bufferBytes / 2 || this.gone || this.closed)) return;
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
  }

  private add(buf: Buffer): void {
    if (!buf.length || this.closed) return;
    if (this.produced + buf.length > this.maxBytes) {
      if (this.truncated) return;
      this.truncated = true;
      this.masker.end(); // what it held back is dropped with the rest
      buf = Buffer.from('\nWARNING: job log size limit exceeded; further output is dropped\n');
    }
    const at = this.produced;
    this.produced += buf.length;
    this.crc = crc32(buf, this.crc);
    // Bytes GitLab already holds are not kept (a re-attach or a rewind produces them again).
    const keepFrom = Math.max(0, this.sent - at);
    if (keepFrom < buf.length && !this.gone) {
      if (this.held.size === 0) this.held.clear(at + keepFrom);
      this.held.push(keepFrom ? buf.subarray(keepFrom) : buf);
      this.highWater = Math.max(this.highWater, this.held.size);
    }
    if (this.rewinding) return;
    if (!this.attempted || this.held.size >= FLUSH_BYTES) this.flush();
    else this.schedule();
  }

  private setInterval(ms: number | undefined): void {
    if (ms) this.intervalMs = Math.max(this.minIntervalMs, ms);
  }

  private noteCancel(): void {
    if (this.canceled) return;
    this.canceled = true;
    this.o.onCancel();
  }

  /** Send when the interval since the last send has passed (at once after a quiet spell). */
  private schedule(): void {
    if (this.timer || this.closed || this.sending) return;
    const wait = Math.max(0, this.lastSendAt + this.intervalMs - this.clock.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, wait);
  }

  /**
   * While the job prints nothing, touch the job (PUT state=running) at the update interval:
   * that is how a cancel reaches a silent job.
   */
  startHeartbeat(): void {
    const beat = () => {
      if (this.closed || this.gone) return;
      this.heartbeat = setTimeout(async () => {
        if (this.closed || this.gone) return;
        if (!this.sending && this.held.size === 0) {
          try {
            const res = await this.o.client.updateJob(this.o.jobId, this.o.jobToken, { state: 'running' });
            this.setInterval(res.updateIntervalMs);
            if (res.canceled || res.result === 'abort' || res.result === 'notFound') this.noteCancel();
          } catch (err) {
            this.o.log.debug({ err: (err as Error).message, job: this.o.jobId }, 'job keepalive failed');
          }
        }
        beat();
      }, this.intervalMs);
    };
    beat();
  }

  private flush(): void {
    if (this.sending) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.attempted = true;
    this.sending = this.send()
      .catch((err) => this.o.log.warn({ err: (err as Error).message, job: this.o.jobId }, 'trace upload failed; will retry'))
      .finally(() => {
        this.sending = null;
        this.wakeDrained();
        if (this.held.size === 0 || this.closed || this.gone || this.rewinding) return;
        // A backlog (a producer may be waiting on it) goes at once; a little waits for the interval.
        if (this.held.size >= FLUSH_BYTES) queueMicrotask(() => this.flush());
        else this.schedule();
      });
  }

  private async send(): Promise<void> {
    let stalls = 0;
    while (this.held.size > 0 && !this.gone && !this.rewinding && stalls < 3) {
      const from = this.held.start;
      const body = this.held.slice(from, MAX_PATCH_BYTES);
      const res = await this.o.client.patchTrace(this.o.jobId, this.o.jobToken, body, from);
      this.lastSendAt = this.clock.now();
      this.setInterval(res.updateIntervalMs);
      if (res.canceled) this.noteCancel();
      if (!res.ok && res.canceled) {
        this.gone = true; // the job is over in GitLab; nothing more to send
        this.held.clear(this.produced);
        return;
      }
      if (!res.ok && res.status !== 416) return; // 409 and the like: try again at the next interval
      // 202 or 416 alike: continue from what GitLab holds.
      const next = res.nextOffset;
      if (next < this.held.start) {
        // GitLab lost bytes we no longer hold: the producer must start over.
        this.sent = next;
        if (!this.o.onRewind) {
          this.o.log.warn({ job: this.o.jobId, held: next, from: this.held.start }, 'GitLab holds less trace than this runner can resend');
          this.gone = true;
          this.held.clear(this.produced);
          return;
        }
        this.o.log.info({ job: this.o.jobId, held: next }, 'GitLab lost part of the trace: producing it again from the start');
        this.rewinding = true;
        this.held.clear(0);
        this.o.onRewind();
        return;
      }
      this.sent = next;
      // Beyond what we produced (a re-attach, or a rewind under way): skip those bytes as they come.
      this.held.dropTo(Math.min(next, this.produced));
      if (next >= this.produced) this.held.clear(this.produced);
      this.wakeDrained();
      if (next <= from) stalls++;
      else stalls = 0;
    }
  }

  /** Flush everything; returns the checksum and size of the full masked trace. */
  async finish(): Promise<{ bytesize: number; checksum: string | null }> {
    this.add(this.masker.end());
    clearTimeout(this.heartbeat);
    for (let i = 0; i < 5 && this.held.size > 0 && !this.gone && !this.rewinding; i++) {
      await this.sending;
      if (this.held.size > 0 && !this.gone) {
        if (i > 0) await new Promise((r) => setTimeout(r, Math.min(this.intervalMs, 1000)));
        this.flush();
        await this.sending;
      }
    }
    await this.sending;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.sent > this.produced && !this.gone) this.o.log.warn({ job: this.o.jobId, held: this.sent, produced: this.produced }, 'GitLab holds more trace than this runner produced');
    return { bytesize: this.produced, checksum: this.crcKnown ? `crc32:${(this.crc >>> 0).toString(16).padStart(8, '0')}` : null };
  }

  /**
   * Before the runner's closing lines when the job's output could not all be produced again (a
   * re-attached job that ended early: VM gone, canceled): learn what GitLab holds and continue
   * after it, so the closing lines follow the output GitLab has. The checksum of bytes this
   * uploader never saw is unknown, so finish() then gives none.
   */
  async catchUp(): Promise<void> {
    if (!this.attempted) this.flush();
    await this.sending;
    if (this.sent <= this.produced || this.gone) return;
    this.produced = this.sent;
    this.crcKnown = false;
    this.held.clear(this.sent);
  }

  /** Whether a rewind asked by GitLab is waiting for the producer. */
  get needsRewind(): boolean {
    return this.rewinding;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.heartbeat);
    this.wakeDrained();
  }
}
