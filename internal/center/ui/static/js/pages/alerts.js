// Alerts: firing and pending, with their labels, since when, their value,
// and the rule behind each; then every alerting rule and its state.

import {h, clear, labelChips} from '../dom.js';
import {prom} from '../api.js';
import {fmtTime, fmtAgo, fmtSeconds, fmtValue} from '../format.js';
import {chart, fill, section} from './common.js';

const SEV = {critical: 0, warning: 1, info: 2};

function render(ctx) {
  const hist = chart(ctx, {title: 'Active alerts over time', unit: 'none', help: 'ALERTS, counted by alert name and state'});
  const firing = h('div');
  const pending = h('div');
  const rules = h('div');
  ctx.root.append(section('Firing', firing), section('Pending', pending), hist.el, section('Alerting rules', rules));
  return async () => {
    const rulesP = prom.rules('alert', ctx.signal).then((groups) => {
      const all = groups.flatMap((g) => g.rules.map((r) => ({...r, group: g.name, file: g.file})));
      const active = all.flatMap((r) => (r.alerts || []).map((a) => ({...a, rule: r})));
      const sort = (a, b) => (SEV[a.labels.severity] ?? 9) - (SEV[b.labels.severity] ?? 9) ||
        String(a.labels.alertname).localeCompare(String(b.labels.alertname)) || Date.parse(a.activeAt) - Date.parse(b.activeAt);
      fillActive(firing, active.filter((a) => a.state === 'firing').sort(sort), 'No alert is firing.', 'firing');
      fillActive(pending, active.filter((a) => a.state === 'pending').sort(sort), 'No alert is pending.', 'pending');
      fillRules(rules, all);
    }).catch((e) => {
      if (e.name === 'AbortError') return;
      for (const el of [firing, pending, rules]) clear(el, h('div.msg.error', null, e.message));
    });
    await Promise.all([rulesP,
      fill(ctx, hist, [{q: () => 'count by (alertname, alertstate) (ALERTS)', name: (m) => `${m.alertname} (${m.alertstate})`}],
        'no alert was active in this time range')]);
  };
}

function fillActive(el, alerts, none, state) {
  if (!alerts.length) {
    clear(el, h('div.msg.ok', null, none));
    return;
  }
  clear(el, h('table.alerts', {dataset: {state}}, h('thead', null, h('tr', null,
    ['severity', 'alert', 'labels', 'since', 'value', 'summary', 'rule'].map((x) => h('th', null, x)))),
  h('tbody', null, alerts.map((a) => h('tr', null,
    h('td', null, h('span.sev.' + (a.labels.severity in SEV ? a.labels.severity : 'other'), null, a.labels.severity || '–')),
    h('td.name', null, a.labels.alertname),
    h('td', null, labelChips(a.labels, ['alertname', 'severity'])),
    h('td', {title: a.activeAt || ''}, a.activeAt ? [fmtTime(Date.parse(a.activeAt), true, true), h('br'), h('span.muted', null, fmtAgo(Date.parse(a.activeAt)))] : '–'),
    h('td', {title: a.value ?? ''}, a.value === undefined ? '' : fmtValue(Number(a.value), 'none')),
    h('td', null, (a.annotations && a.annotations.summary) || '', a.annotations && a.annotations.description ? h('div.muted.small', null, a.annotations.description) : null),
    h('td', null, ruleDetails(a.rule)))))));
}

function ruleDetails(r) {
  return h('details', null, h('summary', null, r.name),
    h('pre.expr', null, r.query),
    h('div.small', null, `for ${fmtSeconds(r.duration || 0)}`, r.keepFiringFor ? `, keep firing for ${fmtSeconds(r.keepFiringFor)}` : '',
      ` · group ${r.group}`, r.file ? ` · ${r.file}` : ''));
}

function fillRules(el, rules) {
  if (!rules.length) {
    clear(el, h('div.msg.empty', null, 'No alerting rule is loaded.'));
    return;
  }
  const order = {firing: 0, pending: 1, inactive: 2};
  rules.sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3) || a.name.localeCompare(b.name));
  clear(el, h('table.rules', null, h('thead', null, h('tr', null, ['state', 'rule', 'health', 'labels', 'expression'].map((x) => h('th', null, x)))),
    h('tbody', null, rules.map((r) => h('tr', null,
      h('td', null, h('span.state.' + (r.state in order ? r.state : 'other'), null, r.state || '–')),
      h('td', null, r.name, h('div.muted.small', null, r.group)),
      h('td', null, r.health === 'err' ? h('span.badtext', {title: r.lastError || ''}, 'error: ' + (r.lastError || '')) : r.health || ''),
      h('td', null, labelChips(r.labels || {}, [])),
      h('td', null, h('details', null, h('summary', null, 'show'), h('pre.expr', null, r.query))))))));
}

export default {title: 'Alerts', render};
