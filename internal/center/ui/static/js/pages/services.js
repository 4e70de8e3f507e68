// Services: per service, rate, errors and duration for the cluster and for
// each instance side by side, and a table of the instances with the one
// that stands out from its peers marked (stats.js, docs/ui.md).

import {h, clear} from '../dom.js';
import {prom, faults} from '../api.js';
import {fmtValue} from '../format.js';
import {outliers, MIN_PEERS, K} from '../stats.js';
import {chart, fill, instant, q, section, faultText} from './common.js';

const REQ = 'imwatch_im_requests_total';
const FAIL = 'imwatch_im_failures_total';
const DUR = 'imwatch_im_stage_duration_seconds_bucket';

// errRatio is failures over requests by `by`, 0 where there are requests
// and no failure series yet.
const errRatio = (sel, by, w) =>
  `(sum by (${by}) (rate(${FAIL}{${sel}}[${w}])) or 0 * sum by (${by}) (rate(${REQ}{${sel}}[${w}]))) / sum by (${by}) (rate(${REQ}{${sel}}[${w}]))`;

function render(ctx) {
  const body = h('div');
  const pick = h('div.toolbar');
  ctx.root.append(pick, body);
  const only = ctx.params.get('service') || '';
  let built = null; // the blocks, made once the services are known

  return async () => {
    const r = ctx.range();
    let names;
    try {
      names = await prom.labelValues('service', [REQ], r.start, r.end, ctx.signal);
    } catch (e) {
      if (e.name === 'AbortError') return;
      clear(body, h('div.msg.error', null, e.message));
      return;
    }
    let spanNames = [];
    if (ctx.features.traces) {
      spanNames = await prom.labelValues('service', ['imwatch_span_calls_total'], r.start, r.end, ctx.signal).catch((e) => {
        if (e.name === 'AbortError') throw e;
        return [];
      });
    }
    if (!built || built.key !== names.join() + '|' + spanNames.join()) {
      built = build(ctx, body, pick, names, spanNames, only);
    }
    await Promise.all(built.refresh.map((f) => f()));
  };
}

function build(ctx, body, pick, names, spanNames, only) {
  clear(pick, h('label', null, 'Service ', h('select', {
    onchange: (e) => ctx.go(ctx.href('services', {service: e.target.value})),
  }, h('option', {value: ''}, 'all'), [...new Set([...names, ...spanNames])].sort().map((n) => h('option', {value: n, selected: n === only}, n)))));
  const refresh = [];
  clear(body);
  if (!names.length && !spanNames.length) {
    body.append(h('div.msg.empty', null, 'No service reported the IM metric set (imwatch_im_requests_total) in this time range.'));
    return {key: names.join() + '|' + spanNames.join(), refresh};
  }
  for (const svc of names.filter((n) => !only || n === only)) {
    const sel = `service=${q(svc)}`;
    const table = h('div.instances');
    const mk = (title, unit, extra) => chart(ctx, {title, unit, ...extra});
    const c = {
      rate: mk('Requests, cluster, by operation', 'req/s'), rateI: mk('Requests per instance', 'req/s'),
      err: mk('Error ratio, cluster, by operation', 'percent'), errI: mk('Error ratio per instance', 'percent'),
      dur: mk('Stage duration p99, cluster', 'seconds'), durI: mk('Stage duration p99 per instance', 'seconds'),
    };
    body.append(section(svc, table,
      h('div.pair', null, c.rate.el, c.rateI.el), h('div.pair', null, c.err.el, c.errI.el), h('div.pair', null, c.dur.el, c.durI.el)));
    refresh.push(() => fill(ctx, c.rate, [{q: (r) => `sum by (operation) (rate(${REQ}{${sel}}[${r.w}]))`, name: (m) => m.operation}]));
    refresh.push(() => fill(ctx, c.rateI, [{q: (r) => `sum by (instance) (rate(${REQ}{${sel}}[${r.w}]))`, name: (m) => m.instance}]));
    refresh.push(() => fill(ctx, c.err, [{q: (r) => errRatio(sel, 'operation', r.w), name: (m) => m.operation}], 'no requests in this time range'));
    refresh.push(() => fill(ctx, c.errI, [{q: (r) => errRatio(sel, 'instance', r.w), name: (m) => m.instance}], 'no requests in this time range'));
    refresh.push(() => fill(ctx, c.dur, [{q: (r) => `histogram_quantile(0.99, sum by (stage, le) (rate(${DUR}{${sel}}[${r.w}])))`, name: (m) => m.stage}],
      'no stage timed in this time range'));
    refresh.push(() => fill(ctx, c.durI, [{q: (r) => `histogram_quantile(0.99, sum by (instance, stage, le) (rate(${DUR}{${sel}}[${r.w}])))`,
      name: (m) => [m.instance, m.stage].filter(Boolean).join(' ')}], 'no stage timed in this time range'));
    refresh.push(() => fillInstances(ctx, table, svc));
  }
  for (const svc of spanNames.filter((n) => (!only || n === only))) {
    const sel = `service=${q(svc)}`;
    const calls = chart(ctx, {title: 'Span calls by operation', unit: '/s'});
    const errs = chart(ctx, {title: 'Span error ratio by operation', unit: 'percent'});
    const p99 = chart(ctx, {title: 'Span duration p99 by operation', unit: 'seconds'});
    body.append(section(svc + ' (from spans)', h('div.grid', null, calls.el, errs.el, p99.el)));
    refresh.push(() => fill(ctx, calls, [{q: (r) => `sum by (operation) (rate(imwatch_span_calls_total{${sel}}[${r.w}]))`, name: (m) => m.operation}]));
    refresh.push(() => fill(ctx, errs, [{
      q: (r) => `sum by (operation) (rate(imwatch_span_calls_total{${sel},status="error"}[${r.w}])) / sum by (operation) (rate(imwatch_span_calls_total{${sel}}[${r.w}]))`,
      name: (m) => m.operation,
    }], 'no span errors in this time range'));
    refresh.push(() => fill(ctx, p99, [{
      q: (r) => `histogram_quantile(0.99, sum by (operation, le) (rate(imwatch_span_duration_seconds_bucket{${sel}}[${r.w}])))`,
      name: (m) => m.operation,
    }]));
  }
  return {key: names.join() + '|' + spanNames.join(), refresh};
}

// fillInstances lists the instances of svc with their rate, error ratio
// and p99 over the last 5 minutes of the range, outliers marked.
async function fillInstances(ctx, el, svc) {
  const sel = `service=${q(svc)}`;
  let failed = null;
  const onErr = (e) => { failed = e; };
  const [rate, errs, p99, up, atFault] = await Promise.all([
    instant(ctx, `sum by (instance) (rate(${REQ}{${sel}}[5m]))`, onErr),
    instant(ctx, errRatio(sel, 'instance', '5m'), onErr),
    instant(ctx, `histogram_quantile(0.99, sum by (instance, le) (rate(${DUR}{${sel}}[5m])))`, onErr),
    instant(ctx, `max by (instance) (up and on (instance) group by (instance) (${REQ}{${sel}}))`, onErr),
    blame(ctx),
  ]);
  if (failed) {
    clear(el, h('div.msg.error', null, failed.message));
    return;
  }
  const val = (vec) => Object.fromEntries(vec.map((x) => [x.metric.instance, Number(x.value[1])]));
  const m = {rate: val(rate), errors: val(errs), p99: val(p99)};
  const upv = val(up);
  const insts = [...new Set([...Object.keys(m.rate), ...Object.keys(upv)])].sort();
  const marks = {rate: outliers(m.rate, 'rate'), errors: outliers(m.errors, 'errors'), p99: outliers(m.p99, 'p99')};
  const units = {rate: 'req/s', errors: 'percent', p99: 'seconds'};
  const cell = (measure, inst) => {
    const v = m[measure][inst];
    const o = marks[measure][inst];
    return h('td' + (o ? '.outlier' : ''), o ? {
      title: `stands out: ${fmtValue(v, units[measure])} is ${o.dir === 'high' ? 'above' : 'below'} ${fmtValue(o.limit, units[measure])}` +
        ` (median of ${insts.length} instances ${fmtValue(o.median, units[measure])}, ${K} robust deviations)`,
      dataset: {outlier: measure},
    } : null, fmtValue(v, units[measure]), o ? (o.dir === 'high' ? ' ▲' : ' ▼') : '');
  };
  const rows = insts.map((inst) => {
    const marked = ['rate', 'errors', 'p99'].some((x) => marks[x][inst]);
    const why = atFault.get(inst) || [];
    return h('tr' + (marked ? '.marked' : '') + (why.length ? '.atfault' : ''), why.length ? {dataset: {atfault: why.map((w) => w.text).join('; ')}} : null,
      h('td', null, inst, marked ? h('span.badge.bad', null, 'stands out') : null,
        why.map((w) => h('span.badge.' + w.cls, {title: w.title}, w.text))),
      h('td', null, upv[inst] === 1 ? 'up' : upv[inst] === 0 ? h('span.badtext', null, 'down') : '–'),
      cell('rate', inst), cell('errors', inst), cell('p99', inst));
  });
  clear(el, h('table.inst', null,
    h('thead', null, h('tr', null, ['instance', 'scrape', 'requests (5m)', 'error ratio (5m)', 'p99 stage duration (5m)'].map((x) => h('th', null, x)))),
    h('tbody', null, rows)),
  h('p.muted.small', null, insts.length < MIN_PEERS
    ? `${insts.length} instance(s): at least ${MIN_PEERS} are needed to tell one that stands out from its peers.`
    : `Marked ▲▼: more than ${K} robust deviations (1.4826 × MAD) from the median of the service's instances, and past a floor (docs/ui.md).`));
}

// blame maps instance names to why they are at fault: an active fault that
// names the instance, or a firing alert whose instance label is it
// (docs/ui.md). The outlier marks need 3 instances; these need none.
async function blame(ctx) {
  const out = new Map();
  const add = (inst, w) => {
    if (!out.has(inst)) out.set(inst, []);
    out.get(inst).push(w);
  };
  const [list, alerts] = await Promise.all([
    ctx.features.faults ? faults.list(ctx.signal).then((x) => x.faults).catch((e) => { if (e.name === 'AbortError') throw e; return []; }) : [],
    prom.alerts(ctx.signal).catch((e) => { if (e.name === 'AbortError') throw e; return []; }),
  ]);
  for (const f of list) {
    if (f.state === 'active') add(f.instance, {cls: 'fault', text: 'fault ' + f.id, title: 'injected: ' + faultText(f)});
  }
  for (const a of alerts) {
    if (a.state === 'firing' && a.labels && a.labels.instance) {
      add(a.labels.instance, {cls: 'bad', text: 'alert ' + a.labels.alertname, title: (a.annotations && a.annotations.summary) || a.labels.alertname});
    }
  }
  return out;
}

export default {title: 'Services', render};
