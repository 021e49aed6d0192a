// The distributed cache as bash run on the VM (Linux and macOS, both executors), with URLs the
// manager signed for this job (src/cache): restore_cache tries the key, then the fallback keys,
// and unzips the first found into the project dir; archive_cache zips the entry's paths and
// PUTs them. As in gitlab-runner, a cache miss or a failed cache transfer is a warning, never
// the job's failure. Signed URLs are never printed (they are credentials until they expire).
import type { CacheEntryPlan } from '../cache/plan.js';
import { collectScript } from './artifacts.js';
import { shq } from './script-quote.js';

/** A cache entry with its signed URLs. */
export interface SignedCacheEntry extends Omit<CacheEntryPlan, 'restore' | 'save'> {
  restore: { key: string; url: string }[];
  save: { key: string; url: string; where: string } | null;
}

/** rf_cache_get KEY URL [KEY URL ...] and rf_cache_put FILE URL KEY WHERE (need rf_http's $rf_cacert, $RF_TMP, $rf_dir). */
export const CACHE_HELPERS = [
  'rf_cache_get() {',
  '  local key url code n',
  '  while [ $# -ge 2 ]; do',
  '    key="$1" url="$2" n=0; shift 2',
  '    echo "Checking cache for $key..."',
  '    while :; do',
  '      code=$(curl -sS -o "$RF_TMP/cache.zip" -w "%{http_code}" --connect-timeout 10 --max-time 3600 $rf_cacert -- "$url" 2>"$RF_TMP/curl.err") || code=000',
  '      case "$code" in',
  '        200) if unzip -q -o "$RF_TMP/cache.zip" -d "$rf_dir"; then echo "Successfully extracted cache"; rm -f "$RF_TMP/cache.zip"; return 0; fi',
  '             echo "WARNING: the cache for $key could not be extracted"; break ;;',
  // S3 answers 403 for a missing object to a signer without ListBucket; either way: not here.
  '        404|403) echo "WARNING: no cache for $key (HTTP $code)"; break ;;',
  '        000|429|5??) rf_retry_wait "$n" "Downloading cache $key... $code" || { echo "WARNING: Downloading cache $key failed ($code)"; break; }; n=$((n + 1)) ;;',
  '        *) echo "WARNING: Downloading cache $key... $code"; break ;;',
  '      esac',
  '    done',
  '  done',
  '  echo "Failed to extract cache"',
  '  return 0',
  '}',
  'rf_cache_put() {',
  '  local file="$1" url="$2" key="$3" where="$4" code n=0',
  '  echo "Uploading cache.zip to $where"',
  '  while :; do',
  '    code=$(curl -sS -o "$RF_TMP/cache.resp" -w "%{http_code}" --connect-timeout 10 --max-time 3600 $rf_cacert -X PUT -T "$file" -- "$url" 2>"$RF_TMP/curl.err") || code=000',
  '    case "$code" in',
  '      200|201|204) echo "Created cache"; return 0 ;;',
  '      000|429|5??) rf_retry_wait "$n" "Uploading cache $key... $code" || { echo "WARNING: Failed to create cache $key ($code)"; return 0; }; n=$((n + 1)) ;;',
  '      *) echo "WARNING: Failed to create cache $key: $code $(head -c 300 "$RF_TMP/cache.resp" 2>/dev/null)"; return 0 ;;',
  '    esac',
  '  done',
  '}',
];

/** restore_cache: one rf_cache_get per entry that pulls. */
export function restoreScript(entries: SignedCacheEntry[]): string[] {
  return entries.filter((e) => e.restore.length).map((e) => `rf_cache_get ${e.restore.map((r) => `${shq(r.key)} ${shq(r.url)}`).join(' ')}`);
}

/** archive_cache for the entries whose `when` matches: collect, zip, PUT. */
export function saveScript(entries: { e: SignedCacheEntry; i: number }[]): string[] {
  const out: string[] = [];
  for (const { e, i } of entries) {
    if (!e.save) continue;
    const list = `"$RF_TMP/cache-${i}.list"`;
    out.push(`echo ${shq(`Creating cache ${e.key}...`)}`, ...collectScript(`cache ${e.key}`, e, list));
    out.push(
      `if [ ! -s ${list} ]; then echo ${shq(`WARNING: ${[...e.paths, ...(e.untracked ? ['untracked'] : [])].join(', ') || '(no paths)'}: no matching files`)}; echo 'No files to archive: cache not created'`,
      `elif (cd "$rf_dir" && zip -q -y -@ "$RF_TMP/cache-${i}.zip" < ${list}); then rf_cache_put "$RF_TMP/cache-${i}.zip" ${shq(e.save.url)} ${shq(e.save.key)} ${shq(e.save.where)}`,
      `else echo ${shq(`WARNING: could not archive the cache ${e.key}`)}; fi`,
    );
  }
  return out;
}
