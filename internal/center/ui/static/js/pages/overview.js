// Overview: is the link up? Probe availability and end-to-end latency per
// target and location, message throughput and error ratio, firing alerts,
// and the service graph.

import {h, clear, labelChips} from '../dom.js';
import {prom, faults} from '../api.js';
import {fmtValue, fmtAgo, promDuration} from '../format.js';
import {drawGraph} from '../graph.js';
import {chart, fill, fillQuantiles, instant, grid, section, faultText, PROBE} from './common.js';

const where = (m) => `${m.target || '?'} from ${m.location || '?'}`;

function render(ctx) {
  const cards = h('div.cards');
  const avail = chart(ctx, {title: 'Probe availability by target and location', unit: 'percent', yMax: 1,
    help: 'share of probe rounds that succeeded'});
  const plat = chart(ctx, {title: 'Probe end-to-end latency p50 / p99', unit: 'seconds',
    help: 'probe message: send to delivery back to the probe account'});
  const e2e = chart(ctx, {title: 'Message end-to-end latency p50 / p99', unit: 'seconds',
    help: 'imwatch_im_e2e_duration_seconds: sender gateway read to the recipient device\'s ack'});
  const thr = chart(ctx, {title: 'Message throughput by stage', unit: 'msg/s', help: 'imwatch_im_messages_total'});
  const err = chart(ctx, {title: 'Error ratio by service', unit: 'percent', help: 'imwatch_im_failures_total / imwatch_im_requests_total'});
  const alertBox = h('div.alerts-mini');
  const faultBox = h('div.faults-mini');
  const graphBox = h('div.graphbox');
  ctx.root.append(
    cards,
    grid(avail.el, plat.el, thr.el, err.el, e2e.el),
    ctx.features.faults ? section('Faults in force', faultBox) : null,
    section('Firing alerts', alertBox),
    section('Service graph', h('p.muted', null, 'From the spans the center receives: requests per second, p99 latency and failed share of each edge over the time range.'), graphBox),
  );
  const noProbe = 'no probe results in this time range: no prober reports to this center';
  return async () => {
    await Promise.all([
      fill(ctx, avail, [{q: (r) => `avg by (target, location) ${PROBE.success((m) => `avg_over_time(${m}[${r.w}])`)}`, name: where}], noProbe),
      fillQuantiles(ctx, plat, (r) => `sum by (target, location, le) ${PROBE.latencyBucket((m) => `rate(${m}[${r.w}])`)}`,
        [0.5, 0.99], (m, p) => `p${p * 100} ${where(m)}`, noProbe),
      fillQuantiles(ctx, e2e, (r) => `sum by (le) (rate(imwatch_im_e2e_duration_seconds_bucket[${r.w}]))`,
        [0.5, 0.99], (m, p) => `p${p * 100}`, 'no message was acknowledged end to end in this time range'),
      fill(ctx, thr, [{q: (r) => `sum by (stage) (rate(imwatch_im_messages_total[${r.w}]))`, name: (m) => m.stage}]),
      fill(ctx, err, [{
        q: (r) => `(sum by (service) (rate(imwatch_im_failures_total[${r.w}])) or 0 * sum by (service) (rate(imwatch_im_requests_total[${r.w}])))` +
          ` / sum by (service) (rate(imwatch_im_requests_total[${r.w}]))`,
        name: (m) => m.service,
      }], 'no requests in this time range'),
      fillCards(ctx, cards),
      fillAlerts(ctx, alertBox),
      ctx.features.faults ? fillFaults(ctx, faultBox) : null,
      fillGraph(ctx, graphBox),
    ]);
  };
}

async function fillCards(ctx, el) {
  const one = async (query) => {
    const r = await instant(ctx, query);
    return r.length ? Number(r[0].value[1]) : NaN;
  };
  const [avail, rate, errs, up, targets] = await Promise.all([
    one(`min(avg by (target, location) ${PROBE.success((m) => `avg_over_time(${m}[5m])`)})`),
    one('sum(rate(imwatch_im_messages_total{stage="sent"}[1m]))'),
    one('(sum(rate(imwatch_im_failures_total[5m])) or 0 * sum(rate(imwatch_im_requests_total[5m]))) / sum(rate(imwatch_im_requests_total[5m]))'),
    one('count(up == 1)'),
    one('count(up)'),
  ]);
  const card = (label, value, cls) => h('div.card' + (cls ? '.' + cls : ''), null, h('div.label', null, label), h('div.value', null, value));
  clear(el,
    card('Worst probe availability (5m)', Number.isNaN(avail) ? 'no probes' : fmtValue(avail, 'percent'), avail < 0.9 ? 'bad' : avail < 0.99 ? 'warn' : ''),
    card('Messages sent now', fmtValue(Number.isNaN(rate) ? 0 : rate, 'msg/s')),
    card('Error ratio (5m)', Number.isNaN(errs) ? '–' : fmtValue(errs, 'percent'), errs > 0.05 ? 'bad' : errs > 0.01 ? 'warn' : ''),
    card('Targets up', Number.isNaN(targets) ? 'none' : `${Number.isNaN(up) ? 0 : up} of ${targets}`, up < targets || Number.isNaN(up) ? 'bad' : ''),
  );
}

async function fillAlerts(ctx, el) {
  let alerts;
  try {
    alerts = (await prom.alerts(ctx.signal)).filter((a) => a.state === 'firing');
  } catch (e) {
    if (e.name === 'AbortError') return;
    clear(el, h('div.msg.error', null, e.message));
    return;
  }
  if (!alerts.length) {
    clear(el, h('div.msg.ok', null, 'No alert is firing.'));
    return;
  }
  const rank = {critical: 0, warning: 1};
  alerts.sort((a, b) => (rank[a.labels.severity] ?? 2) - (rank[b.labels.severity] ?? 2) || a.labels.alertname.localeCompare(b.labels.alertname));
  clear(el, h('ul.alertlist', null, alerts.slice(0, 10).map((a) => h('li', null,
    h('span.sev.' + (a.labels.severity === 'critical' ? 'critical' : 'warning'), null, a.labels.severity || 'alert'), ' ',
    h('a', {href: ctx.href('alerts')}, a.labels.alertname), ' ',
    h('span.muted', null, a.activeAt ? 'since ' + fmtAgo(Date.parse(a.activeAt)) : ''), ' ',
    h('span', null, (a.annotations && a.annotations.summary) || ''), ' ',
    labelChips(a.labels, ['alertname', 'severity'])))),
  alerts.length > 10 ? h('a', {href: ctx.href('alerts')}, `and ${alerts.length - 10} more`) : null);
}

async function fillFaults(ctx, el) {
  let list;
  try {
    list = (await faults.list(ctx.signal)).faults.filter((f) => f.state === 'active');
  } catch (e) {
    if (e.name === 'AbortError') return;
    clear(el, h('div.msg.error', null, e.message));
    return;
  }
  const link = h('a', {href: ctx.href('faults')}, list.length ? 'Faults page' : 'Inject one on the Faults page');
  if (!list.length) {
    clear(el, h('div.msg.ok', null, 'No fault is in force. ', link));
    return;
  }
  clear(el, h('ul.alertlist', null, list.map((f) => h('li', {dataset: {fault: f.id}},
    h('span.badge.fault', null, 'fault'), ' ', h('b', null, f.id), ' ', faultText(f), ' ',
    h('span.muted', null, 'since ' + fmtAgo(Date.parse(f.start)) + (f.applied ? '' : ', not applied yet'))))), link);
}

async function fillGraph(ctx, el) {
  const r = ctx.range();
  const win = promDuration(r.end - r.start);
  const by = 'client, server, connection_type';
  const [rates, failed, p99] = await Promise.all([
    instant(ctx, `sum by (${by}) (rate(imwatch_service_graph_requests_total[${win}]))`, (e) => clear(el, h('div.msg.error', null, e.message))),
    instant(ctx, `sum by (${by}) (rate(imwatch_service_graph_request_failed_total[${win}]))`),
    instant(ctx, `histogram_quantile(0.99, sum by (${by}, le) (rate(imwatch_service_graph_request_duration_seconds_bucket[${win}])))`),
  ]);
  if (!rates.length) {
    clear(el, h('div.msg.empty', null, ctx.features.traces
      ? 'No spans in this time range, so no service graph.'
      : 'No trace store yet: this center does not receive spans, so there is no service graph.'));
    el.dataset.edges = '0';
    return;
  }
  const key = (m) => `${m.client}\u0000${m.server}\u0000${m.connection_type}`;
  const fmap = new Map(failed.map((x) => [key(x.metric), Number(x.value[1])]));
  const pmap = new Map(p99.map((x) => [key(x.metric), Number(x.value[1])]));
  drawGraph(el, rates.map((x) => ({
    client: x.metric.client || '?', server: x.metric.server || '?', connection_type: x.metric.connection_type || '',
    rate: Number(x.value[1]), failed: fmap.get(key(x.metric)) || 0, p99: pmap.get(key(x.metric)) ?? NaN,
  })));
}

export default {title: 'Overview', render};
