// A small SVG time-series chart: axes with units, a legend (click a name to
// hide or show its line), a hover read-out of every line at the time under
// the pointer, and drag-to-zoom, which sets the page's shared time range.

import {h, s, clear} from './dom.js';
import {fmtValue, fmtTime, unitOf} from './format.js';

export const PALETTE = ['#2f6fdf', '#e8590c', '#2b9a66', '#c2255c', '#7048e8', '#0c8599', '#e67700', '#5c940d',
  '#862e9c', '#495057', '#d6336c', '#1864ab'];

const M = {left: 44, right: 14, top: 10, bottom: 26}; // plot margins, px
const MAX_LEGEND = 24;
const MAX_SERIES = 200; // lines drawn; the rest are counted, not drawn

// Charts on the page, redrawn at their new width when the window changes.
const charts = new Set();
let resizeTimer = 0;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const c of charts) {
      if (!c.el.isConnected) charts.delete(c);
      else if (c.el.dataset.state === 'data') c.draw();
    }
  }, 150);
});

export class Chart {
  // title: heading; unit: a key of format.UNITS; onSelect(start, end): a
  // drag on the plot; yMax: fixed top (e.g. 1 for percent).
  constructor({title, unit = 'none', height = 190, onSelect, yMax, help}) {
    this.unit = unit;
    this.height = height;
    this.onSelect = onSelect;
    this.yMax = yMax;
    this.series = [];
    this.bands = []; // [{start, end, label, active}]: faults, shaded on the timeline
    this.hidden = new Set();
    this.range = null;
    this.plot = h('div.plot');
    this.legend = h('div.legend');
    this.readout = h('div.readout', {hidden: true, role: 'status'});
    this.el = h('section.chart', {dataset: {points: '0', series: '0', state: 'loading'}},
      h('header', null, h('h3', null, title), help ? h('span.help', {title: help}, '?') : null),
      this.plot, this.legend, this.readout);
    this.setMessage('loading…', 'loading');
    charts.add(this);
  }

  // setData draws series [{name, points: [[ms, value], ...]}] over range
  // {start, end, step} (ms); empty series show emptyText instead.
  setData(series, range, emptyText = 'no data in this time range') {
    this.total = series.length;
    this.series = series.slice(0, MAX_SERIES).map((x, i) => ({...x, color: x.color || PALETTE[i % PALETTE.length]}));
    this.range = range;
    const points = this.series.reduce((n, x) => n + x.points.filter((p) => Number.isFinite(p[1])).length, 0);
    this.el.dataset.points = String(points);
    this.el.dataset.series = String(this.series.length);
    if (!points) {
      this.setMessage(emptyText, 'empty');
      return;
    }
    this.el.dataset.state = 'data';
    this.draw();
  }

  // setMessage shows text in place of the plot: loading, empty or error.
  setMessage(text, kind) {
    this.el.dataset.state = kind;
    if (kind !== 'loading') {
      this.el.dataset.points = '0';
    }
    clear(this.plot, h('div.msg.' + kind, {style: {height: this.height + 'px'}}, text));
    clear(this.legend);
    this.readout.hidden = true;
  }

  draw() {
    const W = Math.max(240, this.plot.clientWidth || this.el.clientWidth || 600);
    const H = this.height;
    const {start, end} = this.range;
    const vis = this.series.filter((x) => !this.hidden.has(x.name));
    let lo = 0;
    let hi = -Infinity;
    for (const x of vis) {
      for (const [, v] of x.points) {
        if (!Number.isFinite(v)) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (!Number.isFinite(hi) || hi <= lo) hi = lo + (this.unit === 'percent' ? 0.01 : 1);
    if (this.yMax !== undefined && hi <= this.yMax && hi > this.yMax * 0.5) hi = this.yMax;
    const yt = niceTicks(lo, hi, 5);
    lo = yt[0];
    hi = yt[yt.length - 1];
    const fmt = (v) => fmtValue(v, this.unit);
    // Room on the left for the longest tick label and the unit.
    const left = Math.max(M.left, 26 + 6.4 * Math.max(...yt.map((v) => fmt(v).length)));
    const pw = W - left - M.right;
    const ph = H - M.top - M.bottom;
    const X = (t) => left + ((t - start) / (end - start)) * pw;
    const Y = (v) => M.top + ph - ((v - lo) / (hi - lo)) * ph;

    const svg = s('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img'});
    const grid = s('g.gridlines');
    for (const v of yt) {
      grid.append(s('line', {x1: left, x2: W - M.right, y1: Y(v), y2: Y(v)}));
      grid.append(s('text.ytick', {x: left - 6, y: Y(v) + 4, 'text-anchor': 'end'}, fmt(v)));
    }
    const span = end - start;
    const ticks = timeTicks(start, end, Math.max(2, Math.floor(pw / 90)));
    for (const t of ticks) {
      const d = new Date(t);
      const withDate = span > 2 * 864e5 && d.getHours() === 0 && d.getMinutes() === 0;
      grid.append(s('line', {x1: X(t), x2: X(t), y1: M.top, y2: M.top + ph}));
      grid.append(s('text.xtick', {x: X(t), y: H - 8, 'text-anchor': 'middle'}, fmtTime(t, withDate, ticks.step < 60000)));
    }
    svg.append(grid);
    // Faults in force (shaded) on the time axis, under the lines, each with
    // its label as a tooltip.
    const bands = s('g.faults');
    let nb = 0;
    for (const b of this.bands) {
      const a = Math.max(start, b.start);
      const z = Math.min(end, b.end);
      if (!(z > a)) continue;
      nb++;
      bands.append(s('rect.fault' + (b.active ? '.active' : ''), {x: X(a), y: M.top, width: Math.max(2, X(z) - X(a)), height: ph},
        s('title', null, b.label)));
    }
    this.el.dataset.faults = String(nb);
    svg.append(bands);
    svg.append(s('text.yunit', {x: 12, y: M.top + ph / 2, transform: `rotate(-90 12 ${M.top + ph / 2})`, 'text-anchor': 'middle'}, unitOf(this.unit).axis));
    svg.append(s('line.axis', {x1: left, x2: left, y1: M.top, y2: M.top + ph}));
    svg.append(s('line.axis', {x1: left, x2: W - M.right, y1: M.top + ph, y2: M.top + ph}));

    const step = this.range.step || span / 200;
    const lines = s('g.lines');
    for (const x of vis) {
      let d = '';
      let prev = -Infinity;
      let single = null;
      for (const [t, v] of x.points) {
        if (!Number.isFinite(v)) {
          prev = -Infinity;
          continue;
        }
        const cmd = t - prev > step * 2.5 ? 'M' : 'L';
        if (cmd === 'M') single = [t, v];
        else single = null;
        d += `${cmd}${X(t).toFixed(1)} ${Y(v).toFixed(1)}`;
        prev = t;
      }
      lines.append(s('path', {d, stroke: x.color, fill: 'none', 'stroke-width': 1.6, 'data-name': x.name}));
      if (single && x.points.filter((p) => Number.isFinite(p[1])).length === 1) {
        lines.append(s('circle', {cx: X(single[0]), cy: Y(single[1]), r: 2.5, fill: x.color}));
      }
    }
    svg.append(lines);
    const cursor = s('line.cursor', {x1: 0, x2: 0, y1: M.top, y2: M.top + ph, visibility: 'hidden'});
    const sel = s('rect.selection', {x: 0, y: M.top, width: 0, height: ph, visibility: 'hidden'});
    const overlay = s('rect.overlay', {x: left, y: M.top, width: pw, height: ph, fill: 'transparent'});
    svg.append(cursor, sel, overlay);
    this.hover(overlay, cursor, sel, vis, X, start, end, pw);
    clear(this.plot, svg);
    this.drawLegend();
  }

  hover(overlay, cursor, sel, vis, X, start, end, pw) {
    const tAt = (ev) => {
      const r = overlay.getBoundingClientRect();
      return start + ((ev.clientX - r.left) / r.width) * (end - start);
    };
    let dragFrom = null;
    overlay.addEventListener('mousemove', (ev) => {
      const t = tAt(ev);
      cursor.setAttribute('x1', X(t));
      cursor.setAttribute('x2', X(t));
      cursor.setAttribute('visibility', 'visible');
      if (dragFrom !== null) {
        const a = Math.min(X(dragFrom), X(t));
        sel.setAttribute('x', a);
        sel.setAttribute('width', Math.abs(X(t) - X(dragFrom)));
        sel.setAttribute('visibility', 'visible');
      }
      this.showReadout(t, vis, ev);
    });
    overlay.addEventListener('mouseleave', () => {
      cursor.setAttribute('visibility', 'hidden');
      sel.setAttribute('visibility', 'hidden');
      dragFrom = null;
      this.readout.hidden = true;
    });
    overlay.addEventListener('mousedown', (ev) => {
      ev.preventDefault();
      dragFrom = tAt(ev);
    });
    overlay.addEventListener('mouseup', (ev) => {
      const to = tAt(ev);
      const from = dragFrom;
      dragFrom = null;
      sel.setAttribute('visibility', 'hidden');
      if (from !== null && this.onSelect && Math.abs(X(to) - X(from)) > 6) {
        this.onSelect(Math.round(Math.min(from, to)), Math.round(Math.max(from, to)));
      }
    });
  }

  // showReadout lists each visible line's value nearest to time t.
  showReadout(t, vis, ev) {
    const step = this.range.step || (this.range.end - this.range.start) / 200;
    const rows = [];
    let at = null;
    for (const x of vis) {
      const p = nearest(x.points, t);
      if (!p || Math.abs(p[0] - t) > step * 1.5) continue;
      at = at ?? p[0];
      rows.push({x, v: p[1]});
    }
    if (!rows.length) {
      this.readout.hidden = true;
      return;
    }
    rows.sort((a, b) => (Number.isFinite(b.v) ? b.v : -Infinity) - (Number.isFinite(a.v) ? a.v : -Infinity));
    const shown = rows.slice(0, 12);
    const inForce = this.bands.filter((b) => b.start <= t && t <= b.end);
    clear(this.readout,
      h('div.rtime', null, fmtTime(at, true, true)),
      inForce.map((b) => h('div.rfault', null, b.label)),
      shown.map(({x, v}) => h('div.rrow', null, h('span.swatch', {style: {background: x.color}}), h('span.rname', null, x.name), h('span.rval', null, fmtValue(v, this.unit)))),
      rows.length > shown.length ? h('div.muted', null, `and ${rows.length - shown.length} more`) : null);
    this.readout.hidden = false;
    const box = this.el.getBoundingClientRect();
    const x = ev.clientX - box.left;
    const left = x > box.width / 2 ? x - this.readout.offsetWidth - 12 : x + 12;
    this.readout.style.left = Math.max(0, left) + 'px';
    this.readout.style.top = Math.max(0, ev.clientY - box.top - 10) + 'px';
  }

  drawLegend() {
    const items = this.series.slice(0, MAX_LEGEND).map((x) =>
      h('button.item' + (this.hidden.has(x.name) ? '.off' : ''), {
        type: 'button', title: 'show or hide this line',
        onclick: () => {
          if (this.hidden.has(x.name)) this.hidden.delete(x.name);
          else this.hidden.add(x.name);
          this.draw();
        },
      }, h('span.swatch', {style: {background: x.color}}), x.name));
    clear(this.legend, items, this.series.length > MAX_LEGEND ? h('span.muted', null, `and ${this.series.length - MAX_LEGEND} more`) : null,
      this.total > this.series.length ? h('span.muted', null, `(${this.total - this.series.length} more series not drawn: narrow the query)`) : null);
  }
}

// nearest is the point of a time-sorted list closest to t.
export function nearest(points, t) {
  let lo = 0;
  let hi = points.length - 1;
  if (hi < 0) return null;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid][0] < t) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0 && Math.abs(points[lo - 1][0] - t) <= Math.abs(points[lo][0] - t)) return points[lo - 1];
  return points[lo];
}

// niceTicks covers [lo, hi] with about n round steps (1, 2, 2.5, 5 × 10^k).
export function niceTicks(lo, hi, n) {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw) || 10 * mag;
  const first = Math.floor(lo / step + 1e-9) * step;
  const out = [];
  for (let v = first; v < hi + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
  if (out.length < 2) out.push(first + step);
  return out;
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800]
  .map((x) => x * 1000);

// timeTicks are round local times in [start, end], at most n of them.
export function timeTicks(start, end, n) {
  const step = TIME_STEPS.find((x) => (end - start) / x <= n) || TIME_STEPS[TIME_STEPS.length - 1];
  const tz = new Date(start).getTimezoneOffset() * 60000;
  let t = Math.ceil((start - tz) / step) * step + tz;
  if (step >= 86400000) {
    const d = new Date(start);
    d.setHours(0, 0, 0, 0);
    t = d.getTime();
    while (t < start) t += step;
  }
  const out = [];
  for (; t <= end; t += step) out.push(t);
  out.step = step;
  return out;
}
