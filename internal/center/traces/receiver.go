package traces

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// ReceiverLimits bound what the receiver takes in.
type ReceiverLimits struct {
	MaxBodySize    int64 // bytes on the wire
	MaxDecodedSize int64 // bytes after gzip
	Limits
	QueueSpans int // spans accepted but not yet stored; beyond it requests are refused (503)
	// MaxConcurrent bounds the requests being read and decoded at once.
	MaxConcurrent int
}

// Observer sees every batch of spans once it is stored.
type Observer interface {
	Observe(recs []Record, now time.Time)
}

// ErrOverloaded is a request refused because the ingest queue is full;
// the sender should retry later.
var ErrOverloaded = errors.New("trace ingest queue is full, retry later")

// Receiver takes OTLP trace requests (HTTP and gRPC), checks them, and
// hands them to a single writer that stores them (group commit: one WAL
// write and fsync for all requests waiting at the moment) and then
// answers. A request is stored whole or not at all.
type Receiver struct {
	store     Store
	observers []Observer
	log       *slog.Logger
	limits    atomic.Pointer[ReceiverLimits]
	slots     atomic.Pointer[chan struct{}]
	now       func() time.Time

	queue   chan *batch
	queued  atomic.Int64 // spans in the queue
	stopped chan struct{}
	done    chan struct{}
	stopMu  sync.RWMutex
	closing bool

	m receiverMetrics
}

type batch struct {
	recs []Record
	done chan error
}

type receiverMetrics struct {
	requests *prometheus.CounterVec
	spans    prometheus.Counter
	refused  *prometheus.CounterVec
	dropped  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	groups   prometheus.Histogram
}

// NewReceiver makes a receiver storing into store and telling observers.
func NewReceiver(store Store, lim ReceiverLimits, observers []Observer, reg prometheus.Registerer, log *slog.Logger) *Receiver {
	r := &Receiver{
		store: store, observers: observers, log: log, now: time.Now,
		queue: make(chan *batch, 4096), stopped: make(chan struct{}), done: make(chan struct{}),
	}
	r.SetLimits(lim)
	r.m = receiverMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_otlp_requests_total", Help: "OTLP trace export requests, by transport (http, grpc) and answer (HTTP status code or gRPC code name).",
		}, []string{"transport", "code"}),
		spans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imwatch_center_otlp_spans_received_total", Help: "Spans received over OTLP and stored.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_otlp_spans_refused_total", Help: "Spans of OTLP requests refused as a whole, by reason (invalid, too_large, queue_full, store_error, unavailable).",
		}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_center_otlp_spans_dropped_total", Help: "Spans of accepted OTLP requests not stored (reported to the sender as partial success), by reason (too_old, future).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "imwatch_center_otlp_request_duration_seconds", Help: "Time to handle an OTLP request, from its first byte to the answer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"transport"}),
		groups: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imwatch_center_otlp_store_batch_spans", Help: "Spans stored per write (one WAL write and fsync for the requests waiting together).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
	}
	if reg != nil {
		reg.MustRegister(r.m.requests, r.m.spans, r.m.refused, r.m.dropped, r.m.duration, r.m.groups,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "imwatch_center_otlp_queue_spans", Help: "Spans accepted and waiting to be stored.",
			}, func() float64 { return float64(r.queued.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "imwatch_center_otlp_queue_capacity_spans", Help: "Spans the ingest queue holds at most; beyond it requests are refused.",
			}, func() float64 { return float64(r.limits.Load().QueueSpans) }))
	}
	go r.write()
	return r
}

// SetLimits changes the limits for later requests.
func (r *Receiver) SetLimits(l ReceiverLimits) {
	if old := r.limits.Load(); old == nil || old.MaxConcurrent != l.MaxConcurrent {
		slots := make(chan struct{}, max(l.MaxConcurrent, 1))
		r.slots.Store(&slots)
	}
	r.limits.Store(&l)
}

// Stop refuses new requests, stores what is queued and stops the writer.
func (r *Receiver) Stop() {
	r.stopMu.Lock()
	if r.closing {
		r.stopMu.Unlock()
		return
	}
	r.closing = true
	close(r.stopped)
	r.stopMu.Unlock()
	<-r.done
}

// write is the single writer: it stores the queued batches together.
func (r *Receiver) write() {
	defer close(r.done)
	var group []*batch
	var recs []Record
	for {
		group, recs = group[:0], recs[:0]
		select {
		case b := <-r.queue:
			group = append(group, b)
		case <-r.stopped:
			// Requests that got into the queue before Stop are stored.
			for {
				select {
				case b := <-r.queue:
					r.storeGroup([]*batch{b}, b.recs)
					continue
				default:
				}
				return
			}
		}
	more:
		for len(group) < 1024 {
			select {
			case b := <-r.queue:
				group = append(group, b)
			default:
				break more
			}
		}
		for _, b := range group {
			recs = append(recs, b.recs...)
		}
		r.storeGroup(group, recs)
	}
}

func (r *Receiver) storeGroup(group []*batch, recs []Record) {
	err := r.store.Append(recs)
	if err == nil {
		now := r.now()
		for _, o := range r.observers {
			o.Observe(recs, now)
		}
		r.m.spans.Add(float64(len(recs)))
		r.m.groups.Observe(float64(len(recs)))
	}
	for _, b := range group {
		r.queued.Add(-int64(len(b.recs)))
		b.done <- err
	}
}

// submit queues recs and waits until they are stored.
func (r *Receiver) submit(ctx context.Context, recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	r.stopMu.RLock()
	if r.closing {
		r.stopMu.RUnlock()
		return errUnavailable
	}
	n := int64(len(recs))
	if r.queued.Add(n) > int64(r.limits.Load().QueueSpans) {
		r.queued.Add(-n)
		r.stopMu.RUnlock()
		return ErrOverloaded
	}
	b := &batch{recs: recs, done: make(chan error, 1)}
	select {
	case r.queue <- b:
	default:
		r.queued.Add(-n)
		r.stopMu.RUnlock()
		return ErrOverloaded
	}
	r.stopMu.RUnlock()
	// Wait even when the sender has gone: the answer is then lost, but
	// the spans are stored as the queue promised.
	_ = ctx
	return <-b.done
}

var errUnavailable = errors.New("the center is stopping")

// result is the outcome of one export request.
type result struct {
	code    int        // HTTP status
	grpc    codes.Code // gRPC code
	reason  string     // for the refused metric
	msg     string
	spans   int
	dropped int
	dropMsg string
}

// Export checks, converts and stores one decoded request.
func (r *Receiver) export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest, sizeHint int) result {
	lim := r.limits.Load()
	conv, err := Convert(req, lim.Limits, r.now(), sizeHint)
	if err != nil {
		return result{code: http.StatusBadRequest, grpc: codes.InvalidArgument, reason: "invalid", msg: err.Error(), spans: countSpans(req)}
	}
	res := result{code: http.StatusOK, grpc: codes.OK, spans: len(conv.Records), dropped: conv.Dropped, dropMsg: conv.Reason}
	switch err := r.submit(ctx, conv.Records); {
	case err == nil:
	case errors.Is(err, ErrOverloaded):
		return result{code: http.StatusServiceUnavailable, grpc: codes.Unavailable, reason: "queue_full", msg: err.Error(), spans: len(conv.Records)}
	case errors.Is(err, errUnavailable):
		return result{code: http.StatusServiceUnavailable, grpc: codes.Unavailable, reason: "unavailable", msg: err.Error(), spans: len(conv.Records)}
	default:
		r.log.Error("store spans", "err", err)
		return result{code: http.StatusInternalServerError, grpc: codes.Internal, reason: "store_error", msg: "store spans: " + err.Error(), spans: len(conv.Records)}
	}
	if conv.Dropped > 0 {
		reason := "too_old"
		if strings.Contains(conv.Reason, "future") {
			reason = "future"
		}
		r.m.dropped.WithLabelValues(reason).Add(float64(conv.Dropped))
	}
	return res
}

func countSpans(req *coltracepb.ExportTraceServiceRequest) int {
	n := 0
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	return n
}

func (r *Receiver) count(transport, code string, res result) {
	r.m.requests.WithLabelValues(transport, code).Inc()
	if res.reason != "" {
		r.m.refused.WithLabelValues(res.reason).Add(float64(res.spans))
	}
}

// ServeHTTP is OTLP/HTTP's POST /v1/traces.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	enc, res := r.serveHTTP(req)
	r.count("http", strconv.Itoa(res.code), res)
	if res.code >= 500 && res.reason != "queue_full" && res.reason != "unavailable" {
		r.log.Error("otlp/http", "code", res.code, "err", res.msg)
	} else if res.code != http.StatusOK {
		r.log.Debug("otlp/http refused", "code", res.code, "err", res.msg, "remote", req.RemoteAddr)
	}
	ct := "application/x-protobuf"
	if enc == JSON {
		ct = "application/json"
	}
	w.Header().Set("Content-Type", ct)
	var body []byte
	if res.code == http.StatusOK {
		resp := &coltracepb.ExportTraceServiceResponse{}
		if res.dropped > 0 {
			resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{RejectedSpans: int64(res.dropped), ErrorMessage: res.dropMsg}
		}
		body = marshal(resp, enc)
	} else {
		if res.code == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		if res.code == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodPost)
		}
		body = marshal(&status.Status{Code: int32(res.grpc), Message: res.msg}, enc)
	}
	w.WriteHeader(res.code)
	_, _ = w.Write(body)
	r.m.duration.WithLabelValues("http").Observe(time.Since(start).Seconds())
}

func marshal(m proto.Message, enc Encoding) []byte {
	if enc == JSON {
		b, _ := protojson.Marshal(m)
		return b
	}
	b, _ := proto.Marshal(m)
	return b
}

func refuse(code int, grpc codes.Code, reason, format string, args ...any) result {
	return result{code: code, grpc: grpc, reason: reason, msg: fmt.Sprintf(format, args...)}
}

func (r *Receiver) serveHTTP(req *http.Request) (Encoding, result) {
	if req.Method != http.MethodPost {
		return Protobuf, refuse(http.StatusMethodNotAllowed, codes.Unimplemented, "", "OTLP/HTTP wants POST, got %s", req.Method)
	}
	enc, err := MediaType(req.Header.Get("Content-Type"))
	if err != nil {
		return Protobuf, refuse(http.StatusUnsupportedMediaType, codes.InvalidArgument, "invalid", "%v", err)
	}
	lim := r.limits.Load()
	gz := false
	switch ce := strings.ToLower(strings.TrimSpace(req.Header.Get("Content-Encoding"))); ce {
	case "", "identity":
	case "gzip":
		gz = true
	default:
		return enc, refuse(http.StatusUnsupportedMediaType, codes.InvalidArgument, "invalid", "Content-Encoding %q: want gzip or none", ce)
	}
	if req.ContentLength > lim.MaxBodySize {
		return enc, refuse(http.StatusRequestEntityTooLarge, codes.InvalidArgument, "too_large", "body of %d bytes is larger than max_body_size (%d bytes); send smaller batches", req.ContentLength, lim.MaxBodySize)
	}
	slots := *r.slots.Load()
	select {
	case slots <- struct{}{}:
	case <-req.Context().Done():
		return enc, refuse(http.StatusServiceUnavailable, codes.Unavailable, "unavailable", "gave up waiting for a turn: %v", req.Context().Err())
	}
	body, res, ok := readBody(req.Body, gz, lim)
	if !ok {
		<-slots
		return enc, res
	}
	decoded, err := DecodeRequest(body, enc)
	<-slots
	if err != nil {
		return enc, refuse(http.StatusBadRequest, codes.InvalidArgument, "invalid", "%v", err)
	}
	return enc, r.export(req.Context(), decoded, len(body))
}

// readBody reads the body within the limits, gunzipping it when asked.
func readBody(body io.Reader, gz bool, lim *ReceiverLimits) ([]byte, result, bool) {
	wire := &countingReader{r: body, limit: lim.MaxBodySize}
	var rd io.Reader = wire
	if gz {
		zr, err := gzip.NewReader(wire)
		if err != nil {
			if errors.Is(err, errWireTooLarge) {
				return nil, refuse(http.StatusRequestEntityTooLarge, codes.InvalidArgument, "too_large", "body is larger than max_body_size (%d bytes)", lim.MaxBodySize), false
			}
			return nil, refuse(http.StatusBadRequest, codes.InvalidArgument, "invalid", "gzip: %v", err), false
		}
		rd = zr
	}
	b, err := io.ReadAll(io.LimitReader(rd, lim.MaxDecodedSize+1))
	switch {
	case errors.Is(err, errWireTooLarge):
		return nil, refuse(http.StatusRequestEntityTooLarge, codes.InvalidArgument, "too_large", "body is larger than max_body_size (%d bytes); send smaller batches", lim.MaxBodySize), false
	case err != nil && gz:
		return nil, refuse(http.StatusBadRequest, codes.InvalidArgument, "invalid", "gzip: %v", err), false
	case err != nil:
		return nil, refuse(http.StatusBadRequest, codes.InvalidArgument, "invalid", "read body: %v", err), false
	case int64(len(b)) > lim.MaxDecodedSize:
		return nil, refuse(http.StatusRequestEntityTooLarge, codes.InvalidArgument, "too_large", "decompressed body is larger than max_decoded_size (%d bytes)", lim.MaxDecodedSize), false
	}
	return b, result{}, true
}

var errWireTooLarge = errors.New("body larger than max_body_size")

type countingReader struct {
	r     io.Reader
	n     int64
	limit int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.limit {
		return n, errWireTooLarge
	}
	return n, err
}
