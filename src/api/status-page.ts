// The status page as HTML: the aggregates rendered here (it reads without JavaScript, and a
// <noscript> refresh keeps it current), plus one small inline script that refreshes it in place
// and, once given the admin token, fetches the per-VM and per-job detail from
// /v1/status/detail with an Authorization header. No framework, no build step; the page's
// Content-Security-Policy admits exactly this script and style (by hash) and same-origin fetches.
import { createHash } from 'node:crypto';
import type { ClassStatus, StatusSummary } from './status-data.js';
import { SLO_OBJECTIVE, SLO_SECONDS } from './status-data.js';

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d232a; background: #fafbfc; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; } h2 { font-size: 1.05rem; margin: 1.6rem 0 .5rem; }
table { border-collapse: collapse; background: #fff; } th, td { padding: .3rem .6rem; border: 1px solid #d5dae0; text-align: left; }
th { background: #eef1f4; font-weight: 600; } th[colspan] { text-align: center; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.role { display: inline-block; padding: .1rem .5rem; border-radius: .6rem; font-weight: 600; }
.role-active { background: #d8f5de; color: #14532d; } .role-standby, .role-unknown { background: #fdf1cf; color: #713f12; } .role-stopped { background: #fde2e2; color: #7f1d1d; }
.muted { color: #5b6672; } .bad { color: #b42318; font-weight: 600; } .good { color: #14532d; }
form { margin: .5rem 0; } input { font: inherit; padding: .2rem .4rem; } button { font: inherit; padding: .2rem .7rem; }
`;

const SCRIPT = `
(function () {
  'use strict';
  var refreshMs = Number(document.body.getAttribute('data-refresh')) * 1000;
  var KEY = 'runner-fleet-admin-token';
  var token = sessionStorage.getItem(KEY);
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function age(s) {
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  }
  function table(id, heads, rows) {
    var t = el('table'); t.id = id;
    var tr = el('tr');
    heads.forEach(function (h) { tr.appendChild(el('th', h)); });
    t.appendChild(tr);
    rows.forEach(function (r) {
      var row = el('tr');
      r.forEach(function (c) { row.appendChild(el('td', c.v, c.num ? 'num' : '')).setAttribute('data-field', c.f); });
      t.appendChild(row);
    });
    return t;
  }
  function renderDetail(d) {
    var body = $('detail-body');
    body.replaceChildren();
    body.appendChild(el('h3', 'VMs (' + d.vms.length + ')'));
    body.appendChild(d.vms.length ? table('vms', ['VM', 'class', 'state', 'zone', 'age', 'job'], d.vms.map(function (v) {
      return [{ f: 'name', v: v.name }, { f: 'class', v: v.class }, { f: 'state', v: v.state }, { f: 'zone', v: v.zone || '-' }, { f: 'age', v: age(v.age_seconds), num: 1 }, { f: 'job', v: v.job_id || '-', num: 1 }];
    })) : el('p', 'No live VMs.', 'muted'));
    body.appendChild(el('h3', 'Recent failures (24 h)'));
    body.appendChild(d.failures.length ? table('failures', ['when', 'what', 'class', 'reason'], d.failures.map(function (f) {
      return [{ f: 'at', v: new Date(f.at).toISOString().replace('T', ' ').slice(0, 19) + ' UTC' }, { f: 'what', v: f.what + ' ' + f.id }, { f: 'class', v: f.class }, { f: 'reason', v: f.reason }];
    })) : el('p', 'No failures in the last 24 hours.', 'muted'));
    body.appendChild(el('h3', 'Isolation audit findings'));
    var iso = d.isolation;
    body.appendChild(iso.findings.length ? table('findings', ['provider', 'kind', 'classes', 'finding'], iso.findings.map(function (f) {
      return [{ f: 'provider', v: f.provider }, { f: 'kind', v: f.kind }, { f: 'classes', v: f.classes.join(', ') }, { f: 'message', v: f.message }];
    })) : el('p', 'No findings.', 'muted'));
    iso.failed.forEach(function (m) { body.appendChild(el('p', 'Audit could not run: ' + m, 'bad')); });
    body.hidden = false;
  }
  function loadDetail() {
    if (!token) return Promise.resolve();
    return fetch('/v1/status/detail', { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' }).then(function (res) {
      if (res.status === 401 || res.status === 403) {
        sessionStorage.removeItem(KEY); token = null;
        $('detail-body').hidden = true; $('token-form').hidden = false; $('forget').hidden = true;
        return res.json().then(function (b) { $('detail-status').textContent = 'Detail refused: ' + b.error + '.'; });
      }
      if (!res.ok) throw new Error('HTTP ' + res.status);
      return res.json().then(function (d) {
        $('token-form').hidden = true; $('forget').hidden = false;
        $('detail-status').textContent = 'Detail as the admin API sees it.';
        renderDetail(d);
      });
    });
  }
  function loadSummary() {
    return fetch(location.pathname + location.search, { headers: { Accept: 'text/html' }, cache: 'no-store' }).then(function (res) {
      if (!res.ok) throw new Error('HTTP ' + res.status);
      return res.text();
    }).then(function (html) {
      var next = new DOMParser().parseFromString(html, 'text/html');
      ['summary', 'role', 'generated'].forEach(function (id) { $(id).replaceWith(document.adoptNode(next.getElementById(id))); });
    });
  }
  function refresh() {
    Promise.all([loadSummary(), loadDetail()]).then(function () {
      $('stale').hidden = true;
    }, function (err) {
      $('stale').hidden = false; $('stale').textContent = 'Refresh failed (' + err.message + '); showing older figures.';
    }).then(function () { setTimeout(refresh, refreshMs); });
  }
  $('token-form').addEventListener('submit', function (e) {
    e.preventDefault();
    token = $('token').value.trim();
    $('token').value = '';
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    loadDetail().catch(function (err) { $('detail-status').textContent = 'Detail failed: ' + err.message; });
  });
  $('forget').addEventListener('click', function () {
    sessionStorage.removeItem(KEY); token = null;
    $('detail-body').hidden = true; $('detail-body').replaceChildren(); $('token-form').hidden = false; $('forget').hidden = true;
    $('detail-status').textContent = 'Per-VM and per-job detail needs the admin token.';
  });
  document.documentElement.classList.add('js');
  loadDetail().catch(function () {});
  setTimeout(refresh, refreshMs);
})();
`;

const hash = (s: string) => `'sha256-${createHash('sha256').update(s).digest('base64')}'`;

/** Admits the page's own script and style only; fetches go to this origin. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'", `script-src ${hash(SCRIPT)}`, `style-src ${hash(STYLE)}`, "connect-src 'self'",
  "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
].join('; ');

export function renderStatusPage(s: StatusSummary, refreshSeconds: number): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>runner-fleet · ${esc(s.shard)}</title>
<noscript><meta http-equiv="refresh" content="${refreshSeconds}"></noscript>
<style>${STYLE}</style>
</head>
<body data-refresh="${refreshSeconds}">
<header>
<h1>runner-fleet · shard ${esc(s.shard)}</h1>
<p>This manager is ${roleBadge(s)} · updated ${generated(s)} · refreshes every ${refreshSeconds} s <span id="stale" class="bad" hidden></span></p>
</header>
${summary(s)}
<section id="detail">
<h2>VMs, recent failures and isolation findings</h2>
<p id="detail-status" class="muted">Per-VM and per-job detail needs the admin token.</p>
<form id="token-form"><label>Admin token <input id="token" type="password" autocomplete="off" required></label> <button type="submit">Show detail</button></form>
<button id="forget" type="button" hidden>Forget the token</button>
<div id="detail-body" hidden></div>
</section>
<script>${SCRIPT}</script>
</body>
</html>
`;
}

function roleBadge(s: StatusSummary): string {
  return `<span id="role" class="role role-${s.role}" data-role="${s.role}">${s.role}</span>`;
}

function generated(s: StatusSummary): string {
  const iso = s.generatedAt.toISOString();
  return `<time id="generated" datetime="${iso}">${iso.slice(11, 19)} UTC</time>`;
}

function summary(s: StatusSummary): string {
  const rows = s.classes.map(classRow).join('\n');
  const empty = s.classes.length ? '' : '<tr><td colspan="12" class="muted">No classes.</td></tr>';
  return `<main id="summary">
<h2>Classes</h2>
<table id="classes">
<tr><th rowspan="2">class</th><th colspan="5">pool</th><th colspan="2">jobs</th><th colspan="4">start latency, last hour</th></tr>
<tr><th>hot</th><th>standby</th><th>booting</th><th>busy</th><th>leaving</th><th>running</th><th>waiting</th><th>started</th><th>p50</th><th>p90</th><th>within ${SLO_SECONDS} s</th></tr>
${rows}${empty}
</table>
${s.classes.some((c) => c.poolFrom === 'database') ? '<p class="muted">Pools marked * are counted from the database: this manager runs no pool (standby) or has not ticked yet.</p>' : ''}
<h2>Isolation audit</h2>
${isolation(s)}
</main>`;
}

function classRow(c: ClassStatus): string {
  const cell = (field: string, v: string | number, cls = 'num') => `<td data-field="${field}"${cls ? ` class="${cls}"` : ''}>${esc(String(v))}</td>`;
  const l = c.startLatency;
  const secs = (n: number | null) => (n === null ? '–' : `${n} s`);
  const slo = l.withinSlo === null ? '–' : `${(l.withinSlo * 100).toFixed(1)}%`;
  return `<tr data-class="${esc(c.name)}" data-pool-from="${c.poolFrom}">${cell('class', c.name + (c.poolFrom === 'database' ? ' *' : ''), '')}`
    + cell('hot', c.pool.hot) + cell('standby', c.pool.standby) + cell('booting', c.pool.booting) + cell('busy', c.pool.busy) + cell('leaving', c.pool.leaving)
    + cell('running', c.jobs.running) + cell('waiting', c.jobs.waiting)
    + cell('started', l.jobs) + cell('p50', secs(l.p50)) + cell('p90', secs(l.p90))
    + cell('within-slo', slo, l.withinSlo === null ? 'num' : l.withinSlo >= SLO_OBJECTIVE ? 'num good' : 'num bad') + '</tr>';
}

function isolation(s: StatusSummary): string {
  const i = s.isolation;
  if (i.mode === 'off') return '<p id="isolation" data-findings="0" class="muted">Off (isolation.audit: off).</p>';
  if (!i.lastRunAt) return `<p id="isolation" data-findings="0" class="muted">Mode ${esc(i.mode)}; no audit has run here (this shard's providers have no firewall to audit, isolation.managerRanges is empty, or this manager has not been active).</p>`;
  const kinds = Object.entries(i.byKind).filter(([, n]) => n > 0).map(([k, n]) => `${esc(k)} ${n}`).join(', ');
  const found = i.findings ? `<span class="bad">${i.findings} finding${i.findings === 1 ? '' : 's'}</span> (${kinds})` : '<span class="good">no findings</span>';
  const failed = i.failedProviders ? `; <span class="bad">${i.failedProviders} provider${i.failedProviders === 1 ? '' : 's'} could not be audited</span>` : '';
  return `<p id="isolation" data-findings="${i.findings}">Mode ${esc(i.mode)}; last run ${esc(i.lastRunAt.toISOString().replace('T', ' ').slice(0, 19))} UTC: ${found}${failed}.</p>`;
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}
