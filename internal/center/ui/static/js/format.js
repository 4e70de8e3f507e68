// Formatting of values with their units, of times and of durations.

// Units a chart or table can carry. axis is the text on the y axis.
export const UNITS = {
  percent: {axis: '%', fmt: (v) => trim(v * 100, 3) + '%'},        // value is a ratio 0..1
  seconds: {axis: 'seconds', fmt: fmtSeconds},
  bytes: {axis: 'bytes', fmt: (v) => binary(v, 'B')},
  'bytes/s': {axis: 'bytes/s', fmt: (v) => binary(v, 'B/s')},
  'bits/s': {axis: 'bits/s', fmt: (v) => si(v, 'b/s')},
  'msg/s': {axis: 'messages/s', fmt: (v) => si(v, ' msg/s')},
  'req/s': {axis: 'requests/s', fmt: (v) => si(v, ' req/s')},
  'pkt/s': {axis: 'packets/s', fmt: (v) => si(v, ' pkt/s')},
  'pages/s': {axis: 'pages/s', fmt: (v) => si(v, ' pages/s')},
  '/s': {axis: 'per second', fmt: (v) => si(v, '/s')},
  threads: {axis: 'threads', fmt: (v) => si(v, '')},
  none: {axis: '', fmt: (v) => si(v, '')},
};

export function unitOf(name) {
  return UNITS[name] || UNITS.none;
}

export function fmtValue(v, unit) {
  if (v === undefined || v === null || Number.isNaN(v)) return '–';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return unitOf(unit).fmt(v);
}

function trim(v, digits) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  return String(Number(v.toPrecision(digits)));
}

export function si(v, suffix) {
  const a = Math.abs(v);
  const steps = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [f, p] of steps) if (a >= f) return trim(v / f, 3) + p + suffix;
  if (a > 0 && a < 1e-3) return trim(v * 1e6, 3) + 'µ' + suffix;
  return trim(v, 3) + suffix;
}

function binary(v, suffix) {
  const a = Math.abs(v);
  const steps = [[2 ** 40, 'Ti'], [2 ** 30, 'Gi'], [2 ** 20, 'Mi'], [2 ** 10, 'Ki']];
  for (const [f, p] of steps) if (a >= f) return trim(v / f, 3) + ' ' + p + suffix;
  return trim(v, 3) + ' ' + suffix;
}

export function fmtSeconds(v) {
  const a = Math.abs(v);
  if (a === 0) return '0 s';
  if (a < 1e-3) return trim(v * 1e6, 3) + ' µs';
  if (a < 1) return trim(v * 1e3, 3) + ' ms';
  if (a < 120) return trim(v, 3) + ' s';
  if (a < 7200) return trim(v / 60, 3) + ' min';
  if (a < 172800) return trim(v / 3600, 3) + ' h';
  return trim(v / 86400, 3) + ' d';
}

export function fmtMs(ms) {
  return fmtSeconds(ms / 1000);
}

const pad = (n) => String(n).padStart(2, '0');

// fmtTime is a local time for axes and read-outs; withDate adds the day.
export function fmtTime(ms, withDate = false, withSeconds = false) {
  const d = new Date(ms);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}` + (withSeconds ? `:${pad(d.getSeconds())}` : '');
  if (!withDate) return hm;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm}`;
}

// fmtAgo says how long ago ms was: "3m 20s ago".
export function fmtAgo(ms, now = Date.now()) {
  let s = Math.max(0, Math.round((now - ms) / 1000));
  const parts = [];
  for (const [f, u] of [[86400, 'd'], [3600, 'h'], [60, 'm'], [1, 's']]) {
    if (s >= f || (u === 's' && !parts.length)) {
      parts.push(Math.floor(s / f) + u);
      s %= f;
    }
    if (parts.length === 2) break;
  }
  return parts.join(' ') + ' ago';
}

// parseDuration reads a Prometheus-style duration (5m, 1h30m, 250ms) in ms.
export function parseDuration(text) {
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g;
  const f = {ms: 1, s: 1e3, m: 6e4, h: 36e5, d: 864e5, w: 6048e5};
  const t = String(text).trim();
  if (!/^(\d+(?:\.\d+)?(ms|s|m|h|d|w))+$/.test(t)) return NaN;
  let ms = 0;
  for (const m of t.matchAll(re)) ms += Number(m[1]) * f[m[2]];
  return ms;
}

// promDuration writes ms as a PromQL duration (whole seconds, at least 1s).
export function promDuration(ms) {
  let s = Math.max(1, Math.round(ms / 1000));
  if (s % 86400 === 0) return s / 86400 + 'd';
  if (s % 3600 === 0) return s / 3600 + 'h';
  if (s % 60 === 0) return s / 60 + 'm';
  return s + 's';
}
