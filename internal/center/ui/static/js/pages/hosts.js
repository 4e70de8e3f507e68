// Hosts: per host, CPU, memory, load, disk IO, network bandwidth and
// packets per second, swap; from imwatch agent (node_exporter's names).

import {h, clear} from '../dom.js';
import {prom} from '../api.js';
import {fmtValue} from '../format.js';
import {chart, fill, instant, q, grid} from './common.js';

function render(ctx) {
  const list = h('div.hostlist');
  const body = h('div');
  ctx.root.append(list, body);
  let built = null;
  return async () => {
    const r = ctx.range();
    let hosts;
    try {
      hosts = (await prom.labelValues('instance', ['node_cpu_seconds_total'], r.start, r.end, ctx.signal)).sort();
    } catch (e) {
      if (e.name === 'AbortError') return;
      clear(body, h('div.msg.error', null, e.message));
      return;
    }
    if (!hosts.length) {
      clear(list);
      clear(body, h('div.msg.empty', null, 'No host reported system metrics (node_cpu_seconds_total) in this time range: is an imwatch agent scraped?'));
      built = null;
      return;
    }
    const host = hosts.includes(ctx.params.get('host')) ? ctx.params.get('host') : hosts[0];
    if (!built || built.host !== host) built = build(ctx, body, host);
    await Promise.all([fillList(ctx, list, hosts, host), ...built.refresh.map((f) => f())]);
  };
}

function build(ctx, body, host) {
  const i = `instance=${q(host)}`;
  const c = {
    cpu: chart(ctx, {title: 'CPU busy by mode', unit: 'percent', help: 'share of all CPUs of the host'}),
    mem: chart(ctx, {title: 'Memory', unit: 'bytes'}),
    load: chart(ctx, {title: 'Load average', unit: 'threads'}),
    disk: chart(ctx, {title: 'Disk IO', unit: 'bytes/s'}),
    net: chart(ctx, {title: 'Network bandwidth', unit: 'bits/s'}),
    pps: chart(ctx, {title: 'Network packets', unit: 'pkt/s'}),
    swap: chart(ctx, {title: 'Swap used', unit: 'bytes'}),
    swapio: chart(ctx, {title: 'Swapping', unit: 'pages/s'}),
  };
  clear(body, h('h2', null, host), grid(...Object.values(c).map((x) => x.el)));
  const dir = (m, a) => `${a} ${m.device || ''}`.trim();
  const refresh = [
    () => fill(ctx, c.cpu, [{
      q: (r) => `sum by (mode) (rate(node_cpu_seconds_total{${i},mode!="idle"}[${r.w}])) / scalar(count(node_cpu_seconds_total{${i},mode="idle"}))`,
      name: (m) => m.mode,
    }]),
    () => fill(ctx, c.mem, [
      {q: () => `node_memory_MemTotal_bytes{${i}} - node_memory_MemAvailable_bytes{${i}}`, name: () => 'used'},
      {q: () => `node_memory_MemAvailable_bytes{${i}}`, name: () => 'available'},
      {q: () => `node_memory_Cached_bytes{${i}}`, name: () => 'page cache'},
    ]),
    () => fill(ctx, c.load, [1, 5, 15].map((n) => ({q: () => `node_load${n}{${i}}`, name: () => `${n} min`}))),
    () => fill(ctx, c.disk, [
      {q: (r) => `sum by (device) (rate(node_disk_read_bytes_total{${i}}[${r.w}]))`, name: (m) => dir(m, 'read')},
      {q: (r) => `sum by (device) (rate(node_disk_written_bytes_total{${i}}[${r.w}]))`, name: (m) => dir(m, 'written')},
    ]),
    () => fill(ctx, c.net, [
      {q: (r) => `8 * sum by (device) (rate(node_network_receive_bytes_total{${i}}[${r.w}]))`, name: (m) => dir(m, 'in')},
      {q: (r) => `8 * sum by (device) (rate(node_network_transmit_bytes_total{${i}}[${r.w}]))`, name: (m) => dir(m, 'out')},
    ]),
    () => fill(ctx, c.pps, [
      {q: (r) => `sum by (device) (rate(node_network_receive_packets_total{${i}}[${r.w}]))`, name: (m) => dir(m, 'in')},
      {q: (r) => `sum by (device) (rate(node_network_transmit_packets_total{${i}}[${r.w}]))`, name: (m) => dir(m, 'out')},
    ]),
    () => fill(ctx, c.swap, [
      {q: () => `node_memory_SwapTotal_bytes{${i}} - node_memory_SwapFree_bytes{${i}}`, name: () => 'used'},
      {q: () => `node_memory_SwapTotal_bytes{${i}}`, name: () => 'total'},
    ]),
    () => fill(ctx, c.swapio, [
      {q: (r) => `rate(node_vmstat_pswpin{${i}}[${r.w}])`, name: () => 'in'},
      {q: (r) => `rate(node_vmstat_pswpout{${i}}[${r.w}])`, name: () => 'out'},
    ]),
  ];
  return {host, refresh};
}

// fillList is a table of every host with its state now; a row picks the host.
async function fillList(ctx, el, hosts, current) {
  const val = async (query) => Object.fromEntries((await instant(ctx, query)).map((x) => [x.metric.instance, Number(x.value[1])]));
  const [cpu, mem, load, ncpu] = await Promise.all([
    val('1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[1m]))'),
    val('1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes'),
    val('node_load1'),
    val('count by (instance) (node_cpu_seconds_total{mode="idle"})'),
  ]);
  clear(el, h('table.hosts', null,
    h('thead', null, h('tr', null, ['host', 'CPUs', 'CPU busy (1m)', 'memory used', 'load 1m'].map((x) => h('th', null, x)))),
    h('tbody', null, hosts.map((host) => h('tr' + (host === current ? '.current' : ''), null,
      h('td', null, h('a', {href: ctx.href('hosts', {host})}, host)),
      h('td', null, fmtValue(ncpu[host], 'none')),
      h('td' + (cpu[host] > 0.9 ? '.badtext' : ''), null, fmtValue(cpu[host], 'percent')),
      h('td' + (mem[host] > 0.9 ? '.badtext' : ''), null, fmtValue(mem[host], 'percent')),
      h('td', null, fmtValue(load[host], 'none')))))));
}

export default {title: 'Hosts', render};
