// The job script for a Windows VM: the PowerShell counterpart of buildBashScript (script.ts), with
// the same semantics: variables, git checkout at the job's sha with the job token, the `script`
// step, then `after_script` (always, once the script step ran). Its exit code is the script
// step's. Runs on Windows PowerShell 5.1 and on pwsh 7, so it uses no pipeline chain operators
// (`&&`, `||`) and nothing newer than .NET Framework 4.5.
//
// Layout on the VM:
//   - the remote command (powerShellCommand) starts powershell.exe with a small bootstrap as
//     -EncodedCommand; the bootstrap takes the job script, base64 on stdin, writes it to a .ps1
//     file (UTF-8 with BOM, which 5.1 needs for non-ASCII text) and runs it;
//   - the job script sets variables, prepares the project dir and fetches the repository;
//   - each step (`script`, `after_script`) is written to its own .ps1 and runs in a child
//     powershell process (-File), as GitLab Runner runs its stages: `exit 3` in a step ends the
//     step with 3, not the job script, and a step's variables do not leak into the next step.
//
// Errors and exit codes inside a step: each command line runs dot-sourced (so variables and
// functions carry over to the next line, as in bash) with stderr merged (`2>&1`) into the output.
// Native stderr then arrives as ErrorRecords; under ErrorActionPreference=Stop, Windows
// PowerShell 5.1 turns the first one into a terminating error (pwsh 7.2+ no longer does), so a
// step runs with ErrorActionPreference=Continue and gets the "stop on error" semantics otherwise:
// every cmdlet defaults to -ErrorAction Stop ($PSDefaultParameterValues), exceptions and
// terminating errors end the step through its try/catch (exit 1), and a native command's non-zero
// $LASTEXITCODE ends the step with that code (checked after every line; as in GitLab Runner, a
// line of several statements is judged by its last native command).
// $PSNativeCommandUseErrorActionPreference is $false so pwsh 7.3+ leaves exit codes to us.
import { Buffer } from 'node:buffer';
import type { JobPayload } from './job-payload.js';
import { SHELL_NAME, gitPlan, jobVariables, projectPath, stepScript } from './script.js';

/**
 * Quote for PowerShell: a verbatim (single-quoted) string. Nothing is special inside but the
 * quote itself, which is doubled; PowerShell also takes the typographic single quotes
 * (U+2018..U+201B) as quotes, so those are doubled too. Newlines, `$`, backticks and `"` stay
 * as they are.
 */
export function psq(s: string): string {
  return `'${s.replace(/['\u2018\u2019\u201A\u201B]/g, '$&$&')}'`;
}

/** The job script's last line: the bootstrap refuses a script that arrived without it (truncated stdin). */
export const JOB_SCRIPT_TRAILER = '# end of runner-fleet job script';

/** Turns native-stderr ErrorRecords (from `2>&1`) back into the plain lines they were. */
const RF_OUT = 'filter rfOut { if ($_ -is [System.Management.Automation.ErrorRecord]) { $_.Exception.Message } else { $_ } }';

/** Common head of the job script and of each step script. */
const PRELUDE = [
  "$ErrorActionPreference = 'Stop'",
  "$ProgressPreference = 'SilentlyContinue'",
  '$PSNativeCommandUseErrorActionPreference = $false',
  '$rfUtf8 = New-Object System.Text.UTF8Encoding $false',
  // No console (some SSH sessions): the setter throws; the default encoding then stays.
  'try { [Console]::OutputEncoding = $rfUtf8 } catch { }',
  '$OutputEncoding = $rfUtf8',
  RF_OUT,
];

/** One step (`script` / `after_script`) as a standalone script, run with `powershell -File`. */
export function stepBody(name: string, cmds: string[]): string {
  const out = [
    `# runner-fleet step: ${name}`,
    ...PRELUDE,
    '$rfEsc = [string][char]27',
    'Set-Location -LiteralPath $env:CI_PROJECT_DIR -ErrorAction SilentlyContinue',
    'try { [System.IO.Directory]::SetCurrentDirectory((Get-Location).ProviderPath) } catch { }',
    // See the file comment: Continue, so merged native stderr never stops the step by itself.
    "$PSDefaultParameterValues = @{ '*:ErrorAction' = 'Stop' }",
    "$ErrorActionPreference = 'Continue'",
    'try {',
  ];
  for (const c of cmds) {
    out.push(
      `Write-Host ($rfEsc + '[32;1m$ ' + ${psq(c)} + $rfEsc + '[0;m')`,
      '$global:LASTEXITCODE = 0',
      // The command on lines of its own, unindented: here-strings in it keep working.
      '. {',
      c,
      '} 2>&1 | rfOut | Out-Host',
      'if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }',
    );
  }
  out.push('} catch {', 'Write-Host (($_ | Out-String).TrimEnd())', 'exit 1', '}', 'exit 0', '');
  return out.join('\n');
}

/** Lines that write a step to `$rfTmp\<name>.ps1`, check that it parses, run it; its exit code lands in $rfStepRc. */
function runStep(name: string, cmds: string[]): string[] {
  return [
    `$rfFile = Join-Path $rfTmp ${psq(`${name}.ps1`)}`,
    // With BOM: Windows PowerShell 5.1 reads a .ps1 without one in the ANSI code page.
    `[System.IO.File]::WriteAllText($rfFile, ${psq(stepBody(name, cmds))}, (New-Object System.Text.UTF8Encoding $true))`,
    '$rfTokens = $null',
    '$rfErrs = $null',
    '$null = [System.Management.Automation.Language.Parser]::ParseFile($rfFile, [ref]$rfTokens, [ref]$rfErrs)',
    'if ($rfErrs) {',
    `  foreach ($rfE in $rfErrs) { Write-Host (${psq(`ERROR: ${name} is not valid PowerShell: `)} + $rfE.Message + ' ' + $rfE.Extent.Text) }`,
    '  $rfStepRc = 1',
    '} else {',
    // Not captured: the child writes straight to this process's stdout/stderr, live.
    '  & $rfPs -NoProfile -NonInteractive -ExecutionPolicy Bypass -InputFormat Text -OutputFormat Text -File $rfFile',
    '  $rfStepRc = $LASTEXITCODE',
    '}',
  ];
}

/** A git invocation inside the git block: stderr merged, failure (non-zero exit) throws. */
function git(args: string, what: string): string[] {
  return [`& git ${args} 2>&1 | rfOut | Out-Host`, `if ($LASTEXITCODE -ne 0) { throw (${psq(`${what} failed with exit code `)} + $LASTEXITCODE) }`];
}

function gitSetup(job: JobPayload): string[] {
  const plan = gitPlan(job);
  const out: string[] = [];
  if (plan.warning) out.push(`Write-Host ${psq(plan.warning)}`);
  // Emptying the project dir; like `find -delete`, what cannot be removed is reported, not fatal.
  const empty = 'Get-ChildItem -LiteralPath . -Force | Remove-Item -Recurse -Force -ErrorAction Continue';
  if (plan.kind === 'skip') {
    if (plan.strategy === 'empty') out.push(empty);
    return [...out, `Write-Host ${psq(`Skipping Git repository setup (GIT_STRATEGY=${plan.strategy})`)}`];
  }
  if (plan.kind === 'missing') return [...out, "throw 'the job has no git repository to fetch'"];
  if (plan.kind === 'invalid') return [...out, `throw ${psq(plan.error)}`];
  const { depth } = plan;
  // The remote URL carries the job token: it is only ever an argument, never echoed. Arguments
  // from the payload come after `--`, quoted: PowerShell swallows a bare `--` (its own
  // end-of-parameters token) instead of passing it to git.
  const dd = psq('--');
  out.push(
    ...(plan.clone ? ["Write-Host 'Cloning repository...'", empty] : []),
    `Write-Host ${psq(`Fetching changes${depth ? ` with git depth set to ${depth}` : ''}...`)}`,
    'try {',
    '& {',
    // Merged git stderr must not stop the block (Windows PowerShell 5.1); exit codes are checked.
    "$ErrorActionPreference = 'Continue'",
    ...git('-c init.defaultBranch=main init -q .', 'git init'),
    '& git remote remove origin 2>&1 | Out-Null',
    ...git(`remote add ${dd} origin ${psq(plan.repoUrl)}`, 'git remote add'),
    ...git(`-c protocol.version=2 fetch -q ${depth ? `--depth ${depth} ` : ''}--prune ${dd} origin ${plan.refspecs.map(psq).join(' ')}`, 'git fetch'),
    `Write-Host ${psq(`Checking out ${plan.sha.slice(0, 8)} as detached HEAD (ref is ${plan.ref})...`)}`,
    ...git(`-c advice.detachedHead=false checkout -f -q ${psq(plan.sha)} ${dd}`, 'git checkout'),
    ...(plan.cleanFlags === null ? [] : git(`clean -q ${plan.cleanFlags.join(' ')}`, 'git clean')),
    '}',
    '} catch {',
    "Write-Host ('ERROR: ' + $_.Exception.Message)",
    "throw 'git fetch/checkout failed'",
    '}',
  );
  return out;
}

/**
 * The job script for a Windows VM (PowerShell). `buildsDir` is a literal path (default: `builds`
 * in the user's profile directory, `$HOME`).
 *
 * A variable with an empty value ends up unset: Windows PowerShell cannot set an empty
 * environment variable.
 */
export function buildPowerShellScript(job: JobPayload, opts: { buildsDir?: string } = {}): string {
  const out: string[] = ['# generated by runner-fleet: the job script for a Windows VM (Windows PowerShell 5.1 or pwsh 7)', ...PRELUDE];
  // The first line prints at once: the manager times pick-up to first line by it.
  out.push('Write-Host "Running with runner-fleet on $([System.Environment]::MachineName)"');
  out.push(
    '$rfRc = 1',
    '$rfRan = $false',
    // %TEMP% of the job's user: private to that user, as the bash script's umask 0077 dir.
    "$rfTmp = Join-Path ([System.IO.Path]::GetTempPath()) ('runner-fleet-' + [guid]::NewGuid().ToString('N'))",
    // Steps run in a child of this same PowerShell (powershell.exe or pwsh).
    '$rfPs = [System.Diagnostics.Process]::GetCurrentProcess().MainModule.FileName',
    'try {',
    "$rfVars = Join-Path $rfTmp 'vars'",
    '$null = New-Item -ItemType Directory -Force -Path $rfVars',
  );
  for (const [key, v] of jobVariables(job)) {
    if (!SHELL_NAME.test(key)) continue; // not a plain name: cannot be an environment variable here either
    if (v.file) {
      // A file variable holds a path; the value is the file's content (UTF-8, no BOM).
      out.push(`$env:${key} = Join-Path $rfVars ${psq(key)}`, `[System.IO.File]::WriteAllText($env:${key}, ${psq(v.value)}, $rfUtf8)`);
    } else {
      out.push(`$env:${key} = ${psq(v.value)}`);
    }
  }
  const segments = projectPath(job).split('/').filter((s) => s !== '');
  out.push(
    `$env:CI_BUILDS_DIR = ${opts.buildsDir !== undefined ? psq(opts.buildsDir) : "Join-Path $HOME 'builds'"}`,
    `$env:CI_PROJECT_DIR = [System.IO.Path]::Combine($env:CI_BUILDS_DIR, ${segments.map(psq).join(', ') || "'project'"})`,
    '$null = New-Item -ItemType Directory -Force -Path $env:CI_PROJECT_DIR',
    'Set-Location -LiteralPath $env:CI_PROJECT_DIR',
  );
  out.push(...gitSetup(job));
  out.push('$rfRan = $true', ...runStep('script', stepScript(job, 'script')), '$rfRc = $rfStepRc');
  out.push('} catch {', "Write-Host ('ERROR: ' + $_.Exception.Message)", '$rfRc = 1', '}');
  const after = stepScript(job, 'after_script');
  if (after.length) {
    // Runs whenever the script step ran, from the project dir; its failure is reported but does
    // not change the job's result.
    out.push(
      'if ($rfRan) {',
      "Write-Host 'Running after_script'",
      'try {',
      'Set-Location -LiteralPath $env:CI_PROJECT_DIR -ErrorAction SilentlyContinue',
      ...runStep('after_script', after),
      "if ($rfStepRc -ne 0) { Write-Host 'WARNING: after_script failed, but job will continue unaffected' }",
      '} catch {',
      "Write-Host ('WARNING: after_script failed, but job will continue unaffected: ' + $_.Exception.Message)",
      '}',
      '}',
    );
  }
  out.push('Set-Location -LiteralPath $HOME -ErrorAction SilentlyContinue', 'Remove-Item -LiteralPath $rfTmp -Recurse -Force -ErrorAction SilentlyContinue', 'exit $rfRc', JOB_SCRIPT_TRAILER, '');
  return out.join('\n');
}

/**
 * Runs in powershell.exe as -EncodedCommand: takes the job script from stdin (base64 text, see
 * powerShellStdin), checks it arrived whole, writes it to a .ps1 in %TEMP% and runs it; exits with
 * its exit code.
 *
 * Stdin is read through `$input`: with -Command/-EncodedCommand and a redirected stdin, the
 * PowerShell host itself reads stdin (as the command's pipeline input) while the command runs, so
 * reading [Console]::In as well would race with it. Base64 keeps the bytes safe from the console
 * code page that host uses to decode stdin.
 */
export const POWERSHELL_BOOTSTRAP = [
  "$ProgressPreference = 'SilentlyContinue'",
  "$ErrorActionPreference = 'Stop'",
  '$rfCode = 1',
  'try {',
  "  $rfB64 = (@($input) -join '') -replace '\\s', ''",
  "  if (-not $rfB64) { throw 'no job script on stdin' }",
  '  $rfBytes = [Convert]::FromBase64String($rfB64)',
  `  if (-not [System.Text.Encoding]::UTF8.GetString($rfBytes).TrimEnd().EndsWith(${psq(JOB_SCRIPT_TRAILER)})) { throw 'the job script on stdin is incomplete' }`,
  "  $rfJob = Join-Path ([System.IO.Path]::GetTempPath()) ('runner-fleet-job-' + [guid]::NewGuid().ToString('N') + '.ps1')",
  '  [System.IO.File]::WriteAllBytes($rfJob, $rfBytes)',
  '  $global:LASTEXITCODE = 1',
  '  & $rfJob',
  '  $rfCode = $LASTEXITCODE',
  '} catch {',
  "  [Console]::Out.WriteLine('ERROR: runner-fleet could not run the job script: ' + $_.Exception.Message)",
  '  $rfCode = 1',
  '}',
  'exit $rfCode',
].join('\r\n');

/**
 * The SSH command that runs a job script on a Windows VM (send powerShellStdin(script) as stdin).
 *
 * Only a program name and arguments of `[A-Za-z0-9+/=-]`: the command means the same whichever
 * shell the VM's OpenSSH server runs it with (cmd.exe, powershell.exe or pwsh as DefaultShell;
 * bash in the emulator, where a `powershell.exe` shim stands in). We assume PowerShell as that
 * shell on GCE images: with it, the outer PowerShell reads stdin itself and passes it on as the
 * pipeline input of powershell.exe (which is why the script travels as text lines, base64).
 * Caveat: a PowerShell DefaultShell reports the command's exit code as 0 or 1 only (the
 * PowerShell CLI maps a failing last command to 1); cmd.exe passes the exact code through.
 * Appending `; exit $LASTEXITCODE` would keep it under PowerShell but break the command under
 * cmd.exe, whose default the VM image may keep.
 */
export function powerShellCommand(exe = 'powershell.exe'): string {
  const encoded = Buffer.from(POWERSHELL_BOOTSTRAP, 'utf16le').toString('base64');
  return `${exe} -NoProfile -NonInteractive -ExecutionPolicy Bypass -InputFormat Text -OutputFormat Text -EncodedCommand ${encoded}`;
}

/** The stdin for powerShellCommand: the script as UTF-8 with BOM, base64, in lines of 76. */
export function powerShellStdin(script: string): string {
  const b64 = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(script, 'utf8')]).toString('base64');
  return `${b64.replace(/.{1,76}/g, '$&\r\n')}`;
}
