// Streams a job's masked log to GitLab: the first chunk at once (so the job looks alive), then at
// the interval GitLab asks for or when enough is buffered. Keeps the whole masked trace so a 416
// can resend from the offset GitLab holds, and computes the final checksum and size.
import { crc32 } from 'node:zlib';
import type { Logger } from 'pino';
import type { GitLabClient } from './client.js';
import type { Masker } from './mask.js';

/** Send early when this much is waiting, without waiting for the interval. */
const FLUSH_BYTES = 64 * 1024;
/** Largest PATCH body; a backlog goes out in several requests. */
const MAX_PATCH_BYTES = 1024 * 1024;
/** Default cap of the kept trace; beyond it output is dropped with a notice. */
const MAX_TRACE_BYTES = 32 * 1024 * 1024;

export interface TraceUploaderOptions {
  client: GitLabClient;
  jobId: number;
  jobToken: string;
  masker: Masker;
  onCancel: () => void;
  log: Logger;
  clock?: { now(): number };
  /** Interval until GitLab names one (X-GitLab-Trace-Update-Interval); default 3 s. */
  intervalMs?: number;
  /** Floor on the interval GitLab asks for, so a bad header cannot make us hammer it. */
  minIntervalMs?: number;
  maxBytes?: number;
}

/** Append-only byte log that can hand out any range without re-copying what came before. */
class ByteLog {
  private sealed: { start: number; buf: Buffer }[] = [];
  private tail: Buffer[] = [];
  private tailStart = 0;
  size = 0;

  push(b: Buffer): void {
    this.tail.push(b);
    this.size += b.length;
  }

  /** Bytes [from, from+max) of the log. */
  slice(from: number, max: number): Buffer {
    if (this.tail.length) {
      // Seal the tail into one buffer: sealed chunks stay few even when output arrives in bytes.
      this.sealed.push({ start: this.tailStart, buf: Buffer.concat(this.tail) });
      this.tail = [];
      this.tailStart = this.size;
    }
    const end = Math.min(this.size, from + max);
    const parts: Buffer[] = [];
    let lo = 0;
    let hi = this.sealed.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.sealed[mid]!.start <= from) lo = mid;
      else hi = mid - 1;
    }
    for (let i = lo; i < this.sealed.length; i++) {
      const c = this.sealed[i]!;
      if (c.start >= end) break;
      const a = Math.max(from, c.start) - c.start;
      const b = Math.min(end, c.start + c.buf.length) - c.start;
      if (b > a) parts.push(c.buf.subarray(a, b));
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }
}

export class TraceUploader {
  private readonly bytes = new ByteLog();
  private sent = 0;
  private crc = 0;
  private intervalMs: number;
  private readonly minIntervalMs: number;
  private readonly maxBytes: number;
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

  constructor(private readonly o: TraceUploaderOptions) {
    this.minIntervalMs = o.minIntervalMs ?? 250;
    this.intervalMs = Math.max(this.minIntervalMs, o.intervalMs ?? 3000);
    this.maxBytes = o.maxBytes ?? MAX_TRACE_BYTES;
    this.clock = o.clock ?? Date;
  }

  /** Bytes of masked trace held so far, and how many of them GitLab has. */
  get progress(): { size: number; sent: number } {
    return { size: this.bytes.size, sent: this.sent };
  }

  /** Output from the job: masked, buffered, sent soon. */
  write(chunk: Buffer): void {
    this.add(this.o.masker.push(chunk));
  }

  /** A line from the runner itself (not masked: never holds job data). Flushes the masker first. */
  append(text: string): void {
    this.add(Buffer.concat([this.o.masker.end(), Buffer.from(text)]));
  }

  private add(buf: Buffer): void {
    if (!buf.length || this.closed) return;
    if (this.bytes.size + buf.length > this.maxBytes) {
      if (this.truncated) return;
      this.truncated = true;
      buf = Buffer.from('\nWARNING: job log size limit exceeded; further output is dropped\n');
    }
    this.bytes.push(buf);
    this.crc = crc32(buf, this.crc);
    if (!this.attempted || this.bytes.size - this.sent >= FLUSH_BYTES) this.flush();
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
        if (!this.sending && this.bytes.size === this.sent) {
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
        if (this.bytes.size > this.sent && !this.closed && !this.gone) this.schedule();
      });
  }

  private async send(): Promise<void> {
    let stalls = 0;
    while (this.bytes.size > this.sent && !this.gone && stalls < 3) {
      const from = this.sent;
      const body = this.bytes.slice(from, MAX_PATCH_BYTES);
      const res = await this.o.client.patchTrace(this.o.jobId, this.o.jobToken, body, from);
      this.lastSendAt = this.clock.now();
      this.setInterval(res.updateIntervalMs);
      if (res.canceled) this.noteCancel();
      if (!res.ok && res.canceled) {
        this.gone = true; // the job is over in GitLab; nothing more to send
        return;
      }
      // 202 or 416 alike: continue from what GitLab holds. If it claims more than we have (a
      // previous manager wrote this trace), there is nothing right to send: stop trying.
      if (res.nextOffset > this.bytes.size) {
        this.o.log.warn({ job: this.o.jobId, held: res.nextOffset, have: this.bytes.size }, 'GitLab holds more trace than this runner wrote');
        this.gone = true;
        return;
      }
      this.sent = res.nextOffset;
      if (this.sent <= from) stalls++;
      else stalls = 0;
      if (!res.ok && res.status !== 416) return; // 409 and the like: try again at the next interval
    }
  }

  /** Flush everything; returns the checksum and size of the full masked trace. */
  async finish(): Promise<{ bytesize: number; checksum: string }> {
    this.add(this.o.masker.end());
    clearTimeout(this.heartbeat);
    for (let i = 0; i < 5 && this.bytes.size > this.sent && !this.gone; i++) {
      await this.sending;
      if (this.bytes.size > this.sent && !this.gone) {
        if (i > 0) await new Promise((r) => setTimeout(r, Math.min(this.intervalMs, 1000)));
        this.flush();
        await this.sending;
      }
    }
    await this.sending;
    clearTimeout(this.timer);
    this.timer = undefined;
    return { bytesize: this.bytes.size, checksum: `crc32:${(this.crc >>> 0).toString(16).padStart(8, '0')}` };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.heartbeat);
  }
}
