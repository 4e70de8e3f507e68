// Traces: search by message id, user, service, operation, duration and
// error; the waterfall of one trace with each hop's service, instance,
// offset and duration, its attributes, events and links (to fan-out
// traces), spans whose parent never arrived, and untraced gaps marked.

import {h, clear} from '../dom.js';
import {searchTraces, getTrace} from '../api.js';
import {fmtTime, fmtMs, parseDuration} from '../format.js';

const FIELDS = [
  ['msg_id', 'message id', 22], ['user', 'user', 12], ['service', 'service', 12],
  ['operation', 'operation', 16], ['min_duration', 'min duration', 8],
];

function render(ctx) {
  if (!ctx.features.traces) {
    ctx.root.append(h('div.msg.empty', null, 'No trace store yet: this center does not receive spans, so there are no traces to search.'));
    return null;
  }
  if (ctx.rest.length) return renderTrace(ctx, ctx.rest[0]);
  return renderSearch(ctx);
}

function renderSearch(ctx) {
  const p = ctx.params;
  const form = h('form.search', {onsubmit: (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const params = {};
    for (const [k] of FIELDS) params[k] = String(f.get(k) || '').trim();
    params.error = f.get('error') ? 'true' : '';
    params.limit = f.get('limit');
    params.search = '1';
    ctx.go(ctx.href('traces', params));
  }},
  FIELDS.map(([k, label, size]) => h('label', null, label + ' ', h('input', {name: k, value: p.get(k) || '', size, placeholder: k === 'min_duration' ? '100ms' : ''}))),
  h('label', null, h('input', {type: 'checkbox', name: 'error', checked: p.get('error') === 'true'}), ' errors only'),
  h('label', null, 'limit ', h('input', {name: 'limit', type: 'number', min: 1, max: 1000, value: p.get('limit') || 50, size: 4})),
  h('button', {type: 'submit'}, 'search'));
  const results = h('div.results');
  ctx.root.append(form, results);
  if (!p.get('search')) {
    results.append(h('p.muted', null, 'Search the traces of the time range: a message id finds the trace of that message.'));
    return null;
  }
  return async () => {
    const r = ctx.range();
    const md = p.get('min_duration');
    if (md && !(parseDuration(md) >= 0)) {
      clear(results, h('div.msg.error', null, `min duration "${md}": write a duration such as 250ms, 2s or 1m`));
      return;
    }
    let found;
    try {
      const params = {start: new Date(r.start).toISOString(), end: new Date(r.end).toISOString(), limit: p.get('limit') || 50, error: p.get('error')};
      for (const [k] of FIELDS) params[k] = p.get(k);
      found = await searchTraces(params, ctx.signal);
    } catch (e) {
      if (e.name === 'AbortError') return;
      clear(results, h('div.msg.error', null, e.message));
      return;
    }
    if (!found.length) {
      clear(results, h('div.msg.empty', null, 'No trace matches in this time range.'));
      return;
    }
    if (found.length === 1 && p.get('msg_id')) {
      // One message, one trace: open it.
      location.replace(ctx.href('traces/' + encodeURIComponent(found[0].trace_id)));
      return;
    }
    clear(results, h('table.traces', null,
      h('thead', null, h('tr', null, ['start', 'trace', 'root', 'service', 'duration', 'spans', 'state'].map((x) => h('th', null, x)))),
      h('tbody', null, found.map((t) => {
        const s = summary(t);
        return h('tr', null,
          h('td', null, Number.isFinite(s.start) ? fmtTime(s.start, true, true) : '–'),
          h('td', null, h('a.tracelink', {href: ctx.href('traces/' + encodeURIComponent(t.trace_id))}, t.trace_id)),
          h('td', null, s.name), h('td', null, s.service), h('td', null, fmtMs(s.duration)),
          h('td', null, String(s.spans ?? (t.spans || []).length)),
          h('td', null, s.error ? h('span.badge.bad', null, 'error') : null, t.broken ? h('span.badge.warn', null, 'broken') : null));
      }))));
  };
}

// summary reads a trace's root summary (docs/center.md: name, service,
// start, duration_ms, span_count, error), or works it out from its spans.
export function summary(t) {
  const spans = t.spans || [];
  const root = t.root || spans.find((x) => !x.parent_span_id) || spans[0] || {};
  const starts = spans.map((x) => Date.parse(x.start)).filter(Number.isFinite);
  const ends = spans.map((x) => Date.parse(x.start) + (x.duration_ms || 0)).filter(Number.isFinite);
  const start = root.start ? Date.parse(root.start) : Math.min(...starts);
  const duration = root.duration_ms ?? (ends.length ? Math.max(...ends) - Math.min(...starts) : NaN);
  return {
    name: root.name || '?', service: root.service || '?', start, duration,
    error: root.error === true || root.status === 'error' || spans.some((x) => x.status === 'error'), spans: root.span_count,
  };
}

function renderTrace(ctx, id) {
  const head = h('div.tracehead', null, h('a', {href: ctx.href('traces', {}, true)}, '← search'), ' ', h('span.mono', null, id));
  const body = h('div.waterfall-box');
  ctx.root.append(head, body);
  return async () => {
    let t;
    try {
      t = await getTrace(id, ctx.signal);
    } catch (e) {
      if (e.name === 'AbortError') return;
      clear(body, h('div.msg.error', null, e.status === 404 ? `No trace ${id} in the trace store.` : e.message));
      return;
    }
    if (!t) {
      clear(body, h('div.msg.empty', null, `No trace ${id} in the trace store.`));
      return;
    }
    clear(body, waterfall(ctx, t));
  };
}

// order lists the spans depth first, children by start time, with their
// depth; spans whose parent is not in the trace start their own subtree.
export function order(spans) {
  const ids = new Set(spans.map((x) => x.span_id));
  const kids = new Map();
  const roots = [];
  for (const x of spans) {
    if (x.parent_span_id && ids.has(x.parent_span_id) && x.parent_span_id !== x.span_id) {
      if (!kids.has(x.parent_span_id)) kids.set(x.parent_span_id, []);
      kids.get(x.parent_span_id).push(x);
    } else {
      roots.push(x);
    }
  }
  const byStart = (a, b) => Date.parse(a.start) - Date.parse(b.start);
  const out = [];
  const seen = new Set();
  const walk = (x, depth) => {
    if (seen.has(x.span_id)) return;
    seen.add(x.span_id);
    out.push({span: x, depth});
    for (const c of (kids.get(x.span_id) || []).sort(byStart)) walk(c, depth + 1);
  };
  for (const r of roots.sort(byStart)) walk(r, 0);
  return out;
}

function waterfall(ctx, t) {
  const spans = t.spans || [];
  if (!spans.length) return h('div.msg.empty', null, 'This trace has no spans.');
  const t0 = Math.min(...spans.map((x) => Date.parse(x.start)));
  const tEnd = Math.max(...spans.map((x) => Date.parse(x.start) + (x.duration_ms || 0)),
    ...(t.gaps || []).map((g) => Date.parse(g.start) + (g.duration_ms || 0)));
  const total = Math.max(tEnd - t0, 0.001);
  const pct = (ms) => (100 * ms / total).toFixed(3) + '%';
  const rows = [];
  const gapsBefore = new Map();
  for (const g of t.gaps || []) {
    const k = g.before_span_id || '';
    if (!gapsBefore.has(k)) gapsBefore.set(k, []);
    gapsBefore.get(k).push(g);
  }
  const gapRow = (g, depth) => h('div.wrow.gap', {dataset: {gap: '1'}},
    h('div.wname', {style: {paddingLeft: depth * 14 + 'px'}}, 'untraced hop'),
    h('div.wsvc.muted', null, 'not instrumented'), h('div.winst', null, ''),
    h('div.woff', null, fmtMs(Date.parse(g.start) - t0)),
    h('div.wbar', null, h('span.bar.gapbar', {style: {left: pct(Date.parse(g.start) - t0), width: pct(Math.max(g.duration_ms || 0, total / 500))}})),
    h('div.wdur', null, fmtMs(g.duration_ms || 0)));
  for (const {span: x, depth} of order(spans)) {
    for (const g of gapsBefore.get(x.span_id) || []) rows.push(gapRow(g, depth));
    const off = Date.parse(x.start) - t0;
    const details = h('div.wdetails', {hidden: true}, spanDetails(ctx, x, t0));
    const err = x.status === 'error';
    const row = h('div.wrow' + (err ? '.err' : '') + (x.missing_parent ? '.orphan' : ''), {
      tabindex: 0, role: 'button', dataset: {span: x.span_id},
      onclick: () => { details.hidden = !details.hidden; },
      onkeydown: (e) => { if (e.key === 'Enter') details.hidden = !details.hidden; },
    },
    h('div.wname', {style: {paddingLeft: depth * 14 + 'px'}, title: x.name}, x.name,
      x.missing_parent ? h('span.badge.warn', {title: 'its parent span ' + (x.parent_span_id || '') + ' never arrived'}, 'parent missing') : null,
      err ? h('span.badge.bad', null, 'error') : null),
    h('div.wsvc', null, x.service || ''), h('div.winst', null, x.instance || ''),
    h('div.woff', null, fmtMs(off)),
    h('div.wbar', null, h('span.bar' + (err ? '.errbar' : ''), {style: {left: pct(off), width: pct(Math.max(x.duration_ms || 0, total / 500))}})),
    h('div.wdur', null, fmtMs(x.duration_ms || 0)));
    rows.push(row, details);
  }
  for (const g of gapsBefore.get('') || []) rows.push(gapRow(g, 0));
  const s = summary(t);
  const services = [...new Set(spans.map((x) => x.service).filter(Boolean))];
  return h('div', null,
    h('div.tracesum', null,
      h('span', null, h('b', null, s.name), ` · ${services.join(', ')} · ${spans.length} spans · ${fmtMs(total)} · started ${fmtTime(t0, true, true)}`),
      s.error ? h('span.badge.bad', null, 'error') : null,
      t.broken ? h('span.badge.warn', {title: 'a span lost its parent, or a hop left no span'}, 'broken') : null,
      (t.gaps || []).length ? h('span.badge.warn', null, `${t.gaps.length} untraced gap(s)`) : null,
      t.truncated ? h('span.badge.warn', {title: 'the trace has more spans than the API gives; these are the earliest'}, 'truncated') : null),
    h('div.waterfall', null,
      h('div.wrow.whead', null, ['hop', 'service', 'instance', 'offset', '', 'duration'].map((x) => h('div', null, x))),
      rows));
}

function kv(obj) {
  const keys = Object.keys(obj || {}).sort();
  if (!keys.length) return h('span.muted', null, 'none');
  return h('table.kv', null, h('tbody', null, keys.map((k) => h('tr', null, h('td.k', null, k),
    h('td.v', null, typeof obj[k] === 'object' ? JSON.stringify(obj[k]) : String(obj[k]))))));
}

function spanDetails(ctx, x, t0) {
  return [
    h('div.small', null, `span ${x.span_id}`, x.parent_span_id ? ` · parent ${x.parent_span_id}` : ' · root',
      x.kind ? ` · kind ${x.kind}` : '', ` · status ${x.status || 'unset'}`, x.status_message ? `: ${x.status_message}` : ''),
    h('h4', null, 'Attributes'), kv(x.attributes),
    (x.events || []).length ? [h('h4', null, 'Events'), h('table.kv', null, h('tbody', null, x.events.map((e) => h('tr', null,
      h('td.k', null, e.time ? '+' + fmtMs(Date.parse(e.time) - t0) : ''), h('td', null, e.name || ''), h('td', null, kv(e.attributes))))))] : null,
    (x.links || []).length ? [h('h4', null, 'Links'), h('ul.links', null, x.links.map((l) => h('li', null,
      h('a.tracelink', {href: ctx.href('traces/' + encodeURIComponent(l.trace_id))}, l.trace_id), ` span ${l.span_id || ''} `, kv(l.attributes))))] : null,
  ];
}

export default {title: 'Traces', render};
