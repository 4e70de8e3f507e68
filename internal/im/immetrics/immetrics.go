// Package immetrics is the IM metric set: what every part of the reference
// IM counts and times, per operation, in Prometheus's client library. Labels
// are bounded sets (service, kind, stage, operation, reason, frame type):
// never a user, device, conversation or message id. docs/metrics.md
// describes each metric and the alert threshold we suggest.
package immetrics

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/imwatch/imwatch/internal/im/protocol"
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
	paused   atomic.Bool           // Pause

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

	// Children resolved once, so that the message path neither hashes labels
	// nor takes the vec's lock (whose reader count is a cache line the cores
	// pass back and forth): arrays indexed by a label's place in its list.
	msgs      [len(kinds)][len(msgStages)]prometheus.Counter
	framesIn  [len(frameTypes)]prometheus.Counter
	framesOut [len(frameTypes)]prometheus.Counter
	stages    [len(latStages)]prometheus.Observer
	e2e       [len(kinds)]prometheus.Observer
	// Requests and failures get their series when first counted, as a plain
	// vec gives them (a part counts only some operations, and few of the
	// reasons); the child is kept then, for the next calls.
	requests [len(operations)]lazyCounter
	failures [len(operations)][len(reasons)]lazyCounter
}

// The label values known in advance. Frame types come most frequent first:
// indexOf scans in order.
var (
	kinds      = [...]string{KindDirect, KindGroup}
	msgStages  = [...]string{StageSent, StageStored, StagePushed, StageDelivered, StageAcked}
	latStages  = [...]string{LatGatewayReceive, LatStore, LatPush, LatDeliver, LatAck}
	frameTypes = [...]string{protocol.TypeSend, protocol.TypeSendAck, protocol.TypeDeliver, protocol.TypeDeliverAck,
		protocol.TypePing, protocol.TypePong, protocol.TypeSync, protocol.TypeSyncDone, protocol.TypeError,
		protocol.TypeAuth, protocol.TypeAuthOK, protocol.TypeGroupCreate, protocol.TypeGroupAdd,
		protocol.TypeGroupRemove, protocol.TypeResult, "invalid"}
	operations = [...]string{"send", "deliver_ack", "sync", "group", "auth", "frame", "connection"}
	reasons    = [...]string{protocol.CodeUnavailable, protocol.CodeOverloaded, protocol.CodeInternal,
		protocol.CodeBadRequest, protocol.CodeRateLimited, protocol.CodeBadFrame, protocol.CodeUnknownType,
		protocol.CodeFrameTooLarge, protocol.CodeUnauthenticated, protocol.CodeBadToken, protocol.CodeTokenExpired,
		protocol.CodeNotMember, protocol.CodeGroupExists, protocol.CodeNoSuchGroup, protocol.CodeForbidden,
		protocol.CodeIdleTimeout, protocol.CodeAuthTimeout, protocol.CodeSlowConsumer, protocol.CodeReplaced}
)

// indexOf is v's place in list, or -1. A few string comparisons (most fail
// on the length) cost less than hashing v for a map.
func indexOf(list []string, v string) int {
	for i, s := range list {
		if s == v {
			return i
		}
	}
	return -1
}

// lazyCounter holds a vec's child once it has been made.
type lazyCounter struct{ p atomic.Pointer[counterRef] }

type counterRef struct{ prometheus.Counter }

// make gets the child of vec for lvs and keeps it. Two goroutines making it
// at once get the same child from the vec.
func (l *lazyCounter) make(vec *prometheus.CounterVec, lvs ...string) prometheus.Counter {
	c := vec.WithLabelValues(lvs...)
	l.p.Store(&counterRef{c})
	return c
}

func (s *Set) resolve() {
	for i, k := range kinds {
		for j, st := range msgStages {
			s.msgs[i][j] = s.Messages.WithLabelValues(k, st)
		}
		s.e2e[i] = s.E2EDuration.WithLabelValues(k)
	}
	for i, t := range frameTypes {
		s.framesIn[i] = s.Frames.WithLabelValues("in", t)
		s.framesOut[i] = s.Frames.WithLabelValues("out", t)
	}
	for i, st := range latStages {
		s.stages[i] = s.StageDuration.WithLabelValues(st)
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

// Pause stops (true) or resumes (false) the counting on the message path,
// as if the set were nil: bench/metricscost alternates it to compare metrics
// on and off in one cluster. The connections gauge keeps counting, so that
// it is right when counting resumes.
func (s *Set) Pause(p bool) {
	if s != nil {
		s.paused.Store(p)
	}
}

// off reports whether the message path counts nothing: no set, or paused.
func (s *Set) off() bool { return s == nil || s.paused.Load() }

// Frame counts one frame in or out.
func (s *Set) Frame(direction, typ string) {
	if s.off() {
		return
	}
	if i := indexOf(frameTypes[:], typ); i >= 0 {
		switch direction {
		case "in":
			s.framesIn[i].Inc()
			return
		case "out":
			s.framesOut[i].Inc()
			return
		}
	}
	s.Frames.WithLabelValues(direction, typ).Inc()
}

// Request counts one request of an operation.
func (s *Set) Request(op string) {
	if s.off() {
		return
	}
	i := indexOf(operations[:], op)
	if i < 0 {
		s.Requests.WithLabelValues(op).Inc()
		return
	}
	l := &s.requests[i]
	if r := l.p.Load(); r != nil {
		r.Inc()
		return
	}
	l.make(s.Requests, op).Inc()
}

// Fail counts one failure of an operation for a reason.
func (s *Set) Fail(op, reason string) {
	if s.off() {
		return
	}
	i, j := indexOf(operations[:], op), indexOf(reasons[:], reason)
	if i < 0 || j < 0 {
		s.Failures.WithLabelValues(op, reason).Inc()
		return
	}
	l := &s.failures[i][j]
	if r := l.p.Load(); r != nil {
		r.Inc()
		return
	}
	l.make(s.Failures, op, reason).Inc()
}

// Message counts n messages of a kind reaching a stage.
func (s *Set) Message(kind, stage string, n int) {
	if s.off() || n <= 0 {
		return
	}
	if i, j := indexOf(kinds[:], kind), indexOf(msgStages[:], stage); i >= 0 && j >= 0 {
		s.msgs[i][j].Add(float64(n))
		return
	}
	s.Messages.WithLabelValues(kind, stage).Add(float64(n))
}

// Stage observes the time since start in a latency stage.
func (s *Set) Stage(stage string, start time.Time) {
	if !s.off() {
		s.stage(stage, time.Since(start))
	}
}

// StageAt observes end minus start in a latency stage, for a caller that has
// read the clock already: a read costs tens of nanoseconds on a VM.
func (s *Set) StageAt(stage string, start, end time.Time) {
	if !s.off() {
		s.stage(stage, end.Sub(start))
	}
}

func (s *Set) stage(stage string, d time.Duration) {
	if i := indexOf(latStages[:], stage); i >= 0 {
		s.stages[i].Observe(seconds(d))
		return
	}
	s.StageDuration.WithLabelValues(stage).Observe(seconds(d))
}

// seconds is d in seconds: one division, where Duration.Seconds takes three
// (and is no more exact below 2^53 ns, 104 days).
func seconds(d time.Duration) float64 { return float64(d) / 1e9 }

// E2E observes an end-to-end latency.
func (s *Set) E2E(kind string, d time.Duration) {
	if s.off() || d < 0 {
		return
	}
	if i := indexOf(kinds[:], kind); i >= 0 {
		s.e2e[i].Observe(seconds(d))
		return
	}
	s.E2EDuration.WithLabelValues(kind).Observe(seconds(d))
}

// ConnDelta moves the connection gauge.
func (s *Set) ConnDelta(d float64) {
	if s != nil {
		s.Connections.Add(d)
	}
}

// Redelivered counts n repeated pushes.
func (s *Set) Redelivered(n int) {
	if !s.off() {
		s.Redeliveries.Add(float64(n))
	}
}

// AckTimedOut counts n device deliveries given up.
func (s *Set) AckTimedOut(n int) {
	if !s.off() {
		s.AckTimeouts.Add(float64(n))
	}
}

// Synced counts one sync that handed out n messages.
func (s *Set) Synced(n int) {
	if !s.off() {
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
	if !s.off() {
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
