// The service graph: services as boxes in columns (callers left of the
// services they call), each edge labelled with its rate, p99 latency and
// failed share.

import {h, s, clear} from './dom.js';
import {fmtValue} from './format.js';

// layers puts each node one column right of its furthest caller; cycles are
// cut after as many rounds as there are nodes.
export function layers(nodes, edges) {
  const layer = Object.fromEntries(nodes.map((n) => [n, 0]));
  for (let i = 0; i < nodes.length; i++) {
    let moved = false;
    for (const e of edges) {
      if (e.client !== e.server && layer[e.server] < layer[e.client] + 1 && layer[e.client] + 1 < nodes.length) {
        layer[e.server] = layer[e.client] + 1;
        moved = true;
      }
    }
    if (!moved) break;
  }
  return layer;
}

// drawGraph fills el with the graph of edges [{client, server, connection_type,
// rate, failed, p99}].
export function drawGraph(el, edges) {
  const nodes = [...new Set(edges.flatMap((e) => [e.client, e.server]))].sort();
  const layer = layers(nodes, edges);
  const cols = {};
  for (const n of nodes) (cols[layer[n]] ||= []).push(n);
  const NW = 150;
  const NH = 34;
  const CW = 300;
  const RH = 80;
  const ncols = Object.keys(cols).length;
  const nrows = Math.max(...Object.values(cols).map((c) => c.length));
  const W = 40 + (ncols - 1) * CW + NW + 40;
  const H = 30 + nrows * RH;
  const pos = {};
  for (const [c, ns] of Object.entries(cols)) {
    ns.forEach((n, i) => {
      pos[n] = {x: 40 + Number(c) * CW, y: 20 + i * RH + (nrows - ns.length) * RH / 2};
    });
  }
  const svg = s('svg.graph', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img'},
    s('defs', null, s('marker', {id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse'},
      s('path', {d: 'M0 0 L10 5 L0 10 z', fill: '#667'}))));
  for (const e of edges) {
    const a = pos[e.client];
    const b = pos[e.server];
    let d;
    let lx;
    let ly;
    if (e.client === e.server) {
      d = `M${a.x + NW - 20} ${a.y} C${a.x + NW + 30} ${a.y - 40}, ${a.x + NW + 30} ${a.y + NH + 40}, ${a.x + NW - 20} ${a.y + NH}`;
      lx = a.x + NW + 34;
      ly = a.y + NH / 2;
    } else {
      const x1 = a.x + NW;
      const y1 = a.y + NH / 2;
      const x2 = b.x;
      const y2 = b.y + NH / 2;
      const back = x2 <= x1;
      d = back ? `M${a.x} ${y1} C${a.x - 60} ${y1 + 60}, ${b.x + NW + 60} ${y2 + 60}, ${b.x + NW} ${y2}`
        : `M${x1} ${y1} C${(x1 + x2) / 2} ${y1}, ${(x1 + x2) / 2} ${y2}, ${x2} ${y2}`;
      lx = (x1 + x2) / 2;
      ly = (y1 + y2) / 2 - 6;
    }
    const bad = e.rate > 0 && e.failed / e.rate > 0.01;
    svg.append(s('path.edge' + (e.connection_type === 'messaging' ? '.messaging' : '') + (bad ? '.bad' : ''), {d, 'marker-end': 'url(#arrow)'}));
    svg.append(s('text.elabel', {x: lx, y: ly, 'text-anchor': 'middle'},
      `${fmtValue(e.rate, '/s')} · p99 ${fmtValue(e.p99, 'seconds')}` + (e.rate > 0 ? ` · ${fmtValue(e.failed / e.rate, 'percent')} failed` : '')));
  }
  for (const n of nodes) {
    const p = pos[n];
    svg.append(s('g.node', null, s('rect', {x: p.x, y: p.y, width: NW, height: NH, rx: 6}),
      s('text', {x: p.x + NW / 2, y: p.y + NH / 2 + 4, 'text-anchor': 'middle'}, n.length > 22 ? n.slice(0, 21) + '…' : n,
        s('title', null, n))));
  }
  clear(el, svg, h('div.legend', null, h('span.item', null, '── rpc'), h('span.item', null, '- - messaging (over the bus)'),
    h('span.item.badtext', null, 'red: more than 1% failed')));
  el.dataset.edges = String(edges.length);
}
