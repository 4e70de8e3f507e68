// Faults: break the link on purpose and watch imwatch find it. A form to
// inject a fault (kind, instance, hop, share, delay, duration), the faults
// in force with a button to clear each, and the recent ended ones
// (docs/faults.md). The charts of every page shade the same faults.

import {h, clear} from '../dom.js';
import {faults} from '../api.js';
import {fmtTime, fmtAgo} from '../format.js';
import {faultText, section} from './common.js';

const KINDS = {
  drop: 'drop a share of the messages at one hop',
  latency: 'add latency at one hop',
  stop: 'stop the instance, restart it when the fault ends',
  blackhole: 'a gateway takes messages and delivers none',
};
const HOPS = {gateway: ['gateway.receive', 'gateway.push'], logic: ['logic.handle', 'store.append']};

function render(ctx) {
  if (!ctx.features.faults) {
    ctx.root.append(h('div.msg.empty', null,
      'This center takes no faults: the center of imwatch up does, which hands them to its IM (docs/faults.md).'));
    return null;
  }
  const msg = h('div.faultmsg', {role: 'status'});
  const active = h('div.faults-active');
  const past = h('div.faults-past');
  let instances = [];

  const kind = h('select', {name: 'kind', 'aria-label': 'kind'}, Object.entries(KINDS).map(([k, t]) => h('option', {value: k, title: t}, k)));
  const inst = h('select', {name: 'instance', 'aria-label': 'instance'});
  const hop = h('select', {name: 'hop', 'aria-label': 'hop'});
  const percent = h('input', {name: 'percent', type: 'number', min: '1', max: '100', step: 'any', value: '100', 'aria-label': 'percent', size: '4'});
  const delay = h('input', {name: 'delay', type: 'text', value: '1s', 'aria-label': 'delay', size: '5'});
  const duration = h('input', {name: 'duration', type: 'text', value: '2m', 'aria-label': 'duration', size: '5'});
  const field = (label, el, cls) => h('label.field' + (cls ? '.' + cls : ''), null, label + ' ', el);
  const fPercent = field('percent', percent, 'f-percent');
  const fDelay = field('delay', delay, 'f-delay');
  const fHop = field('hop', hop, 'f-hop');

  // Show the fields the kind takes, and the instances and hops that fit it.
  const sync = () => {
    const k = kind.value;
    fPercent.hidden = k !== 'drop';
    fDelay.hidden = k !== 'latency';
    fHop.hidden = k !== 'drop' && k !== 'latency';
    const fit = instances.filter((i) => (i.kinds || []).includes(k));
    const was = inst.value;
    clear(inst, fit.map((i) => h('option', {value: i.name, selected: i.name === was}, `${i.name} (${i.service})`)));
    const svc = (fit.find((i) => i.name === inst.value) || {}).service;
    const hopWas = hop.value;
    clear(hop, (HOPS[svc] || []).map((x) => h('option', {value: x, selected: x === hopWas}, x)));
  };
  kind.addEventListener('change', sync);
  inst.addEventListener('change', sync);

  const form = h('form.faultform', {onsubmit: async (e) => {
    e.preventDefault();
    const spec = {kind: kind.value, instance: inst.value, duration: duration.value.trim()};
    if (!fHop.hidden) spec.hop = hop.value;
    if (!fPercent.hidden) spec.percent = Number(percent.value);
    if (!fDelay.hidden) spec.delay = delay.value.trim();
    try {
      const f = await faults.add(spec, ctx.signal);
      clear(msg, h('span.ok', null, `Fault ${f.id} injected: ${faultText(f)}, until ${fmtTime(Date.parse(f.until), false, true)}.`));
    } catch (err) {
      if (err.name === 'AbortError') return;
      clear(msg, h('span.badtext', null, 'Refused: ' + err.message));
    }
    await refresh();
  }},
  field('kind', kind), field('instance', inst), fHop, fPercent, fDelay, field('for', duration),
  h('button', {type: 'submit'}, 'Inject'));

  ctx.root.append(
    section('Inject a fault', h('p.muted', null, 'The fault ends by itself after its duration (at most 1h), or when you clear it. ' +
      'The probes find it; the Alerts page says what broke, the Probes page links each failed round to its trace.'), form, msg),
    section('Faults in force', active),
    section('Recent faults', past),
  );

  const refresh = async () => {
    let list;
    try {
      list = await faults.list(ctx.signal);
    } catch (e) {
      if (e.name === 'AbortError') return;
      clear(active, h('div.msg.error', null, e.message));
      return;
    }
    instances = list.instances;
    sync();
    const on = list.faults.filter((f) => f.state === 'active');
    const off = list.faults.filter((f) => f.state !== 'active');
    clear(active, on.length ? table(on, true) : h('div.msg.ok', null, 'No fault is in force.'));
    clear(past, off.length ? table(off.slice(0, 50), false) : h('div.msg.empty', null, 'No fault has ended yet.'));
  };

  const table = (list, live) => h('table.faults', null,
    h('thead', null, h('tr', null, ['id', 'fault', 'started', live ? 'ends' : 'ended', live ? 'applied' : 'how', ''].map((x) => h('th', null, x)))),
    h('tbody', null, list.map((f) => h('tr', {dataset: {fault: f.id, instance: f.instance, kind: f.kind}},
      h('td', null, f.id),
      h('td', null, faultText(f)),
      h('td', null, fmtTime(Date.parse(f.start), false, true), ' ', h('span.muted', null, fmtAgo(Date.parse(f.start)))),
      h('td', null, fmtTime(Date.parse(live ? f.until : f.end), false, true)),
      h('td', null, live ? (f.applied ? 'yes' : h('span.muted', null, 'not yet')) : f.state),
      h('td', null, live ? h('button.clear', {type: 'button', onclick: async () => {
        try {
          await faults.clear(f.id, ctx.signal);
          clear(msg, h('span.ok', null, `Fault ${f.id} cleared.`));
        } catch (err) {
          if (err.name === 'AbortError') return;
          clear(msg, h('span.badtext', null, 'Clear failed: ' + err.message));
        }
        await refresh();
      }}, 'Clear') : null)))));

  return refresh;
}

export default {title: 'Faults', render};
