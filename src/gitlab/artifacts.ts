// Artifacts and dependencies of a job, as bash run on the VM (Linux and macOS, both executors):
// the VM talks to GitLab itself (outbound only), so nothing big passes through the manager.
//
// - download_artifacts: each dependency with an artifacts file is fetched with that dependency's
//   token (`GET /api/v4/jobs/:id/artifacts`, JOB-TOKEN) and unzipped into the project dir. A
//   redirect (object storage) is followed without the token.
// - upload_artifacts_on_success / _on_failure: each `artifacts` entry whose `when` matches is
//   collected (paths and exclude as gitlab-runner's globs: `**` any depth, a directory takes what
//   is under it; untracked = git's untracked files, ignored ones too), archived by its format
//   (zip; gzip: one gzip member per file, as gitlab-runner writes reports; raw: the one file) and
//   posted (`POST /api/v4/jobs/:id/artifacts`, multipart `file`, artifact_type, artifact_format,
//   expire_in). 5xx, 429 and network errors are retried with backoff, 5 times; 413 fails the
//   job with GitLab's message.
// Globs are turned into anchored EREs here (pure, tested), so the VM needs only find, grep -E,
// zip/unzip, gzip and curl: no bash 4 globstar (macOS has bash 3.2).
import type { JobPayload } from './job-payload.js';
import { shq } from './script-quote.js';

export interface ArtifactEntry {
  name: string;
  paths: string[];
  exclude: string[];
  untracked: boolean;
  when: 'on_success' | 'on_failure' | 'always';
  type: string;
  format: 'zip' | 'gzip' | 'raw';
  expireIn: string | null;
}

export interface Dependency {
  id: number;
  name: string;
  token: string;
}

/** One path glob as an anchored ERE over paths relative to the project dir; null when it leaves the project. */
export function globToRegex(glob: string): string | null {
  let g = glob.trim().replace(/^(\.\/)+/, '').replace(/\/+$/, '');
  if (!g || g.startsWith('/') || g.split('/').includes('..')) return null;
  g = g.replace(/\/{2,}/g, '/');
  let re = '';
  for (let i = 0; i < g.length; i++) {
    const c = g[i]!;
    if (c === '*' && g[i + 1] === '*') {
      // `**/` any directories (none included); `**` at the end or before other text: anything.
      if (g[i + 2] === '/') {
        re += '(.*/)?';
        i += 2;
      } else {
        re += '.*';
        i += 1;
      }
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = g.indexOf(']', i + 2);
      if (end < 0) re += '\\[';
      else {
        let cls = g.slice(i + 1, end);
        if (cls.startsWith('!')) cls = `^${cls.slice(1)}`;
        re += `[${cls.replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else if ('.+()|{}^$\\'.includes(c)) re += `\\${c}`;
    else re += c;
  }
  // A match that is a directory takes everything under it.
  return `^${re}(/.*)?$`;
}

const TYPE = /^[a-z][a-z0-9_]{0,49}$/;
const EXPIRE = /^[A-Za-z0-9 .]{1,50}$/;

/** The artifacts entries of a job, checked; problems are named by field and the entry skipped. */
export function artifactEntries(job: JobPayload): { entries: ArtifactEntry[]; warnings: string[] } {
  const entries: ArtifactEntry[] = [];
  const warnings: string[] = [];
  for (const [i, a] of (job.artifacts ?? []).entries()) {
    const type = a.artifact_type ?? 'archive';
    const format = a.artifact_format ?? 'zip';
    if (!TYPE.test(type)) {
      warnings.push(`artifacts[${i}].artifact_type: ${JSON.stringify(type.slice(0, 60))} is not an artifact type; skipped`);
      continue;
    }
    if (format !== 'zip' && format !== 'gzip' && format !== 'raw') {
      warnings.push(`artifacts[${i}].artifact_format: ${JSON.stringify(String(format).slice(0, 60))} is not zip, gzip or raw; skipped`);
      continue;
    }
    const expire = a.expire_in && EXPIRE.test(a.expire_in) ? a.expire_in : null;
    if (a.expire_in && !expire) warnings.push(`artifacts[${i}].expire_in: ${JSON.stringify(a.expire_in.slice(0, 60))} is not a duration; GitLab's default applies`);
    entries.push({
      name: (a.name || (type === 'archive' ? 'artifacts' : type)).replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 100),
      paths: a.paths ?? [],
      exclude: a.exclude ?? [],
      untracked: a.untracked === true,
      when: a.when ?? 'on_success',
      type,
      format,
      expireIn: expire,
    });
  }
  return { entries, warnings };
}

/** Dependencies whose artifacts exist (GitLab sends `artifacts_file` for those). */
export function dependencies(job: JobPayload): Dependency[] {
  return (job.dependencies ?? []).filter((d) => d.artifacts_file && d.token).map((d) => ({ id: d.id, name: (d.name ?? `job ${d.id}`).replace(/[^\x20-\x7e]/g, '?').slice(0, 200), token: d.token! }));
}

/**
 * bash helpers (need $RF_TMP, $rf_dir, $rf_api, $rf_cacert): rf_http METHOD URL TOKENFILE OUT
 * [curl args] prints the HTTP code (000 on a network error) and follows one redirect without the
 * token; rf_upload FILE NAME TYPE FORMAT EXPIRE; rf_download ID NAME TOKENFILE.
 */
export const ARTIFACT_HELPERS = [
  'rf_http() {',
  '  local method="$1" url="$2" hdr="$3" out="$4" code loc; shift 4',
  '  code=$(curl -sS -o "$out" -w "%{http_code} %{redirect_url}" --connect-timeout 10 --max-time 3600 $rf_cacert -X "$method" -H @"$hdr" "$@" -- "$url" 2>"$RF_TMP/curl.err") || code="000 ${code#* }"',
  '  loc=${code#* }; code=${code%% *}',
  '  if [ "$method" = GET ] && [ "${code#3}" != "$code" ] && [ -n "$loc" ]; then',
  // Object storage: the signed URL is the credential; the job token stays with GitLab.
  '    code=$(curl -sS -o "$out" -w "%{http_code}" --connect-timeout 10 --max-time 3600 $rf_cacert -- "$loc" 2>"$RF_TMP/curl.err") || code=000',
  '  fi',
  '  echo "$code"',
  '}',
  'rf_retry_wait() { [ "$1" -lt 5 ] && echo "WARNING: $2 (try $(( $1 + 1 )) of 6); retrying in $(( 1 << $1 ))s" && sleep $(( 1 << $1 )); }',
  'rf_upload() {',
  '  local file="$1" name="$2" type="$3" format="$4" expire="$5" n=0 code',
  '  echo "Uploading artifacts as \\"$type\\" ($(wc -c < "$file" | tr -d " ") bytes) to coordinator..."',
  '  while :; do',
  '    code=$(rf_http POST "$rf_api/jobs/$rf_job_id/artifacts" "$RF_TMP/job-token.hdr" "$RF_TMP/upload.resp" -F "file=@$file;filename=$name" -F "artifact_type=$type" -F "artifact_format=$format" ${expire:+-F "expire_in=$expire"})',
  '    case "$code" in',
  '      201|200) echo "Uploading artifacts as \\"$type\\" to coordinator... $code Created"; return 0 ;;',
  '      413) echo "ERROR: Uploading artifacts as \\"$type\\" to coordinator... 413 Request Entity Too Large: $(head -c 300 "$RF_TMP/upload.resp" 2>/dev/null)"; return 1 ;;',
  '      000|429|5??) rf_retry_wait "$n" "Uploading artifacts as \\"$type\\" to coordinator... $code $(head -c 200 "$RF_TMP/curl.err" "$RF_TMP/upload.resp" 2>/dev/null | tr "\\n" " ")" || { echo "ERROR: Uploading artifacts as \\"$type\\" to coordinator... failed after 6 tries ($code)"; return 1; }; n=$((n + 1)) ;;',
  '      *) echo "ERROR: Uploading artifacts as \\"$type\\" to coordinator... $code $(head -c 300 "$RF_TMP/upload.resp" 2>/dev/null)"; return 1 ;;',
  '    esac',
  '  done',
  '}',
  'rf_download() {',
  '  local id="$1" name="$2" hdr="$3" n=0 code',
  '  while :; do',
  '    code=$(rf_http GET "$rf_api/jobs/$id/artifacts" "$hdr" "$RF_TMP/dep.zip")',
  '    case "$code" in',
  '      200) echo "Downloading artifacts for $name ($id)... 200 OK"; unzip -q -o "$RF_TMP/dep.zip" -d "$rf_dir" || { echo "ERROR: the artifacts of $name ($id) could not be extracted"; return 1; }; rm -f "$RF_TMP/dep.zip"; return 0 ;;',
  '      000|429|5??) rf_retry_wait "$n" "Downloading artifacts for $name ($id)... $code" || { echo "ERROR: Downloading artifacts for $name ($id) failed after 6 tries ($code)"; return 1; }; n=$((n + 1)) ;;',
  '      *) echo "ERROR: Downloading artifacts for $name ($id) from coordinator... $code $(head -c 300 "$RF_TMP/dep.zip" 2>/dev/null)"; return 1 ;;',
  '    esac',
  '  done',
  '}',
];

/** The grep -E arguments matching any of `globs` (each `-e RE`), and the globs refused. */
function matchers(globs: string[]): { args: string; refused: string[] } {
  const res: string[] = [];
  const refused: string[] = [];
  for (const g of globs) {
    const re = globToRegex(g);
    if (re) res.push(`-e ${shq(re)}`);
    else refused.push(g);
  }
  return { args: res.join(' '), refused };
}

/**
 * bash that writes to `list` the project-relative files that `paths`/`untracked` select minus
 * `exclude` (one per line, sorted); warnings for globs that leave the project. Empty when none.
 */
export function collectScript(what: string, sel: { paths: string[]; exclude?: string[]; untracked: boolean }, list: string): string[] {
  const out: string[] = [];
  const inc = matchers(sel.paths);
  const exc = matchers(sel.exclude ?? []);
  for (const g of [...inc.refused, ...exc.refused]) out.push(`echo ${shq(`WARNING: ${g}: not a path inside the project directory; ignored`)}`);
  const sources: string[] = [];
  if (inc.args) sources.push(`find . -mindepth 1 \\( -type f -o -type l \\) -print | sed 's,^\\./,,' | grep -v -E '^\\.git(/|$)' | grep -E ${inc.args}`);
  if (sel.untracked) sources.push(`{ git ls-files --others 2>/dev/null || echo ${shq(`WARNING: ${what}: untracked needs a git repository (GIT_STRATEGY none?)`)} >&2; }`);
  if (!sources.length) return [...out, `: > ${list}`];
  const filter = exc.args ? ` | grep -v -E ${exc.args}` : '';
  out.push(`(cd "$rf_dir" && { ${sources.map((s) => `${s};`).join(' ')} } | sort -u${filter} > ${list})`);
  return out;
}

/** bash that collects, archives and uploads one entry with rf_upload. Sets rf_art_failed on failure. */
export function uploadEntryScript(e: ArtifactEntry, index: number): string[] {
  const list = `"$RF_TMP/art-${index}.list"`;
  const out = collectScript(`artifacts ${e.name}`, e, list);
  const archive = `"$RF_TMP/art-${index}.${e.format === 'zip' ? 'zip' : e.format === 'gzip' ? 'gz' : 'raw'}"`;
  const fileName = e.format === 'zip' ? `${e.name}.zip` : e.format === 'gzip' ? `${e.name}.gz` : e.name;
  const make =
    e.format === 'zip'
      ? `(cd "$rf_dir" && zip -q -y -@ ${archive} < ${list})`
      : e.format === 'gzip'
        ? `(cd "$rf_dir" && while IFS= read -r f; do gzip -c -- "$f"; done < ${list} > ${archive})`
        : `{ [ "$(wc -l < ${list} | tr -d ' ')" -eq 1 ] || { echo ${shq(`ERROR: artifacts ${e.name} (raw) must match exactly one file`)}; false; }; } && cp -- "$rf_dir/$(head -n 1 ${list})" ${archive}`;
  out.push(
    `if [ ! -s ${list} ]; then echo ${shq(`WARNING: ${[...e.paths, ...(e.untracked ? ['untracked'] : [])].join(', ') || '(no paths)'}: no matching files. Ensure that the artifact path is relative to the working directory`)}; echo ${shq(`ERROR: No files to upload for ${e.name}`)}`,
    `else echo "$(wc -l < ${list} | tr -d ' ') files found for ${e.name.replace(/[^A-Za-z0-9._-]/g, '')}"`,
    `  if ${make}; then rf_upload ${archive} ${shq(fileName)} ${shq(e.type)} ${shq(e.format)} ${shq(e.expireIn ?? '')} || rf_art_failed=1; else echo ${shq(`ERROR: could not archive ${e.name}`)}; rf_art_failed=1; fi`,
    'fi',
  );
  return out;
}
