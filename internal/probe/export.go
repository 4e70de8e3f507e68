package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"io"
	"log/slog"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/prompb"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// ServiceName is the service.name of the prober's spans.
const ServiceName = "imwatch-probe"

// Queue names, the label queue of the buffer metrics.
const (
	queueMetrics = "metrics"
	queueTraces  = "traces"
)

// newTracerProvider makes the prober's tracer provider: every round
// sampled, spans batched into the traces queue as OTLP requests.
//
// The second result traces the reference IM client's hops of the probe
// messages (im.client.send, .receive, .ack; service imwatch-client,
// instance the location) into the same queue, so that a round's trace
// holds the IM's hops below im.probe.send.
func newTracerProvider(location string, q *Queue) (*sdktrace.TracerProvider, *imtrace.Tracer) {
	res := resource.NewSchemaless(
		attribute.String("service.name", ServiceName),
		attribute.String("service.instance.id", location),
	)
	exp := otlptrace.NewUnstarted(&bufferClient{q: q})
	bsp := sdktrace.NewBatchSpanProcessor(exp,
		sdktrace.WithMaxQueueSize(1<<17),
		sdktrace.WithMaxExportBatchSize(4096),
		sdktrace.WithBatchTimeout(time.Second))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithResource(res),
		sdktrace.WithSpanProcessor(bsp),
	)
	// Probe messages are always sampled; nothing else goes through it.
	hops, err := imtrace.New(imtrace.Config{Service: ClientServiceName, Instance: location, Processor: bsp, Ratio: 0, TailBuffer: -1})
	if err != nil {
		panic(err) // the config is fixed: a failure is a bug
	}
	return tp, hops
}

// ClientServiceName is the service.name of the probe clients' IM hops.
const ClientServiceName = "imwatch-client"

// bufferClient is the OTLP exporter's client: instead of a connection, it
// writes each batch of ResourceSpans into the on-disk queue as one OTLP/HTTP
// protobuf request body, sent to the center by a sender.
type bufferClient struct{ q *Queue }

func (*bufferClient) Start(context.Context) error { return nil }
func (*bufferClient) Stop(context.Context) error  { return nil }

func (c *bufferClient) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	if len(rs) == 0 {
		return nil
	}
	body, err := proto.Marshal(&coltracepb.ExportTraceServiceRequest{ResourceSpans: rs})
	if err != nil {
		return fmt.Errorf("encode spans: %w", err)
	}
	return c.q.Append(body)
}

// writeRequest turns gathered metric families into a remote-write 1.0 body
// (snappy-compressed protobuf) with every sample at ts.
func writeRequest(mfs []*dto.MetricFamily, extra map[string]string, ts time.Time) ([]byte, error) {
	var wr prompb.WriteRequest
	ms := ts.UnixMilli()
	add := func(name string, m *dto.Metric, v float64, more ...string) {
		ls := make([]prompb.Label, 0, len(m.GetLabel())+len(extra)+2)
		ls = append(ls, prompb.Label{Name: "__name__", Value: name})
		for _, l := range m.GetLabel() {
			ls = append(ls, prompb.Label{Name: l.GetName(), Value: l.GetValue()})
		}
		for k, v := range extra {
			ls = append(ls, prompb.Label{Name: k, Value: v})
		}
		for i := 0; i+1 < len(more); i += 2 {
			ls = append(ls, prompb.Label{Name: more[i], Value: more[i+1]})
		}
		sort.Slice(ls, func(i, j int) bool { return ls[i].Name < ls[j].Name })
		wr.Timeseries = append(wr.Timeseries, prompb.TimeSeries{Labels: ls, Samples: []prompb.Sample{{Value: v, Timestamp: ms}}})
	}
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				add(name, m, m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				add(name, m, m.GetGauge().GetValue())
			case dto.MetricType_UNTYPED:
				add(name, m, m.GetUntyped().GetValue())
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					add(name+"_bucket", m, float64(b.GetCumulativeCount()), "le", formatFloat(b.GetUpperBound()))
				}
				add(name+"_bucket", m, float64(h.GetSampleCount()), "le", "+Inf")
				add(name+"_sum", m, h.GetSampleSum())
				add(name+"_count", m, float64(h.GetSampleCount()))
			}
		}
	}
	if len(wr.Timeseries) == 0 {
		return nil, nil
	}
	b, err := wr.Marshal()
	if err != nil {
		return nil, err
	}
	return snappy.Encode(nil, b), nil
}

func formatFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strings.TrimSuffix(fmt.Sprintf("%g", f), ".0")
}

// senderMetrics count what the senders did.
type senderMetrics struct {
	requests *prometheus.CounterVec
	dropped  *prometheus.GaugeVec
	bytes    *prometheus.GaugeVec
	pending  *prometheus.GaugeVec
}

func newSenderMetrics(reg prometheus.Registerer) *senderMetrics {
	m := &senderMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imwatch_probe_center_requests_total",
			Help: "Requests to the center from the buffer, by queue (metrics, traces) and result (ok, retry, refused).",
		}, []string{"queue", "result"}),
		dropped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imwatch_probe_buffer_dropped_records",
			Help: "Records the buffer dropped since the prober started, by queue and reason (full, corrupt, refused).",
		}, []string{"queue", "reason"}),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imwatch_probe_buffer_bytes",
			Help: "Bytes on disk in the buffer, by queue.",
		}, []string{"queue"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imwatch_probe_buffer_records",
			Help: "Records in the buffer waiting for the center, by queue.",
		}, []string{"queue"}),
	}
	reg.MustRegister(m.requests, m.dropped, m.bytes, m.pending)
	return m
}

func (m *senderMetrics) observe(name string, q *Queue) {
	st := q.Stats()
	m.bytes.WithLabelValues(name).Set(float64(st.Bytes))
	m.pending.WithLabelValues(name).Set(float64(st.Pending))
	for _, r := range []string{DropFull, DropCorrupt, DropRefused} {
		m.dropped.WithLabelValues(name, r).Set(float64(st.Dropped[r]))
	}
}

// sender takes records from a queue, oldest first, and posts each to the
// center until it is taken: a network error, 5xx, 429 or 404 is retried
// with backoff (the record stays first in line), another 4xx drops the
// record as refused.
type sender struct {
	name    string
	q       *Queue
	url     string
	header  http.Header
	client  *http.Client
	log     *slog.Logger
	m       *senderMetrics
	minWait time.Duration
	maxWait time.Duration

	wake chan struct{} // cuts a retry's backoff short

	mu     sync.Mutex
	warned bool // the last request failed (and that was logged)
	tries  int  // requests made, to wait for one after a wake
}

// retryNow makes a sender waiting out a backoff try again at once, and
// returns how many requests it had made.
func (s *sender) retryNow() int {
	s.mu.Lock()
	n := s.tries
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return n
}

func (s *sender) triesMade() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tries
}

// failing says whether the center is not taking this queue's records.
func (s *sender) failing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.warned
}

func newSender(name string, q *Queue, center Center, path string, header http.Header, m *senderMetrics, log *slog.Logger) *sender {
	h := header.Clone()
	if center.BearerToken != "" {
		h.Set("Authorization", "Bearer "+center.BearerToken)
	}
	return &sender{
		name: name, q: q, url: strings.TrimSuffix(center.URL, "/") + path, header: h,
		client: &http.Client{Timeout: center.Timeout.D()}, log: log.With("queue", name), m: m,
		minWait: 250 * time.Millisecond, maxWait: 10 * time.Second, wake: make(chan struct{}, 1),
	}
}

// errRefused means the center refused a record as bad: it is dropped.
var errRefused = errors.New("refused by the center")

// run sends until ctx ends.
func (s *sender) run(ctx context.Context) {
	wait := s.minWait
	for ctx.Err() == nil {
		rec, pos, err := s.q.Next()
		if errors.Is(err, ErrEmpty) {
			select {
			case <-s.q.Notify():
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
			continue
		}
		if err != nil {
			s.log.Warn("reading the buffer failed", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		err = s.post(ctx, rec)
		s.mu.Lock()
		s.tries++
		s.mu.Unlock()
		switch {
		case err == nil:
			s.q.Commit(pos)
			s.m.requests.WithLabelValues(s.name, "ok").Inc()
			wait = s.minWait
			s.mu.Lock()
			if s.warned {
				s.log.Info("the center takes results again")
				s.warned = false
			}
			s.mu.Unlock()
		case errors.Is(err, errRefused):
			s.q.Drop(pos, DropRefused)
			s.m.requests.WithLabelValues(s.name, "refused").Inc()
			s.log.Warn("the center refused a record; dropped", "err", err)
		default:
			s.m.requests.WithLabelValues(s.name, "retry").Inc()
			s.mu.Lock()
			if !s.warned {
				s.log.Warn("cannot reach the center; results wait in the buffer", "url", s.url, "err", err)
				s.warned = true
			} else {
				s.log.Debug("center still unreachable", "err", err)
			}
			s.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.wake:
			case <-ctx.Done():
			}
			t.Stop()
			wait = min(wait*2, s.maxWait)
		}
	}
}

func (s *sender) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header = s.header.Clone()
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode == http.StatusNotFound:
		// An older center without this endpoint: keep the records until
		// it has one (the queue's bound drops the oldest meanwhile).
		return fmt.Errorf("%s: %s (the center does not serve this path yet)", resp.Status, s.url)
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode/100 == 5:
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
	default:
		return fmt.Errorf("%w: %s: %s", errRefused, resp.Status, strings.TrimSpace(string(msg)))
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Headers of the two kinds of request.
var (
	remoteWriteHeader = http.Header{
		"Content-Type":                      {"application/x-protobuf"},
		"Content-Encoding":                  {"snappy"},
		"X-Prometheus-Remote-Write-Version": {"0.1.0"},
		"User-Agent":                        {"imwatch-probe"},
	}
	otlpHeader = http.Header{
		"Content-Type": {"application/x-protobuf"},
		"User-Agent":   {"imwatch-probe"},
	}
)
