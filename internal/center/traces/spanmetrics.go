package traces

import (
	"context"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// Metric names the center derives from spans (CONTRACTS.md).
const (
	MetricSpanCalls     = "imwatch_span_calls_total"
	MetricSpanDuration  = "imwatch_span_duration_seconds"
	MetricGraphRequests = "imwatch_service_graph_requests_total"
	MetricGraphFailed   = "imwatch_service_graph_request_failed_total"
	MetricGraphDuration = "imwatch_service_graph_request_duration_seconds"
	MetricBroken        = "imwatch_traces_broken_total"
)

// DurationBuckets are the upper bounds, in seconds, of the span and edge
// duration histograms.
var DurationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// maxLabelValue bounds a label value taken from a span (a service or an
// operation name); a longer one is cut.
const maxLabelValue = 200

// pairTTL is how long one side of a service-graph edge waits for the other.
const pairTTL = 30 * time.Second

// maxPending bounds the edges waiting for their other side.
const maxPending = 200_000

// SpanMetrics turns spans into counters and histograms (per operation, and
// per edge of the service graph) and writes them into the center's TSDB
// every interval, so that PromQL sees them. The distinct label sets of each
// metric are capped; spans beyond the cap are counted, not turned into
// new series.
type SpanMetrics struct {
	app       storage.AppendableV2
	interval  time.Duration
	maxSeries int
	log       *slog.Logger

	mu      sync.Mutex
	calls   map[callKey]*series
	durs    map[opKey]*histSeries
	edges   map[edgeKey]*edgeSeries
	broken  map[string]*series
	pending map[pairKey]*pairing

	dropped   *prometheus.CounterVec
	unpaired  *prometheus.CounterVec
	flushErrs prometheus.Counter

	stop chan struct{}
	done chan struct{}
}

type callKey struct {
	service, op string
	err         bool
}

type opKey struct{ service, op string }

type edgeKey struct{ client, server, conn string }

type pairKey struct {
	trace TraceID
	span  SpanID // the client's or producer's span
}

type side struct {
	service    string
	kind       tracepb.Span_SpanKind
	start, end int64
	err        bool
}

type pairing struct {
	parent, child *side
	expires       int64
}

type series struct {
	ls  labels.Labels
	ref storage.SeriesRef
	v   float64
}

type histSeries struct {
	counts  []uint64 // per bucket, not cumulative; the last is +Inf
	sum     float64
	count   uint64
	buckets []series // cumulative, +Inf last
	sumS    series
	countS  series
}

type edgeSeries struct {
	requests, failed series
	dur              *histSeries
}

// NewSpanMetrics makes the span metrics writing into app every interval.
func NewSpanMetrics(app storage.AppendableV2, interval time.Duration, maxSeries int, reg prometheus.Registerer, log *slog.Logger) *SpanMetrics {
	m := &SpanMetrics{
		app: app, interval: interval, maxSeries: maxSeries, log: log,
		calls: map[callKey]*series{}, durs: map[opKey]*histSeries{}, edges: map[edgeKey]*edgeSeries{},
		broken: map[string]*series{}, pending: map[pairKey]*pairing{},
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_span_metrics_dropped_total",
			Help: "Span observations not turned into span metrics because the metric has metrics_max_series label sets already, by metric.",
		}, []string{"metric"}),
		unpaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_service_graph_unpaired_total",
			Help: "Client or producer spans whose server or consumer span never came (expired), or that found no room to wait (full).",
		}, []string{"reason"}),
		flushErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_span_metrics_write_errors_total", Help: "Failed writes of span metrics into the TSDB.",
		}),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	for _, reason := range []string{"missing_parent", "gap"} {
		m.broken[reason] = &series{ls: labels.FromStrings(labels.MetricName, MetricBroken, "reason", reason)}
	}
	if reg != nil {
		reg.MustRegister(m.dropped, m.unpaired, m.flushErrs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imwatch_center_service_graph_pending_edges", Help: "Client or producer spans waiting for their server or consumer span, and the other way round.",
		}, func() float64 { m.mu.Lock(); defer m.mu.Unlock(); return float64(len(m.pending)) }))
	}
	go m.run()
	return m
}

func cut(s string) string {
	if len(s) > maxLabelValue {
		return s[:maxLabelValue]
	}
	return s
}

// Observe implements Observer.
func (m *SpanMetrics) Observe(recs []Record, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range recs {
		r := &recs[i]
		svc, op := cut(r.Service), cut(r.Name)
		ck := callKey{svc, op, r.Error}
		c := m.calls[ck]
		if c == nil {
			if len(m.calls) >= m.maxSeries {
				m.dropped.WithLabelValues(MetricSpanCalls).Inc()
			} else {
				status := "ok"
				if r.Error {
					status = "error"
				}
				c = &series{ls: labels.FromStrings(labels.MetricName, MetricSpanCalls, "operation", op, "service", svc, "status", status)}
				m.calls[ck] = c
			}
		}
		if c != nil {
			c.v++
		}
		ok := opKey{svc, op}
		h := m.durs[ok]
		if h == nil {
			if len(m.durs) >= m.maxSeries {
				m.dropped.WithLabelValues(MetricSpanDuration).Inc()
			} else {
				h = newHist(MetricSpanDuration, "operation", op, "service", svc)
				m.durs[ok] = h
			}
		}
		if h != nil {
			h.observe(float64(r.End-r.Start) / 1e9)
		}
		m.pair(r, now)
	}
}

// pair matches a CLIENT or PRODUCER span with its SERVER or CONSUMER
// child, whichever comes first, and counts the edge once both are there.
func (m *SpanMetrics) pair(r *Record, now time.Time) {
	var key pairKey
	s := &side{service: r.Service, kind: r.Kind, start: r.Start, end: r.End, err: r.Error}
	isParent := false
	switch r.Kind {
	case tracepb.Span_SPAN_KIND_CLIENT, tracepb.Span_SPAN_KIND_PRODUCER:
		key, isParent = pairKey{r.TraceID, r.SpanID}, true
	case tracepb.Span_SPAN_KIND_SERVER, tracepb.Span_SPAN_KIND_CONSUMER:
		if r.Parent.IsZero() {
			return
		}
		key = pairKey{r.TraceID, r.Parent}
	default:
		return
	}
	p := m.pending[key]
	if p == nil {
		if len(m.pending) >= maxPending {
			m.unpaired.WithLabelValues("full").Inc()
			return
		}
		p = &pairing{}
		m.pending[key] = p
	}
	p.expires = now.Add(pairTTL).UnixNano()
	if isParent {
		p.parent = s
	} else {
		p.child = s
	}
	if p.parent == nil || p.child == nil {
		return
	}
	delete(m.pending, key)
	parent, child := p.parent, p.child
	var conn string
	var dur int64
	switch {
	case parent.kind == tracepb.Span_SPAN_KIND_CLIENT && child.kind == tracepb.Span_SPAN_KIND_SERVER:
		conn, dur = "rpc", parent.end-parent.start
	case parent.kind == tracepb.Span_SPAN_KIND_PRODUCER && child.kind == tracepb.Span_SPAN_KIND_CONSUMER:
		conn, dur = "messaging", child.end-parent.start
	default:
		return
	}
	if parent.service == child.service {
		return
	}
	ek := edgeKey{cut(parent.service), cut(child.service), conn}
	e := m.edges[ek]
	if e == nil {
		if len(m.edges) >= m.maxSeries {
			m.dropped.WithLabelValues("imwatch_service_graph").Inc()
			return
		}
		lv := []string{"client", ek.client, "connection_type", conn, "server", ek.server}
		e = &edgeSeries{
			requests: series{ls: labels.FromStrings(append([]string{labels.MetricName, MetricGraphRequests}, lv...)...)},
			failed:   series{ls: labels.FromStrings(append([]string{labels.MetricName, MetricGraphFailed}, lv...)...)},
			dur:      newHist(MetricGraphDuration, lv...),
		}
		m.edges[ek] = e
	}
	e.requests.v++
	if parent.err || child.err {
		e.failed.v++
	}
	e.dur.observe(float64(max(dur, 0)) / 1e9)
}

// CountBroken adds to imwatch_traces_broken_total.
func (m *SpanMetrics) CountBroken(missing, gaps int) {
	m.mu.Lock()
	m.broken["missing_parent"].v += float64(missing)
	m.broken["gap"].v += float64(gaps)
	m.mu.Unlock()
}

func newHist(name string, lv ...string) *histSeries {
	h := &histSeries{counts: make([]uint64, len(DurationBuckets)+1)}
	base := append([]string{labels.MetricName, name + "_bucket"}, lv...)
	for _, b := range DurationBuckets {
		h.buckets = append(h.buckets, series{ls: labels.FromStrings(append(base, "le", formatLe(b))...)})
	}
	h.buckets = append(h.buckets, series{ls: labels.FromStrings(append(base, "le", "+Inf")...)})
	h.sumS = series{ls: labels.FromStrings(append([]string{labels.MetricName, name + "_sum"}, lv...)...)}
	h.countS = series{ls: labels.FromStrings(append([]string{labels.MetricName, name + "_count"}, lv...)...)}
	return h
}

// formatLe writes a bucket bound the way Prometheus 3 stores scraped ones.
func formatLe(f float64) string {
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if f == math.Trunc(f) {
		s += ".0"
	}
	return s
}

func (h *histSeries) observe(v float64) {
	i := 0
	for i < len(DurationBuckets) && v > DurationBuckets[i] {
		i++
	}
	h.counts[i]++
	h.sum += v
	h.count++
}

func (m *SpanMetrics) run() {
	defer close(m.done)
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			m.flush(time.Now())
			return
		case now := <-t.C:
			m.expire(now)
			m.flush(now)
		}
	}
}

func (m *SpanMetrics) expire(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, p := range m.pending {
		if p.expires < now.UnixNano() {
			delete(m.pending, k)
			m.unpaired.WithLabelValues("expired").Inc()
		}
	}
}

// Flush writes the current values into the TSDB at now.
func (m *SpanMetrics) flush(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	app := m.app.AppenderV2(context.Background())
	t := now.UnixMilli()
	var failed bool
	add := func(s *series) {
		ref, err := app.Append(s.ref, s.ls, 0, t, s.v, nil, nil, storage.AOptions{})
		if err != nil {
			failed = true
			return
		}
		s.ref = ref
	}
	addHist := func(h *histSeries) {
		var cum uint64
		for i := range h.buckets {
			cum += h.counts[i]
			h.buckets[i].v = float64(cum)
			add(&h.buckets[i])
		}
		h.sumS.v, h.countS.v = h.sum, float64(h.count)
		add(&h.sumS)
		add(&h.countS)
	}
	for _, s := range m.calls {
		add(s)
	}
	for _, h := range m.durs {
		addHist(h)
	}
	for _, e := range m.edges {
		add(&e.requests)
		add(&e.failed)
		addHist(e.dur)
	}
	for _, s := range m.broken {
		add(s)
	}
	if err := app.Commit(); err != nil {
		failed = true
		m.log.Error("write span metrics", "err", err)
	}
	if failed {
		m.flushErrs.Inc()
	}
}

// Stop writes the metrics one last time and stops.
func (m *SpanMetrics) Stop() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}
