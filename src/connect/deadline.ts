// A signal that aborts after `ms` or when a linked signal aborts. Not AbortSignal.any over
// AbortSignal.timeout: on Node 20 that combined signal can be garbage-collected while a fetch
// waits on it, and then it never fires, so the call hangs (seen in the GitLab client fuzz: a
// silent server held a 300 ms call for 8.6 s). A controller kept alive by its timer cannot be.
// `clear()` once the call is over: until the timer fires, it keeps the controller, and through
// the listeners fetch added, the whole request and response alive; at a hundred calls a second
// with 10-30 s timeouts that survived the young generation and grew the old one by ~150 MiB.
export interface Deadline {
  readonly signal: AbortSignal;
  clear(): void;
}

export function deadline(ms: number, ...linked: AbortSignal[]): Deadline {
  const ctrl = new AbortController();
  const onAbort = (e: Event) => ctrl.abort((e.target as AbortSignal).reason);
  const unlink = () => {
    for (const s of linked) s.removeEventListener('abort', onAbort);
  };
  const timer = setTimeout(() => {
    unlink();
    ctrl.abort(new DOMException(`no answer within ${ms} ms`, 'TimeoutError'));
  }, ms);
  // Unref'd: it still fires while anything else keeps the process up, and never keeps it up alone.
  timer.unref();
  for (const s of linked) {
    if (s.aborted) ctrl.abort(s.reason);
    else s.addEventListener('abort', onAbort, { once: true });
  }
  return {
    signal: ctrl.signal,
    clear: () => {
      clearTimeout(timer);
      unlink();
    },
  };
}
