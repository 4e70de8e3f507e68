// DOM helpers. Everything from the center (labels, span attributes, rule
// text) goes into the page as text nodes or attribute values, never as HTML:
// no page hands a string to the HTML parser.

const SVG = 'http://www.w3.org/2000/svg';

// h('div.card.wide', {title: 'x', onclick: f}, 'text', child, [more]) builds
// an HTML element. Strings and numbers become text nodes.
export function h(tag, props, ...kids) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name || 'div');
  if (classes.length) el.classList.add(...classes);
  setProps(el, props);
  append(el, kids);
  return el;
}

// s('path', {d: 'M0 0'}) builds an SVG element.
export function s(tag, attrs, ...kids) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElementNS(SVG, name);
  if (classes.length) el.classList.add(...classes);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  append(el, kids);
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'style') {
      Object.assign(el.style, v); // CSSOM: allowed by the CSP, unlike a style attribute
    } else if (k === 'class') {
      el.classList.add(...String(v).split(/\s+/).filter(Boolean));
    } else if (k === 'value' || k === 'checked' || k === 'selected' || k === 'disabled' || k === 'hidden') {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
}

export function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

// clear empties el and appends kids.
export function clear(el, ...kids) {
  el.replaceChildren();
  return append(el, kids);
}

// labelText renders a label set as {a="1", b="2"}, for legends and tables.
export function labelText(metric, skip = []) {
  const keys = Object.keys(metric || {}).filter((k) => k !== '__name__' && !skip.includes(k)).sort();
  const inner = keys.map((k) => `${k}="${metric[k]}"`).join(', ');
  const name = skip.includes('__name__') ? '' : (metric?.__name__ || '');
  return inner ? `${name}{${inner}}` : name || '{}';
}

// labelChips shows a label set as one chip per label.
export function labelChips(metric, skip = []) {
  return h('span.chips', null, Object.keys(metric || {}).filter((k) => !skip.includes(k)).sort()
    .map((k) => h('span.chip', null, h('span.k', null, k), '=', h('span.v', null, metric[k]))));
}

// table builds a table from column headers and rows of cells (text or nodes).
export function table(headers, rows, cls = '') {
  return h('table' + (cls ? '.' + cls : ''), null,
    h('thead', null, h('tr', null, headers.map((c) => h('th', null, c)))),
    h('tbody', null, rows.map((r) => (r instanceof Node ? r : h('tr', null, r.map((c) => h('td', null, c)))))));
}

// message is a placeholder in place of data: "no data", an error, ...
export function message(text, kind = 'empty') {
  return h('div.msg.' + kind, {role: kind === 'error' ? 'alert' : undefined}, text);
}
