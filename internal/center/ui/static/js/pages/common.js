// What the pages share: charts filled from range queries, PromQL string
// quoting, and instant values.

import {h, labelText} from '../dom.js';
import {prom, matrix, faults} from '../api.js';
import {Chart} from '../chart.js';
import {bucketQuantile} from '../stats.js';

// q quotes a label value for PromQL.
export const q = (v) => JSON.stringify(String(v));

// Probe metrics (issue 6, docs/metrics.md of the probe branch). Each takes
// f(metric name) and gives the selector, so that a rename is one line here.
const one = (a) => (f) => `(${f(a)})`;
export const PROBE = {
  success: one('probe_success'),
  latencyBucket: one('probe_e2e_latency_seconds_bucket'),
};

// chart makes a Chart whose drag sets the page's range.
export function chart(ctx, opts) {
  return new Chart({...opts, onSelect: (a, b) => ctx.setRange(a, b)});
}

// faultText says what a fault of the API does and where: "drop 100% at
// gateway.receive of gw-1".
export function faultText(f) {
  const what = f.kind === 'drop' ? `drop ${f.percent}%` : f.kind === 'latency' ? `latency +${f.delay}` : f.kind;
  return `${what} at ${f.hop ? f.hop + ' of ' : ''}${f.instance}`;
}

// faultBands are the faults of the center (active and recent ended ones) as
// bands for the charts' time axis; one request per page refresh.
export async function faultBands(ctx) {
  if (!ctx.features.faults) return [];
  const now = Date.now();
  if (!ctx.faultCache || now - ctx.faultCache.at > 2000) {
    ctx.faultCache = {at: now, p: faults.list(ctx.signal).then((x) => x.faults).catch((e) => {
      if (e.name === 'AbortError') throw e;
      return [];
    })};
  }
  const list = await ctx.faultCache.p;
  return list.map((f) => ({
    start: Date.parse(f.start),
    end: f.state === 'active' ? Math.min(now, Date.parse(f.until)) : Date.parse(f.end),
    active: f.state === 'active',
    label: `fault ${f.id}: ${faultText(f)} (${f.state})`,
  }));
}

// fill runs the range queries of specs [{q: (r) => promql, name: (metric) => legend}]
// and draws their series in c. Errors show in the chart, as text.
export async function fill(ctx, c, specs, emptyText) {
  const r = ctx.range();
  try {
    const results = await Promise.all(specs.map((sp) => prom.range(sp.q(r), r.start, r.end, r.step, ctx.signal)));
    const series = results.flatMap((res, i) => matrix(res, (m) => {
      const n = specs[i].name ? specs[i].name(m) : undefined;
      return n === undefined || n === null || n === '' ? labelText(m) : String(n);
    }));
    c.bands = await faultBands(ctx);
    c.setData(series, r, emptyText);
  } catch (e) {
    if (e.name === 'AbortError') return;
    c.setMessage(e.message, 'error');
  }
}

// instant runs an instant query at the end of the page's range and returns
// its result vector ([] on error, with the error in onError).
export async function instant(ctx, query, onError) {
  try {
    const d = await prom.query(query, ctx.range().live ? undefined : ctx.range().end, ctx.signal);
    return d.result || [];
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    if (onError) onError(e);
    return [];
  }
}

export function grid(...kids) {
  return h('div.grid', null, kids);
}

export function section(title, ...kids) {
  return h('section.block', null, h('h2', null, title), kids);
}

// fillQuantiles draws quantiles qs of the classic histograms that query(r)
// returns as buckets (a "sum by (..., le) (rate(..._bucket[w]))"): one
// query for every quantile, computed here as histogram_quantile would.
export async function fillQuantiles(ctx, c, query, qs, name, emptyText) {
  const r = ctx.range();
  try {
    const res = await prom.range(query(r), r.start, r.end, r.step, ctx.signal);
    const groups = new Map();
    for (const x of res) {
      const {le, ...rest} = x.metric;
      const key = labelText(rest);
      if (!groups.has(key)) groups.set(key, {metric: rest, byTime: new Map()});
      const g = groups.get(key);
      const bound = le === '+Inf' ? Infinity : Number(le);
      for (const [t, v] of x.values || []) {
        if (!g.byTime.has(t)) g.byTime.set(t, []);
        g.byTime.get(t).push([bound, Number(v)]);
      }
    }
    const series = [];
    for (const q of qs) {
      for (const g of groups.values()) {
        const times = [...g.byTime.keys()].sort((a, b) => a - b);
        series.push({name: name(g.metric, q), labels: g.metric,
          points: times.map((t) => [t * 1000, bucketQuantile(q, g.byTime.get(t))])});
      }
    }
    c.bands = await faultBands(ctx);
    c.setData(series, r, emptyText);
  } catch (e) {
    if (e.name === 'AbortError') return;
    c.setMessage(e.message, 'error');
  }
}
