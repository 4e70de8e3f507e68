// The rule that marks an instance standing out from its peers (docs/ui.md).
//
// Among the instances of one service (at least MIN_PEERS, the instance
// itself included), a value x is an outlier when it is more than K robust
// standard deviations from the peers' median, a robust standard deviation
// being 1.4826 × MAD (median absolute deviation; equal to the standard
// deviation for normal data, but one bad instance barely moves it), and also
// further from the median than the measure's floor, so that identical peers
// (MAD = 0) do not turn noise into marks. The same rule as the default
// alerts IMInstanceErrorRatioOutlier and IMInstanceLatencyOutlier.

export const K = 3;
export const MIN_PEERS = 3;

// The measures and the side on which an instance can stand out. The rate
// goes both ways: an instance with far fewer requests than its peers (lost
// its clients, out of the balancer) stands out as much as one with far more.
export const MEASURES = {
  rate: {side: 'both', floor: (med) => 0.2 * Math.abs(med) + 0.05},   // 20% of the median, and 0.05/s
  errors: {side: 'high', floor: () => 0.02},                           // 2 percentage points
  p99: {side: 'high', floor: (med) => 0.5 * Math.abs(med) + 0.005},    // 1.5 × median + 5 ms
};

export function median(xs) {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

export function mad(xs, med = median(xs)) {
  return median(xs.filter(Number.isFinite).map((x) => Math.abs(x - med)));
}

// outliers takes {instance: value} and a measure name; it returns
// {instance: {value, median, limit, dir}} for each instance marked, where
// dir is 'high' or 'low'.
export function outliers(values, measure) {
  const m = MEASURES[measure];
  if (!m) throw new Error('unknown measure ' + measure);
  const xs = Object.values(values).filter(Number.isFinite);
  const out = {};
  if (xs.length < MIN_PEERS) return out;
  const med = median(xs);
  const dev = Math.max(K * 1.4826 * mad(xs, med), m.floor(med));
  for (const [inst, x] of Object.entries(values)) {
    if (!Number.isFinite(x)) continue;
    if (m.side !== 'low' && x > med + dev) out[inst] = {value: x, median: med, limit: med + dev, dir: 'high'};
    else if (m.side === 'both' && x < med - dev) out[inst] = {value: x, median: med, limit: med - dev, dir: 'low'};
  }
  return out;
}

// bucketQuantile is Prometheus's histogram_quantile for one classic
// histogram: buckets [[le, cumulative count]], +Inf included. Linear
// interpolation within the bucket; the lowest bucket starts at 0 (when its
// bound is positive); a rank in the +Inf bucket gives the highest finite
// bound. NaN without observations.
export function bucketQuantile(q, buckets) {
  const b = buckets.filter(([le, c]) => !Number.isNaN(le) && Number.isFinite(c)).sort((x, y) => x[0] - y[0]);
  if (b.length < 2 || b[b.length - 1][0] !== Infinity) return NaN;
  if (q < 0) return -Infinity;
  if (q > 1) return Infinity;
  // Counts can dip from rate() noise; make them monotonic as Prometheus does.
  for (let i = 1; i < b.length; i++) if (b[i][1] < b[i - 1][1]) b[i][1] = b[i - 1][1];
  const total = b[b.length - 1][1];
  if (!(total > 0)) return NaN;
  const rank = q * total;
  let i = b.findIndex(([, c]) => c >= rank);
  if (i === b.length - 1) return b[b.length - 2][0];
  if (i === 0 && b[0][0] <= 0) return b[0][0];
  let lo = 0;
  let below = 0;
  if (i > 0) {
    lo = b[i - 1][0];
    below = b[i - 1][1];
  }
  const hi = b[i][0];
  const inBucket = b[i][1] - below;
  return inBucket > 0 ? lo + (hi - lo) * ((rank - below) / inBucket) : lo;
}
