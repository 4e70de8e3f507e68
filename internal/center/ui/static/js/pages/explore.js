// Explore: a PromQL box; the expression drawn over the page's time range
// and its value at the range's end as a table.

import {h, clear, labelChips} from '../dom.js';
import {prom, matrix} from '../api.js';
import {fmtTime} from '../format.js';
import {chart} from './common.js';

const EXAMPLES = [
  'sum by (service, operation) (rate(imwatch_im_requests_total[5m]))',
  'histogram_quantile(0.99, sum by (le) (rate(imwatch_im_e2e_duration_seconds_bucket[5m])))',
  '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[1m]))',
  'up',
];

// The chart and the table ask the center for at most this many series.
const CHART_LIMIT = 200;
const TABLE_LIMIT = 1000;

function render(ctx) {
  const expr = ctx.params.get('q') || '';
  const box = h('textarea.promql', {name: 'q', rows: 3, spellcheck: 'false', placeholder: 'PromQL, e.g. ' + EXAMPLES[0], 'aria-label': 'PromQL expression'});
  box.value = expr;
  const run = () => ctx.go(ctx.href('explore', {q: box.value.trim()}));
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.shiftKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });
  const names = h('datalist', {id: 'metric-names'});
  const pick = h('input', {list: 'metric-names', placeholder: 'insert a metric name', size: 30, 'aria-label': 'metric name',
    onchange: (e) => {
      const v = e.target.value;
      if (!v) return;
      const at = box.selectionStart ?? box.value.length;
      box.value = box.value.slice(0, at) + v + box.value.slice(box.selectionEnd ?? at);
      e.target.value = '';
      box.focus();
    }});
  const form = h('form.explore', {onsubmit: (e) => { e.preventDefault(); run(); }},
    box, h('div.toolbar', null, h('button', {type: 'submit'}, 'run'), h('span.muted.small', null, ' Ctrl+Enter runs it '), pick, names));
  const c = chart(ctx, {title: expr || 'no expression', unit: 'none'});
  const tbl = h('div.result');
  ctx.root.append(form);
  prom.labelValues('__name__', undefined, undefined, undefined, ctx.signal)
    .then((vals) => names.append(...vals.map((v) => h('option', {value: v}))))
    .catch(() => {});
  if (!expr) {
    ctx.root.append(h('div.examples', null, h('p.muted', null, 'Examples:'),
      h('ul', null, EXAMPLES.map((x) => h('li', null, h('a.mono', {href: ctx.href('explore', {q: x})}, x))))));
    return null;
  }
  ctx.root.append(c.el, tbl);
  return async () => {
    const r = ctx.range();
    const [rangeRes, inst] = await Promise.allSettled([
      prom.range(expr, r.start, r.end, r.step, ctx.signal, CHART_LIMIT),
      prom.query(expr, r.live ? undefined : r.end, ctx.signal, TABLE_LIMIT),
    ]);
    for (const x of [rangeRes, inst]) if (x.status === 'rejected' && x.reason.name === 'AbortError') return;
    if (rangeRes.status === 'fulfilled') {
      c.setData(matrix(rangeRes.value, (m) => legend(m)), r, 'the expression has no value in this time range');
    } else {
      c.setMessage(rangeRes.reason.message, 'error');
    }
    if (inst.status === 'rejected') {
      clear(tbl, h('div.msg.error', {role: 'alert'}, inst.reason.message));
      return;
    }
    clear(tbl, resultTable(inst.value));
  };
}

function legend(m) {
  const keys = Object.keys(m).filter((k) => k !== '__name__').sort();
  const inner = keys.map((k) => `${k}="${m[k]}"`).join(', ');
  return (m.__name__ || '') + (inner ? `{${inner}}` : m.__name__ ? '' : '{}');
}

function resultTable(d) {
  const t = d.resultType;
  if (t === 'scalar' || t === 'string') {
    return h('table.resulttable', null, h('tbody', null, h('tr', null, h('td', null, t), h('td.num', null, String(d.result[1])))));
  }
  if (!d.result.length) return h('div.msg.empty', null, 'Empty result: no series matches at the end of the time range.');
  const rows = d.result.map((x) => h('tr', null,
    h('td', null, x.metric.__name__ ? h('span.metricname', null, x.metric.__name__) : null, labelChips(x.metric, ['__name__'])),
    h('td.num', null, t === 'matrix'
      ? x.values.map(([ts, v]) => `${v} @${fmtTime(ts * 1000, false, true)}`).join('\n')
      : x.value ? x.value[1] : (x.histogram ? 'native histogram' : ''))));
  return h('div', null, h('p.muted.small', null, `${d.result.length} series (${t})`,
    d.result.length >= TABLE_LIMIT ? ` — the first ${TABLE_LIMIT}: narrow the query to see the rest` : ''),
    h('table.resulttable', null, h('thead', null, h('tr', null, h('th', null, 'series'), h('th', null, 'value'))), h('tbody', null, rows)));
}

export default {title: 'Explore', render};
