// The UI's shell: navigation, the time range shared by every chart of a
// page (kept in the address, so a link shows the same), live refresh, and
// the bearer token prompt when the center wants one.

import {h, clear} from './dom.js';
import {features, setToken} from './api.js';
import {fmtTime, parseDuration, promDuration} from './format.js';
import overview from './pages/overview.js';
import services from './pages/services.js';
import hosts from './pages/hosts.js';
import probes from './pages/probes.js';
import traces from './pages/traces.js';
import alerts from './pages/alerts.js';
import explore from './pages/explore.js';
import faultsPage from './pages/faults.js';

const PAGES = {overview, services, hosts, probes, traces, alerts, explore, faults: faultsPage};
const PRESETS = ['5m', '15m', '1h', '6h', '24h', '7d'];
const DEFAULT_RANGE = '1h';
const REFRESH_MS = 15000;
const YOUNG_MS = 60000;        // a center this young has little data yet:
const YOUNG_REFRESH_MS = 2000; // refresh this often, so the first data shows soon
const POINTS = 300;       // points per line a chart asks for
const SCRAPE_MS = 5000;   // the center's default scrape interval: no finer step
const STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400].map((x) => x * 1000);

let current = null;      // {name, controller, refresh, timer}
let feats = {traces: false, probe_failures: false, faults: false, auth: false};
let centerStarted = null; // ms, from the features' uptime

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return {page: parts[0] || 'overview', rest: parts.slice(1), params: new URLSearchParams(query || '')};
}

// href builds a link to page with params, keeping the time range.
export function href(page, params = {}, keepRange = true) {
  const cur = parseHash().params;
  const p = new URLSearchParams();
  if (keepRange) for (const k of ['range', 'from', 'to', 'refresh']) if (cur.has(k)) p.set(k, cur.get(k));
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
  const q = p.toString();
  return '#/' + page + (q ? '?' + q : '');
}

// rangeOf is the time range of params: {start, end, step, w, live, span}.
export function rangeOf(params, now = Date.now()) {
  let start;
  let end;
  let live = true;
  const from = Number(params.get('from'));
  const to = Number(params.get('to'));
  if (from > 0 && to > from) {
    start = from;
    end = to;
    live = false;
  } else {
    let span = parseDuration(params.get('range') || DEFAULT_RANGE);
    if (!(span > 0)) span = parseDuration(DEFAULT_RANGE);
    end = now;
    start = now - span;
  }
  const span = end - start;
  const step = STEPS.find((x) => span / x <= POINTS) || STEPS[STEPS.length - 1];
  start = Math.floor(start / step) * step;
  // The rate window: a minute (12 scrapes) at least, and a step plus a
  // scrape, so that no increase falls between two points and no sample is
  // read for more than two (Grafana's $__rate_interval).
  const w = promDuration(Math.max(12 * SCRAPE_MS, step + SCRAPE_MS));
  return {start, end, step, w, live, span};
}

// refreshMs is the live refresh period: ?refresh=30s in the address, at
// least 2 s, 15 s by default; 2 s in the center's first minute.
function refreshMs(params) {
  const ms = parseDuration(params.get('refresh') || '');
  if (ms >= 2000) return ms;
  return centerStarted !== null && Date.now() - centerStarted < YOUNG_MS ? YOUNG_REFRESH_MS : REFRESH_MS;
}

function renderNav(page) {
  clear(document.getElementById('nav'), Object.entries(PAGES).map(([name, p]) =>
    h('a' + (name === page ? '.active' : ''), {href: href(name)}, p.title)));
}

function renderRange(params) {
  const r = rangeOf(params);
  const box = document.getElementById('range');
  const setParam = (changes) => {
    const p = parseHash();
    for (const k of ['range', 'from', 'to']) p.params.delete(k);
    for (const [k, v] of Object.entries(changes)) p.params.set(k, v);
    location.hash = '#/' + [p.page, ...p.rest].map(encodeURIComponent).join('/') + '?' + p.params.toString();
  };
  const sel = h('select', {title: 'time range of every chart on this page', 'aria-label': 'time range',
    onchange: (e) => setParam({range: e.target.value})},
  (r.live ? [] : [h('option', {value: '', selected: true}, 'custom')]).concat(
    PRESETS.map((x) => h('option', {value: x, selected: r.live && (params.get('range') || DEFAULT_RANGE) === x}, 'last ' + x))));
  clear(box, sel,
    r.live ? h('span.live', {title: 'refreshes every ' + refreshMs(params) / 1000 + ' s'}, '● live')
      : [h('span.abs', null, fmtTime(r.start, true) + ' – ' + fmtTime(r.end, true)),
        h('button', {type: 'button', onclick: () => setParam({range: params.get('range') || DEFAULT_RANGE})}, 'back to live')]);
}

function setRangeAbs(start, end) {
  const p = parseHash();
  p.params.delete('range');
  p.params.set('from', String(start));
  p.params.set('to', String(end));
  location.hash = '#/' + [p.page, ...p.rest].map(encodeURIComponent).join('/') + '?' + p.params.toString();
}

function banner(node) {
  const b = document.getElementById('banner');
  if (!node) {
    b.hidden = true;
    clear(b);
    return;
  }
  clear(b, node);
  b.hidden = false;
}

function askToken() {
  const input = h('input', {type: 'password', placeholder: 'bearer token', autocomplete: 'off', 'aria-label': 'bearer token'});
  banner(h('form.token', {onsubmit: (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    banner(null);
    route();
  }}, 'This center wants a bearer token for its API: ', input, h('button', {type: 'submit'}, 'use it'),
  h('span.muted', null, ' (kept for this tab only)')));
}

async function runRefresh(cur, first) {
  if (cur.busy) return;
  cur.busy = true;
  try {
    if (cur.refresh) await cur.refresh();
  } catch (e) {
    if (e.name !== 'AbortError') {
      clear(cur.root, h('div.msg.error', {role: 'alert'}, 'This page failed: ' + e.message));
    }
  } finally {
    cur.busy = false;
  }
  if (first && current === cur) {
    // Wait for the frame that lays out what was drawn, then say so: tests
    // and the benchmark wait for this mark.
    await new Promise((r) => requestAnimationFrame(() => r()));
    if (current !== cur) return;
    performance.mark('imwatch:ready:' + cur.name);
    document.body.dataset.ready = cur.name;
  }
}

function route() {
  const {page, rest, params} = parseHash();
  if (current) {
    current.controller.abort();
    clearTimeout(current.timer);
    current = null;
  }
  delete document.body.dataset.ready;
  const mod = PAGES[page];
  renderNav(page);
  renderRange(params);
  const main = document.getElementById('main');
  if (!mod) {
    clear(main, h('div.msg.error', null, 'No page called ' + page + '.'), h('a', {href: href('overview')}, 'Overview'));
    return;
  }
  document.title = mod.title + ' · imwatch';
  const controller = new AbortController();
  const root = h('div.page.' + page);
  clear(main, root);
  const cur = {name: page, controller, root};
  current = cur;
  const ctx = {
    root, rest, params, features: feats, signal: controller.signal,
    range: () => rangeOf(params),
    setRange: setRangeAbs,
    href,
    go: (hash) => { location.hash = hash; },
  };
  try {
    cur.refresh = mod.render(ctx) || null;
  } catch (e) {
    clear(root, h('div.msg.error', {role: 'alert'}, 'This page failed: ' + e.message));
    return;
  }
  runRefresh(cur, true);
  if (rangeOf(params).live && cur.refresh) {
    // A chain of timeouts, not an interval: the period can change (a young
    // center's first minute).
    const tick = () => {
      cur.timer = setTimeout(() => {
        if (current !== cur) return;
        if (!document.hidden) runRefresh(cur, false);
        tick();
      }, refreshMs(params));
    };
    tick();
  }
}

async function start() {
  window.addEventListener('imwatch:unauthorized', askToken);
  try {
    const meta = document.querySelector('meta[name=imwatch-features]');
    feats = meta && meta.content.startsWith('{') ? JSON.parse(meta.content) : await features();
    if (typeof feats.uptime_s === 'number') centerStarted = Date.now() - feats.uptime_s * 1000;
  } catch (e) {
    banner(h('span', null, 'Cannot ask the center what it serves: ' + e.message));
  }
  window.addEventListener('hashchange', route);
  route();
}

start();
