// Probes: per target and location, rounds over time, availability and
// latency, failures by reason, and the list of recent failures, each linked
// to its probe message's trace.

import {h, clear} from '../dom.js';
import {probeFailures} from '../api.js';
import {fmtTime} from '../format.js';
import {chart, fill, fillQuantiles, q, grid, section, PROBE} from './common.js';

const where = (m) => `${m.target || '?'} from ${m.location || '?'}`;

function render(ctx) {
  const target = ctx.params.get('target') || '';
  const location = ctx.params.get('location') || '';
  const sel = [target && `target=${q(target)}`, location && `location=${q(location)}`].filter(Boolean).join(',');
  const avail = chart(ctx, {title: 'Availability', unit: 'percent', yMax: 1});
  const rounds = chart(ctx, {title: 'Probe messages', unit: 'msg/s', help: 'sent, received and lost per second'});
  const lat = chart(ctx, {title: 'End-to-end latency p50 / p99', unit: 'seconds'});
  const reasons = chart(ctx, {title: 'Failed rounds by reason', unit: '/s'});
  const steps = chart(ctx, {title: 'Step duration p99', unit: 'seconds', help: 'connect, login, send → server ack, send → receipt'});
  const oddities = chart(ctx, {title: 'Duplicated, reordered and late messages', unit: 'msg/s'});
  const list = h('div.failures');
  const filters = h('form.toolbar', {onsubmit: (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    ctx.go(ctx.href('probes', {target: f.get('target'), location: f.get('location')}));
  }}, h('label', null, 'target ', h('input', {name: 'target', value: target, size: 14})),
  h('label', null, 'location ', h('input', {name: 'location', value: location, size: 14})),
  h('button', {type: 'submit'}, 'filter'));
  ctx.root.append(filters, grid(avail.el, rounds.el, lat.el, reasons.el, steps.el, oddities.el), section('Recent failures', list));
  const none = 'no probe results in this time range: no prober reports to this center';
  return async () => {
    await Promise.all([
      fill(ctx, avail, [{q: (r) => `avg by (target, location) ${PROBE.success((m) => `avg_over_time(${m}{${sel}}[${r.w}])`)}`, name: where}], none),
      fill(ctx, rounds, ['sent', 'received', 'lost'].map((k) => ({
        q: (r) => `sum by (target, location) (rate(probe_messages_${k}_total{${sel}}[${r.w}]))`,
        name: (m) => `${k} ${where(m)}`,
      })), none),
      fillQuantiles(ctx, lat, (r) => `sum by (target, location, le) ${PROBE.latencyBucket((m) => `rate(${m}{${sel}}[${r.w}])`)}`,
        [0.5, 0.99], (m, p) => `p${p * 100} ${where(m)}`, none),
      fill(ctx, reasons, [{q: (r) => `sum by (reason) (rate(probe_failures_total{${sel}}[${r.w}]))`, name: (m) => m.reason}],
        'no failed probe round in this time range'),
      fill(ctx, steps, [{
        q: (r) => `histogram_quantile(0.99, sum by (step, le) (rate(probe_step_duration_seconds_bucket{${sel}}[${r.w}])))`,
        name: (m) => m.step,
      }], none),
      fill(ctx, oddities, ['duplicated', 'reordered', 'late'].map((k) => ({
        q: (r) => `sum by (target, location) (rate(probe_messages_${k}_total{${sel}}[${r.w}]))`,
        name: (m) => `${k} ${where(m)}`,
      })), none),
      fillFailures(ctx, list, target, location),
    ]);
  };
}

async function fillFailures(ctx, el, target, location) {
  if (!ctx.features.probe_failures) {
    clear(el, h('div.msg.empty', null, 'No trace store yet: this center cannot list probe failures (they are read from the trace store).'));
    return;
  }
  let fails;
  try {
    fails = await probeFailures({target, location, limit: 100}, ctx.signal);
  } catch (e) {
    if (e.name === 'AbortError') return;
    clear(el, h('div.msg.error', null, e.message));
    return;
  }
  if (!fails.length) {
    clear(el, h('div.msg.ok', null, 'No failed probe round recorded.'));
    return;
  }
  clear(el, h('table.failtable', null,
    h('thead', null, h('tr', null, ['time', 'target', 'protocol', 'location', 'reason', 'message', 'trace'].map((x) => h('th', null, x)))),
    h('tbody', null, fails.map((f) => h('tr', null,
      h('td', null, f.time ? fmtTime(Date.parse(f.time), true, true) : '–'),
      h('td', null, f.target || ''), h('td', null, f.protocol || ''), h('td', null, f.location || ''),
      h('td', null, h('span.badge.bad', null, f.reason || '?')), h('td', null, f.message || ''),
      h('td', null, f.trace_id ? h('a.tracelink', {href: ctx.href('traces/' + encodeURIComponent(f.trace_id))}, f.trace_id.slice(0, 16) + '…') : '–'))))));
}

export default {title: 'Probes', render};
