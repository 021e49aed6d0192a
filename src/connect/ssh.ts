// Reaching a VM over SSH (ssh2): connect (optionally through a jump host), run commands with
// streamed output, cancel them, and wait for a booting VM to start answering.
// Every call is bounded: connects time out, a dead connection settles running commands.
import { createHash, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import ssh2, { type ClientChannel, type ConnectConfig } from 'ssh2';
import type { ConnectInfo } from '../providers/provider.js';
import { realClock } from '../manager/clock.js';

const { Client } = ssh2;
type Ssh2Client = InstanceType<typeof Client>;

export interface SshConnectOptions {
  /** Bound on TCP connect + handshake + auth, per hop. Default 10 s. */
  timeoutMs?: number;
  /** Keepalive interval; 3 unanswered keepalives drop the connection. Default 10 s, 0 disables. */
  keepaliveMs?: number;
  signal?: AbortSignal;
}

export interface ExecOptions {
  /** Written to the command's stdin, which is then closed. Without it stdin is closed at once. */
  stdin?: string | Buffer;
  onData?: (chunk: Buffer, stream: 'stdout' | 'stderr') => void;
  /** Abort = kill: the remote process gets SIGKILL and the channel is closed; exec rejects. */
  signal?: AbortSignal;
  /**
   * Flow control of stdout: while paused, SSH's window fills and the remote writer blocks, so a
   * slow consumer holds at most one window of output in memory.
   */
  onFlow?: (flow: { pause(): void; resume(): void }) => void;
}

export interface ExecResult {
  /** null when the command died from a signal or the server sent no exit status. */
  exitCode: number | null;
  /** Signal name without `SIG` (`KILL`, `TERM`), when the command died from one. */
  signal?: string;
}

/** An error from connecting; `retryable` says whether waiting for the VM could help. */
export class SshConnectError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    readonly code?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SshConnectError';
  }
}

/**
 * The target showed another host key than the pinned one: the connection was dropped during key
 * exchange, before authentication, so nothing (key, password, command) reached it. Whoever
 * answers on the VM's address is not the VM the manager made.
 */
export class HostKeyMismatchError extends SshConnectError {
  constructor(
    readonly target: string,
    readonly expected: string,
    readonly got: string,
  ) {
    super(`SSH host key of ${target} is ${got}, not the pinned ${expected}: refusing to talk to it`, false, 'HOSTKEY');
    this.name = 'HostKeyMismatchError';
  }
}

/** `SHA256:<base64, no padding>` of a host key blob. */
export function hostKeyFingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/** Whether the host key blob has the expected fingerprint (`SHA256:` prefix and padding optional). */
export function fingerprintMatches(expected: string, key: Buffer): boolean {
  const want = Buffer.from(expected.trim().replace(/^SHA256:/, '').replace(/=+$/, ''));
  const got = Buffer.from(hostKeyFingerprint(key).slice('SHA256:'.length));
  return want.length === got.length && timingSafeEqual(want, got);
}

function describeTarget(info: ConnectInfo): string {
  return `${info.username}@${info.host}:${info.port}${info.jump ? ` via ${info.jump.host}:${info.jump.port}` : ''}`;
}

function abortError(signal: AbortSignal | undefined, what: string): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error) return reason;
  const err = new Error(`${what} aborted`);
  err.name = 'AbortError';
  return err;
}

/**
 * One open SSH connection. Emits `close` (with an Error when the connection failed rather than
 * being closed by us) exactly once; `closed` tells whether it already happened.
 */
export class SshSession extends EventEmitter<{ close: [err?: Error] }> {
  private isClosed = false;
  private lastError: Error | undefined;

  /** @internal use connectSsh. */
  constructor(
    private readonly client: Ssh2Client,
    readonly target: string,
    private readonly jump?: SshSession,
  ) {
    super();
    client.on('error', (err: Error) => (this.lastError = err));
    client.on('close', () => this.markClosed());
    // The target's connection rides on the jump's: losing the jump loses the target.
    jump?.once('close', () => client.destroy());
  }

  get closed(): boolean {
    return this.isClosed;
  }

  private markClosed(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.jump?.close();
    this.emit('close', this.lastError);
  }

  /** Runs `command` with the login shell of the remote user, streaming its output. */
  exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(abortError(signal, 'exec'));
    if (this.isClosed) return Promise.reject(new Error(`SSH connection to ${this.target} is closed`));
    return new Promise<ExecResult>((resolve, reject) => {
      let channel: ClientChannel | undefined;
      let result: ExecResult | undefined;
      let done = false;
      const finish = (err: Error | null, res?: ExecResult) => {
        if (done) return;
        done = true;
        signal?.removeEventListener('abort', onAbort);
        this.off('close', onConnClose);
        if (err) reject(err);
        else resolve(res!);
      };
      const onConnClose = (err?: Error) =>
        finish(new Error(`SSH connection to ${this.target} closed while running a command${err ? `: ${err.message}` : ''}`));
      const onAbort = () => {
        if (channel) {
          try {
            channel.signal('KILL');
          } catch {
            // The channel may already be gone; closing below is what matters.
          }
          channel.close();
        }
        finish(abortError(signal, 'exec'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.once('close', onConnClose);
      try {
        this.client.exec(command, (err, stream) => {
          if (err) return finish(new Error(`SSH exec on ${this.target} failed: ${err.message}`));
          channel = stream;
          if (done) return void stream.close(); // aborted or disconnected while the channel opened
          stream.on('data', (chunk: Buffer) => opts.onData?.(chunk, 'stdout'));
          stream.stderr.on('data', (chunk: Buffer) => opts.onData?.(chunk, 'stderr'));
          opts.onFlow?.({ pause: () => stream.pause(), resume: () => stream.resume() });
          stream.on('exit', (code: number | null, sig?: string) => {
            result = code === null || code === undefined ? { exitCode: null, ...(sig ? { signal: sig.replace(/^SIG/, '') } : {}) } : { exitCode: code };
          });
          // 'close' comes after all output: settle there so no chunk arrives after the result.
          stream.on('close', () => finish(null, result ?? { exitCode: null }));
          stream.on('error', (e: Error) => finish(new Error(`SSH channel on ${this.target} failed: ${e.message}`)));
          if (opts.stdin !== undefined) stream.end(opts.stdin);
          else stream.end();
        });
      } catch (err) {
        finish(new Error(`SSH exec on ${this.target} failed: ${(err as Error).message}`));
      }
    });
  }

  /** Closes the connection (and the jump host's). Idempotent. */
  close(): void {
    this.client.end();
    // end() is polite; make sure nothing lingers if the peer does not answer.
    setTimeout(() => this.client.destroy(), 1000).unref();
  }

  /** Opens a TCP tunnel from the remote host to host:port (used for jump hosts). */
  forwardOut(host: string, port: number): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      try {
        this.client.forwardOut('127.0.0.1', 0, host, port, (err, stream) => (err ? reject(err) : resolve(stream)));
      } catch (err) {
        reject(err as Error);
      }
    });
  }
}

/** Connects and authenticates with the key (or password) in `info`, through `info.jump` when given. */
export async function connectSsh(info: ConnectInfo, opts: SshConnectOptions = {}): Promise<SshSession> {
  if (info.protocol !== 'ssh') throw new SshConnectError(`connectSsh cannot reach a ${info.protocol} target (${info.host})`, false);
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal, 'SSH connect');
  let jump: SshSession | undefined;
  let sock: Duplex | undefined;
  if (info.jump) {
    // The jump host is checked against its own pinned key (info.jump.hostKeyFingerprint).
    jump = await connectSsh(info.jump, opts);
    try {
      sock = await jump.forwardOut(info.host, info.port);
    } catch (err) {
      jump.close();
      throw new SshConnectError(`SSH jump ${info.jump.host}:${info.jump.port} could not reach ${info.host}:${info.port}: ${(err as Error).message}`, true, undefined, { cause: err });
    }
  }
  try {
    return await connectOnce(info, opts, jump, sock);
  } catch (err) {
    jump?.close();
    throw err;
  }
}

function connectOnce(info: ConnectInfo, opts: SshConnectOptions, jump: SshSession | undefined, sock: Duplex | undefined): Promise<SshSession> {
  const { signal } = opts;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const keepaliveMs = opts.keepaliveMs ?? 10_000;
  const target = describeTarget(info);
  const client = new Client();
  // ssh2 may still emit errors after we gave up on it (its own handshake timer, a late socket
  // error); without a listener those would crash the process.
  client.on('error', () => {});
  return new Promise<SshSession>((resolve, reject) => {
    let settled = false;
    let mismatch: HostKeyMismatchError | undefined;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      cleanup();
      client.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new SshConnectError(`SSH connect to ${target} timed out after ${timeoutMs} ms`, true, 'ETIMEDOUT')), timeoutMs);
    const onAbort = () => fail(abortError(signal, 'SSH connect'));
    signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      client.off('ready', onReady);
      client.off('error', onError);
      client.off('close', onClose);
    };
    const onReady = () => {
      if (settled) return;
      settled = true;
      cleanup();
      // Small interactive packets: Nagle + delayed ACK would add ~40 ms per round trip.
      client.setNoDelay(true);
      // Kept for the life of the client: ssh2 throws on an 'error' event without a listener.
      const session = new SshSession(client, target, jump);
      resolve(session);
    };
    const onError = (err: Error & { code?: string; level?: string }) => {
      if (mismatch) return fail(mismatch);
      const auth = err.level === 'client-authentication';
      // Auth can fail while a VM is still installing its key, so it is retryable too.
      fail(new SshConnectError(`SSH connect to ${target} failed: ${auth ? 'authentication rejected' : err.message}`, true, err.code ?? err.level, { cause: err }));
    };
    const onClose = () => fail(mismatch ?? new SshConnectError(`SSH connect to ${target} failed: connection closed during handshake`, true, 'ECONNRESET'));
    client.on('ready', onReady);
    client.on('error', onError);
    client.on('close', onClose);
    const expected = info.hostKeyFingerprint;
    const config: ConnectConfig = {
      host: info.host,
      port: info.port,
      username: info.username,
      readyTimeout: timeoutMs,
      keepaliveInterval: keepaliveMs,
      keepaliveCountMax: 3,
      ...(info.privateKey ? { privateKey: info.privateKey } : {}),
      ...(info.password ? { password: info.password } : {}),
      ...(sock ? { sock } : {}),
      // Pinned: only an ed25519 host key is asked for (the manager makes those), and one with
      // another fingerprint ends the handshake before any credential is sent. Unpinned (tools,
      // tests; never a job VM: see manager/host-key.ts): any key.
      ...(expected ? { algorithms: { serverHostKey: ['ssh-ed25519'] } } : {}),
      hostVerifier: (key: Buffer) => {
        if (!expected || fingerprintMatches(expected, key)) return true;
        mismatch = new HostKeyMismatchError(target, expected, hostKeyFingerprint(key));
        return false;
      },
    };
    try {
      client.connect(config);
    } catch (err) {
      // e.g. an unparsable private key: no amount of waiting fixes that.
      fail(new SshConnectError(`SSH connect to ${target} failed: ${(err as Error).message}`, false, undefined, { cause: err }));
    }
  });
}

export interface WaitForSshOptions extends Omit<SshConnectOptions, 'timeoutMs'> {
  /** Absolute epoch ms after which to give up. */
  deadlineMs: number;
  /** Cap of the interval between attempts (backoff grows to it). Default 2 s. */
  intervalMs?: number;
  /** Per-attempt connect timeout, also bounded by the deadline. Default 10 s. */
  attemptTimeoutMs?: number;
}

/** Connects to a VM that may still be booting: retries with capped, jittered backoff until the deadline. */
export async function waitForSsh(info: ConnectInfo, opts: WaitForSshOptions): Promise<SshSession> {
  const { signal, deadlineMs } = opts;
  const cap = Math.max(50, opts.intervalMs ?? 2000);
  let delay = Math.min(100, cap);
  let attempts = 0;
  let lastError: Error | undefined;
  // The last wrong host key seen: an attempt cut short by the deadline after it must not turn
  // the answer into "unreachable" (on a loaded machine the last attempt may get only a few ms).
  let mismatch: HostKeyMismatchError | undefined;
  const started = Date.now();
  for (;;) {
    if (signal?.aborted) throw abortError(signal, 'waiting for SSH');
    const left = deadlineMs - Date.now();
    if (left <= 0) break;
    attempts++;
    try {
      return await connectSsh(info, { ...opts, timeoutMs: Math.max(1, Math.min(opts.attemptTimeoutMs ?? 10_000, left)) });
    } catch (err) {
      if (signal?.aborted) throw abortError(signal, 'waiting for SSH');
      // A booting VM may answer with its image's host key until its boot script installed the
      // one the manager made (as with auth failures): retried, and nothing is sent to it.
      if (err instanceof SshConnectError && !err.retryable && !(err instanceof HostKeyMismatchError)) throw err;
      lastError = err as Error;
      if (err instanceof HostKeyMismatchError) mismatch = err;
    }
    const pause = Math.min(delay * (0.75 + Math.random() * 0.5), deadlineMs - Date.now());
    if (pause > 0) await realClock.sleep(pause, signal);
    delay = Math.min(cap, delay * 2);
  }
  // The wrong host key at the deadline (or the last answer before an attempt the deadline cut
  // short): that is the answer, not "unreachable".
  if (lastError instanceof HostKeyMismatchError) throw lastError;
  if (mismatch && lastError instanceof SshConnectError && (lastError.code === 'ETIMEDOUT' || lastError.code === 'client-timeout')) throw mismatch;
  throw new SshConnectError(
    `SSH to ${describeTarget(info)} not reachable within ${((Date.now() - started) / 1000).toFixed(1)} s (${attempts} attempts)${lastError ? `; last error: ${lastError.message}` : ''}`,
    false,
    'DEADLINE',
    { cause: lastError },
  );
}

