// Calls to the center's APIs: the Prometheus-compatible /api/v1/*, the
// trace API and the probe failures. Errors come back as APIError with the
// center's own message; a missing bearer token as status 401.

const TOKEN_KEY = 'imwatch.token';

export class APIError extends Error {
  constructor(message, status, type) {
    super(message);
    this.name = 'APIError';
    this.status = status;
    this.type = type || '';
  }
}

export function setToken(tok) {
  if (tok) sessionStorage.setItem(TOKEN_KEY, tok);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '' || v === false) continue;
    for (const one of Array.isArray(v) ? v : [v]) u.searchParams.append(k, String(one));
  }
  return u;
}

// getJSON fetches path and decodes its JSON; an aborted request rejects with
// the AbortError, which callers drop.
export async function getJSON(path, params, signal) {
  const headers = {Accept: 'application/json'};
  const tok = sessionStorage.getItem(TOKEN_KEY);
  if (tok) headers.Authorization = 'Bearer ' + tok;
  let resp;
  try {
    resp = await fetch(url(path, params), {headers, signal});
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new APIError(`cannot reach the center (${e.message})`, 0);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    if (e.name === 'AbortError') throw e;
  }
  if (!resp.ok || (body && body.status === 'error')) {
    const msg = (body && body.error) || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401) window.dispatchEvent(new CustomEvent('imwatch:unauthorized'));
    throw new APIError(msg, resp.status, body && body.errorType);
  }
  return body;
}

const sec = (ms) => (ms / 1000).toFixed(3);

// Prometheus-compatible API. Times are milliseconds since the epoch.
export const prom = {
  // limit: at most this many series (the center's limit parameter).
  async query(q, time, signal, limit) {
    return (await getJSON('/api/v1/query', {query: q, time: time ? sec(time) : undefined, limit}, signal)).data;
  },
  async range(q, start, end, stepMs, signal, limit) {
    const body = await getJSON('/api/v1/query_range', {query: q, start: sec(start), end: sec(end), step: stepMs / 1000, limit}, signal);
    return body.data.result;
  },
  async series(match, start, end, signal) {
    return (await getJSON('/api/v1/series', {'match[]': match, start: start && sec(start), end: end && sec(end)}, signal)).data;
  },
  async labelValues(name, match, start, end, signal) {
    return (await getJSON(`/api/v1/label/${encodeURIComponent(name)}/values`,
      {'match[]': match, start: start && sec(start), end: end && sec(end)}, signal)).data;
  },
  async rules(type, signal) {
    return (await getJSON('/api/v1/rules', {type}, signal)).data.groups;
  },
  async alerts(signal) {
    return (await getJSON('/api/v1/alerts', null, signal)).data.alerts;
  },
};

// Trace API (docs/center.md). Only called when /ui/features.json says the
// center has it.
export async function searchTraces(params, signal) {
  return (await getJSON('/api/traces', params, signal)).traces || [];
}

export async function getTrace(id, signal) {
  const body = await getJSON('/api/traces/' + encodeURIComponent(id), null, signal);
  return (body.traces || [])[0] || null;
}

export async function probeFailures(params, signal) {
  return (await getJSON('/api/probes/failures', params, signal)).failures || [];
}

// sendJSON sends method with a JSON body (or none) and decodes the answer,
// as getJSON does.
async function sendJSON(method, path, body, signal) {
  const headers = {Accept: 'application/json'};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const tok = sessionStorage.getItem(TOKEN_KEY);
  if (tok) headers.Authorization = 'Bearer ' + tok;
  let resp;
  try {
    resp = await fetch(url(path), {method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal});
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new APIError(`cannot reach the center (${e.message})`, 0);
  }
  let out = null;
  try {
    out = await resp.json();
  } catch (e) {
    if (e.name === 'AbortError') throw e;
  }
  if (!resp.ok || (out && out.status === 'error')) {
    if (resp.status === 401) window.dispatchEvent(new CustomEvent('imwatch:unauthorized'));
    throw new APIError((out && out.error) || `${resp.status} ${resp.statusText}`, resp.status, out && out.errorType);
  }
  return out;
}

// Fault API (docs/center.md, Faults). Only called when /ui/features.json
// says the center takes faults.
export const faults = {
  // list: {faults: [...], instances: [...]}, active ones first, then the
  // recent ended ones.
  async list(signal) {
    const body = await getJSON('/api/faults', {state: 'all'}, signal);
    return {faults: body.faults || [], instances: body.instances || []};
  },
  async add(spec, signal) {
    return (await sendJSON('POST', '/api/faults', spec, signal)).fault;
  },
  async clear(id, signal) {
    return (await sendJSON('DELETE', '/api/faults/' + encodeURIComponent(id), undefined, signal)).fault;
  },
};

export async function features(signal) {
  return getJSON('/ui/features.json', null, signal);
}

// matrix turns a range query's result into chart series; value strings
// "NaN", "+Inf" become numbers, gaps stay gaps.
export function matrix(result, name) {
  return result.map((r) => ({
    name: name(r.metric),
    labels: r.metric,
    points: (r.values || []).map(([t, v]) => [t * 1000, Number(v)]), // native histograms: not drawn
  }));
}

// first is the value of an instant vector's first sample, or NaN.
export function first(data) {
  const r = data && data.result;
  if (!r || !r.length) return NaN;
  return Number(r[0].value[1]);
}
