// The service graph: services as boxes in columns (callers left of the
// services they call), each edge labelled with its rate, p99 latency and
// failed share.

import {h, s, clear} from './dom.js';
import {fmtValue} from './format.js';

// layers puts each node one column right of its furthest caller, after
// cutting the edges that close a cycle (found depth first, from the nodes
// nobody calls, then from the others in name order): requests flow left to
// right, answers and loops go back underneath.
export function layers(nodes, edges) {
  const out = new Map(nodes.map((n) => [n, []]));
  const indeg = new Map(nodes.map((n) => [n, 0]));
  for (const e of edges) {
    if (e.client === e.server) continue;
    out.get(e.client).push(e.server);
    indeg.set(e.server, indeg.get(e.server) + 1);
  }
  const state = new Map(); // 1: on the path, 2: done
  const forward = new Set();
  const visit = (n) => {
    state.set(n, 1);
    for (const m of out.get(n)) {
      if (state.get(m) === 1) continue; // closes a cycle: cut
      forward.add(n + '\u0000' + m);
      if (!state.has(m)) visit(m);
    }
    state.set(n, 2);
  };
  const roots = [...nodes.filter((n) => indeg.get(n) === 0), ...nodes.filter((n) => indeg.get(n) > 0)];
  for (const n of roots) if (!state.has(n)) visit(n);
  const layer = Object.fromEntries(nodes.map((n) => [n, 0]));
  for (let i = 0; i < nodes.length; i++) { // longest path in the acyclic rest
    let moved = false;
    for (const k of forward) {
      const [a, b] = k.split('\u0000');
      if (layer[b] < layer[a] + 1) {
        layer[b] = layer[a] + 1;
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
  const CW = 290;
  const RH = 90;
  const maxLayer = Math.max(...Object.values(layer));
  const nrows = Math.max(...Object.values(cols).map((c) => c.length));
  const W = 40 + maxLayer * CW + NW + 60;
  const H = 30 + nrows * RH + 70;
  const pos = {};
  for (const [c, ns] of Object.entries(cols)) {
    ns.forEach((n, i) => {
      pos[n] = {x: 40 + Number(c) * CW, y: 20 + i * RH + (nrows - ns.length) * RH / 2};
    });
  }
  const svg = s('svg.graph', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img'},
    s('defs', null, s('marker', {id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse'},
      s('path', {d: 'M0 0 L10 5 L0 10 z', fill: '#667'}))));
  const labels = s('g');
  for (const e of edges) {
    const a = pos[e.client];
    const b = pos[e.server];
    let pts;
    if (e.client === e.server) {
      pts = [[a.x + NW - 20, a.y], [a.x + NW + 40, a.y - 40], [a.x + NW + 40, a.y + NH + 40], [a.x + NW - 20, a.y + NH]];
    } else if (layer[e.server] > layer[e.client]) {
      const [x1, y1, x2, y2] = [a.x + NW, a.y + NH / 2 - 5, b.x, b.y + NH / 2 - 5];
      pts = [[x1, y1], [(x1 + x2) / 2, y1], [(x1 + x2) / 2, y2], [x2, y2]];
    } else { // back, or within a column: underneath
      const [x1, y1, x2, y2] = [a.x + NW / 2 - 10, a.y + NH, b.x + NW / 2 + 10, b.y + NH];
      const dip = 45 + 10 * Math.abs(layer[e.client] - layer[e.server]);
      pts = [[x1, y1], [x1, Math.max(y1, y2) + dip], [x2, Math.max(y1, y2) + dip], [x2, y2]];
    }
    const d = `M${pts[0]} C${pts[1]} ${pts[2]} ${pts[3]}`;
    // The curve's middle (t = 1/2 of the cubic).
    const mx = (pts[0][0] + 3 * pts[1][0] + 3 * pts[2][0] + pts[3][0]) / 8;
    const my = (pts[0][1] + 3 * pts[1][1] + 3 * pts[2][1] + pts[3][1]) / 8;
    const bad = e.rate > 0 && e.failed / e.rate > 0.01;
    svg.append(s('path.edge' + (e.connection_type === 'messaging' ? '.messaging' : '') + (bad ? '.bad' : ''),
      {d, 'marker-end': 'url(#arrow)', 'data-edge': `${e.client} -> ${e.server}`}));
    labels.append(s('text.elabel', {x: mx, y: my - 8, 'text-anchor': 'middle'},
      s('tspan', {x: mx, dy: 0}, fmtValue(e.rate, '/s')),
      s('tspan', {x: mx, dy: 12}, `p99 ${fmtValue(e.p99, 'seconds')}` + (e.rate > 0 ? ` · ${fmtValue(e.failed / e.rate, 'percent')} failed` : ''))));
  }
  for (const n of nodes) {
    const p = pos[n];
    svg.append(s('g.node', null, s('rect', {x: p.x, y: p.y, width: NW, height: NH, rx: 6}),
      s('text', {x: p.x + NW / 2, y: p.y + NH / 2 + 4, 'text-anchor': 'middle'}, n.length > 22 ? n.slice(0, 21) + '…' : n,
        s('title', null, n))));
  }
  svg.append(labels); // over the edges and boxes
  clear(el, svg, h('div.legend', null, h('span.item', null, '── rpc'), h('span.item', null, '- - messaging (over the bus)'),
    h('span.item.badtext', null, 'red: more than 1% failed')));
  el.dataset.edges = String(edges.length);
}
