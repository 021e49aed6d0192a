// Scrapes the manager's /metrics every <interval> ms for <seconds> s from its own process, so the
// latency measured is the manager's and not the bench's (whose event loop also runs the GitLab
// and GCE emulators). Prints {"ms":[...],"errors":[...],"bytes":N} on stdout.
// Usage: node scale-scraper.mjs <url> <seconds> [interval ms]
const [url, seconds, interval = '200'] = process.argv.slice(2);
if (!url || !seconds) {
  process.stderr.write('usage: scale-scraper <url> <seconds> [interval ms]\n');
  process.exit(2);
}
const ms = [];
const errors = [];
let bytes = 0;
const end = Date.now() + Number(seconds) * 1000;
while (Date.now() < end) {
  const t = Date.now();
  const t0 = performance.now();
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
    const text = await res.text();
    if (!res.ok) throw new Error(`answered ${res.status}`);
    ms.push(performance.now() - t0);
    bytes = text.length;
  } catch (err) {
    errors.push(err.message);
  }
  await new Promise((r) => setTimeout(r, Math.max(0, Number(interval) - (Date.now() - t))));
}
process.stdout.write(JSON.stringify({ ms, errors, bytes }));
