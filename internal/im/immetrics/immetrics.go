// Package immetrics is the IM metric set: what every part of the reference
// IM counts and times, per operation, in Prometheus's client library. Labels
// are bounded sets (service, kind, stage, operation, reason, frame type):
// never a user, device, conversation or message id. docs/metrics.md
// describes each metric and the alert threshold we suggest.
package immetrics

import (
	"net/http"
	"time"

	"github.com/imwatch/imwatch/pkg/imtrace"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Stages of a message, the values of the stage label.
const (
	StageSent      = "sent"      // gateway: a send frame accepted and forwarded
	StageStored    = "stored"    // logic: durably stored (not a duplicate)
	StagePushed    = "pushed"    // logic: first push to a device
	StageDelivered = "delivered" // gateway: a deliver frame written to a device
	StageAcked     = "acked"     // logic: a device's first deliver-ack
)

// Latency stages, the values of imwatch_im_stage_duration_seconds' stage label.
const (
	LatGatewayReceive = "gateway_receive" // gateway: send frame read -> send-ack written
	LatStore          = "store"           // logic: JetStream append
	LatPush           = "push"            // logic: stored -> pushed to the gateways
	LatDeliver        = "deliver"         // gateway: push received from the bus -> frame written
	LatAck            = "ack"             // logic: pushed -> device's deliver-ack
)

// Kind of a message: the conversation it belongs to.
const (
	KindDirect = "direct"
	KindGroup  = "group"
)

// Buckets of the latency histograms, in seconds: 0.5 ms to 10 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Set is the IM metric set of one part.
type Set struct {
	Registry *prometheus.Registry
	reg      prometheus.Registerer // Registry with the service label

	Connections   prometheus.Gauge
	Frames        *prometheus.CounterVec // direction, type
	Requests      *prometheus.CounterVec // operation
	Failures      *prometheus.CounterVec // operation, reason
	Messages      *prometheus.CounterVec // kind, stage
	Redeliveries  prometheus.Counter
	AckTimeouts   prometheus.Counter
	Syncs         prometheus.Counter
	SyncMessages  prometheus.Counter
	StageDuration *prometheus.HistogramVec // stage
	E2EDuration   *prometheus.HistogramVec // kind
	Pending       prometheus.Gauge

	// Children resolved once, so that the message path does not hash labels.
	msgs     map[[2]string]prometheus.Counter
	framesIn map[string]prometheus.Counter
	framesOu map[string]prometheus.Counter
	stages   map[string]prometheus.Observer
	e2e      map[string]prometheus.Observer
}

var (
	kinds      = []string{KindDirect, KindGroup}
	msgStages  = []string{StageSent, StageStored, StagePushed, StageDelivered, StageAcked}
	latStages  = []string{LatGatewayReceive, LatStore, LatPush, LatDeliver, LatAck}
	frameTypes = []string{"auth", "ping", "send", "deliver_ack", "sync", "group_create", "group_add", "group_remove",
		"auth_ok", "pong", "send_ack", "deliver", "sync_done", "result", "error", "invalid"}
)

func (s *Set) resolve() {
	s.msgs = map[[2]string]prometheus.Counter{}
	for _, k := range kinds {
		for _, st := range msgStages {
			s.msgs[[2]string{k, st}] = s.Messages.WithLabelValues(k, st)
		}
	}
	s.framesIn, s.framesOu = map[string]prometheus.Counter{}, map[string]prometheus.Counter{}
	for _, t := range frameTypes {
		s.framesIn[t] = s.Frames.WithLabelValues("in", t)
		s.framesOu[t] = s.Frames.WithLabelValues("out", t)
	}
	s.stages = map[string]prometheus.Observer{}
	for _, st := range latStages {
		s.stages[st] = s.StageDuration.WithLabelValues(st)
	}
	s.e2e = map[string]prometheus.Observer{}
	for _, k := range kinds {
		s.e2e[k] = s.E2EDuration.WithLabelValues(k)
	}
}

// New makes the metric set of service ("gateway" or "logic") in a registry of
// its own, with the Go runtime and process collectors.
func New(service string) *Set {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := prometheus.WrapRegistererWith(prometheus.Labels{"service": service}, r)
	s := &Set{
		Registry: r,
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imwatch_im_connections", Help: "Authenticated client connections online.",
		}),
		Frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_im_frames_total", Help: "WebSocket frames by direction (in, out) and frame type.",
		}, []string{"direction", "type"}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_im_requests_total", Help: "Requests handled, by operation.",
		}, []string{"operation"}),
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_im_failures_total", Help: "Failed requests and refused input, by operation and reason (a protocol error code).",
		}, []string{"operation", "reason"}),
		Messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_im_messages_total", Help: "Messages by kind (direct, group) and the stage they reached.",
		}, []string{"kind", "stage"}),
		Redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_im_redeliveries_total", Help: "Pushes repeated because a device did not acknowledge in time.",
		}),
		AckTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_im_ack_timeouts_total", Help: "Device deliveries given up after the last push went unacknowledged; the device gets them by sync.",
		}),
		Syncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_im_syncs_total", Help: "Sync requests served (offline and gap syncs).",
		}),
		SyncMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_im_sync_messages_total", Help: "Messages handed out by sync.",
		}),
		StageDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "imwatch_im_stage_duration_seconds", Help: "Time a message spends in each stage.", Buckets: latencyBuckets,
		}, []string{"stage"}),
		E2EDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "imwatch_im_e2e_duration_seconds", Help: "From the sender's gateway receiving a message to a recipient device's deliver-ack reaching the logic node.", Buckets: latencyBuckets,
		}, []string{"kind"}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imwatch_im_pending_pushes", Help: "Messages pushed and awaiting deliver-acks on this logic node.",
		}),
	}
	s.reg = f
	s.resolve()
	f.MustRegister(s.Connections, s.Frames, s.Requests, s.Failures, s.Messages, s.Redeliveries, s.AckTimeouts,
		s.Syncs, s.SyncMessages, s.StageDuration, s.E2EDuration, s.Pending)
	return s
}

// Since observes the seconds from start to now in h.
func Since(h prometheus.Observer, start time.Time) { h.Observe(time.Since(start).Seconds()) }

// Kind is the kind label of a message to a group (group != "") or a user.
func Kind(group string) string {
	if group != "" {
		return KindGroup
	}
	return KindDirect
}

// The methods below are what the parts call. Each is safe on a nil *Set,
// which is how metrics are switched off.

// Frame counts one frame in or out.
func (s *Set) Frame(direction, typ string) {
	if s == nil {
		return
	}
	m := s.framesIn
	if direction != "in" {
		m = s.framesOu
	}
	if c, ok := m[typ]; ok {
		c.Inc()
		return
	}
	s.Frames.WithLabelValues(direction, typ).Inc()
}

// Request counts one request of an operation.
func (s *Set) Request(op string) {
	if s != nil {
		s.Requests.WithLabelValues(op).Inc()
	}
}

// Fail counts one failure of an operation for a reason.
func (s *Set) Fail(op, reason string) {
	if s != nil {
		s.Failures.WithLabelValues(op, reason).Inc()
	}
}

// Message counts n messages of a kind reaching a stage.
func (s *Set) Message(kind, stage string, n int) {
	if s == nil || n <= 0 {
		return
	}
	if c, ok := s.msgs[[2]string{kind, stage}]; ok {
		c.Add(float64(n))
		return
	}
	s.Messages.WithLabelValues(kind, stage).Add(float64(n))
}

// Stage observes the time since start in a latency stage.
func (s *Set) Stage(stage string, start time.Time) {
	if s == nil {
		return
	}
	if o, ok := s.stages[stage]; ok {
		o.Observe(time.Since(start).Seconds())
		return
	}
	s.StageDuration.WithLabelValues(stage).Observe(time.Since(start).Seconds())
}

// E2E observes an end-to-end latency.
func (s *Set) E2E(kind string, d time.Duration) {
	if s == nil || d < 0 {
		return
	}
	if o, ok := s.e2e[kind]; ok {
		o.Observe(d.Seconds())
		return
	}
	s.E2EDuration.WithLabelValues(kind).Observe(d.Seconds())
}

// ConnDelta moves the connection gauge.
func (s *Set) ConnDelta(d float64) {
	if s != nil {
		s.Connections.Add(d)
	}
}

// Redelivered counts n repeated pushes.
func (s *Set) Redelivered(n int) {
	if s != nil {
		s.Redeliveries.Add(float64(n))
	}
}

// AckTimedOut counts n device deliveries given up.
func (s *Set) AckTimedOut(n int) {
	if s != nil {
		s.AckTimeouts.Add(float64(n))
	}
}

// Synced counts one sync that handed out n messages.
func (s *Set) Synced(n int) {
	if s != nil {
		s.Syncs.Inc()
		s.SyncMessages.Add(float64(n))
	}
}

// Handler serves the set's registry in the Prometheus exposition format.
func (s *Set) Handler() http.Handler {
	return promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 10 * time.Second})
}

// SetPending sets the pending pushes gauge.
func (s *Set) SetPending(n int) {
	if s != nil {
		s.Pending.Set(float64(n))
	}
}

// Tracing adds the tracer's counters (imtrace.Stats) to the set, read at
// each scrape: imwatch_trace_spans_total{result} and the export's
// imwatch_trace_export_spans_total{result}. A nil tracer (tracing off) adds
// nothing.
func (s *Set) Tracing(tr *imtrace.Tracer) {
	if s == nil || tr == nil {
		return
	}
	s.reg.MustRegister(tracerCollector{tr})
}

var (
	traceSpansDesc = prometheus.NewDesc("imwatch_trace_spans_total",
		"Hop spans by what became of them at start and end: sampled, unsampled (head decision), promoted (unsampled but kept: an error or a slow span in its trace), tail_dropped (unsampled, pushed out of the full tail buffer while it could still have been promoted), promotion_refused (an error or slow span that did not promote its trace: the tracer's promotions per second were spent).",
		[]string{"result"}, nil)
	traceExportDesc = prometheus.NewDesc("imwatch_trace_export_spans_total",
		"Spans handed to the OTLP exporter by outcome: exported (the receiver accepted them), failed (the export failed after its retries), dropped (refused: the export queue was full).",
		[]string{"result"}, nil)
)

type tracerCollector struct{ tr *imtrace.Tracer }

func (c tracerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- traceSpansDesc
	ch <- traceExportDesc
}

func (c tracerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.tr.Stats()
	for _, v := range []struct {
		d      *prometheus.Desc
		result string
		n      uint64
	}{
		{traceSpansDesc, "sampled", st.Sampled}, {traceSpansDesc, "unsampled", st.Unsampled},
		{traceSpansDesc, "promoted", st.Promoted}, {traceSpansDesc, "tail_dropped", st.TailDropped},
		{traceSpansDesc, "promotion_refused", st.PromotionsRefused},
		{traceExportDesc, "exported", st.Exported}, {traceExportDesc, "failed", st.ExportFailed},
		{traceExportDesc, "dropped", st.ExportDropped},
	} {
		ch <- prometheus.MustNewConstMetric(v.d, prometheus.CounterValue, float64(v.n), v.result)
	}
}
