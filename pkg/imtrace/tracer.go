package imtrace

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of the hop spans.
const ScopeName = "github.com/imwatch/imwatch/pkg/imtrace"

// Defaults of Config, in one place.
const (
	DefaultRatio         = 0.01
	DefaultSlow          = 500 * time.Millisecond
	DefaultQueueSize     = 8192
	DefaultBatchSize     = 512
	DefaultBatchTimeout  = time.Second
	DefaultExportTimeout = 10 * time.Second
	DefaultTailBuffer    = 16384
	DefaultTailWindow    = 10 * time.Second
	DefaultMaxPromotions = 50
)

// Config configures the tracing of one process.
type Config struct {
	// Service is the resource attribute service.name (e.g. "im-gateway"),
	// Instance is service.instance.id (e.g. the gateway id).
	Service, Instance string

	// Endpoint is the OTLP/HTTP traces URL the spans are sent to, such as
	// http://127.0.0.1:7070/v1/traces (the center). Exactly one of Endpoint
	// and Processor is set unless Disabled.
	Endpoint string
	// Compression of the OTLP requests: "gzip", "none", which saves the
	// CPU gzip takes where bandwidth is cheap (a center on the same host or
	// LAN), or "auto" (the default, "" too): none to a loopback endpoint
	// (127.0.0.0/8, ::1, localhost), gzip to any other.
	Compression string
	// Processor receives every kept span instead of an exporter: tests give
	// a tracetest.SpanRecorder, other pipelines their own processor.
	Processor sdktrace.SpanProcessor

	// Ratio is the head sampling ratio of new traces, in [0, 1]. With 0 only
	// probes, errors and slow spans are kept. DefaultConfig sets DefaultRatio.
	Ratio float64
	// Slow keeps every span of a trace in this process when one of its spans
	// lasts at least this long. 0 means DefaultSlow; negative never.
	Slow time.Duration

	// Disabled switches tracing off in this process: no span is recorded or
	// exported, and Span.Inject leaves a carrier as it was, so a frame or
	// header passes on the traceparent it came with, unchanged.
	Disabled bool

	QueueSize     int           // spans waiting for export at most (DefaultQueueSize); more are dropped and counted
	BatchSize     int           // spans per OTLP request at most (DefaultBatchSize)
	BatchTimeout  time.Duration // a batch is sent at least this often (DefaultBatchTimeout)
	ExportTimeout time.Duration // one OTLP request (DefaultExportTimeout)
	TailBuffer    int           // ended spans of unsampled traces kept for promotion (DefaultTailBuffer); negative: no tail part
	TailWindow    time.Duration // how long an ended unsampled span may still be promoted (DefaultTailWindow)
	// MaxPromotions bounds the traces this process promotes (an error or a
	// slow span in an unsampled trace) per second; past it a failed or slow
	// span stays unsampled and is counted (Stats.PromotionsRefused). When a
	// part is overloaded every message is slow, and keeping them all would
	// add the export of every span to the load. DefaultMaxPromotions when
	// 0; negative: no bound.
	MaxPromotions int
}

// DefaultConfig is the configuration of `imwatch up`'s parts: the default
// ratio and limits, exporting to endpoint.
func DefaultConfig(service, instance, endpoint string) Config {
	return Config{Service: service, Instance: instance, Endpoint: endpoint, Ratio: DefaultRatio}
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.QueueSize, DefaultQueueSize)
	def(&c.BatchSize, DefaultBatchSize)
	def(&c.TailBuffer, DefaultTailBuffer)
	def(&c.MaxPromotions, DefaultMaxPromotions)
	defDur(&c.Slow, DefaultSlow)
	defDur(&c.BatchTimeout, DefaultBatchTimeout)
	defDur(&c.ExportTimeout, DefaultExportTimeout)
	defDur(&c.TailWindow, DefaultTailWindow)
	if c.BatchSize > c.QueueSize {
		c.BatchSize = c.QueueSize
	}
}

// Validate says what is wrong with c, if anything.
func (c Config) Validate() error {
	if c.Disabled {
		return nil
	}
	var errs []error
	if c.Service == "" {
		errs = append(errs, errors.New("service: set the service name (resource attribute service.name)"))
	}
	switch c.Compression {
	case "", "auto", "gzip", "none":
	default:
		errs = append(errs, fmt.Errorf("compression: %q is not auto, gzip or none", c.Compression))
	}
	if math.IsNaN(c.Ratio) || c.Ratio < 0 || c.Ratio > 1 {
		errs = append(errs, fmt.Errorf("ratio: %v is not in [0, 1]", c.Ratio))
	}
	switch {
	case c.Endpoint == "" && c.Processor == nil:
		errs = append(errs, errors.New("endpoint: set the OTLP/HTTP traces URL (e.g. http://127.0.0.1:7070/v1/traces), or disable tracing"))
	case c.Endpoint != "" && c.Processor != nil:
		errs = append(errs, errors.New("endpoint and processor are both set; set one"))
	case c.Endpoint != "":
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("endpoint: %q is not an http:// or https:// URL", c.Endpoint))
		}
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"queue_size", int64(c.QueueSize)}, {"batch_size", int64(c.BatchSize)},
		{"batch_timeout", int64(c.BatchTimeout)}, {"export_timeout", int64(c.ExportTimeout)}, {"tail_window", int64(c.TailWindow)}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative", f.name))
		}
	}
	return errors.Join(errs...)
}

// Tracer starts the hop spans of one process. A nil *Tracer, and one made
// with Config.Disabled, traces nothing and passes trace context on unchanged.
type Tracer struct {
	res     *resource.Resource
	scope   instrumentation.Scope
	ratio   sdktrace.Sampler // TraceIDRatioBased: the root decision
	slow    int64            // ns; <0 never
	tailOn  bool             // unsampled spans are recorded for promotion
	paused  atomic.Bool      // Pause: new spans record nothing, as with a nil Tracer
	out     sdktrace.SpanProcessor
	bounded *boundedProcessor // nil with Config.Processor
	recycle bool              // records go back to the pool after export
	// ownPipeline: the records go only to the package's exporter, through
	// the SDK's batch processor, which reads each on one goroutine.
	ownPipeline bool
	provider    *sdktrace.TracerProvider
	tail        tailBuffer
	stats       counters
	// Promotions in the current second (promSec, in monotonic seconds),
	// at most maxProm (negative: no bound).
	maxProm        int64
	promSec, promN atomic.Int64
	closed         atomic.Bool
}

type counters struct {
	sampled, unsampled                    stripedCounter
	promoted, tailDropped, promRefused    atomic.Uint64
	exported, exportFailed, exportDropped atomic.Uint64
}

// stripedCounter is a counter that every span adds to: one stripe per
// cache line, picked by the trace id, so that hops of different messages on
// different cores do not contend for one line.
type stripedCounter [counterStripes]struct {
	n atomic.Uint64
	_ [56]byte
}

const counterStripes = 8 // power of two

func (c *stripedCounter) add(id trace.TraceID) { c[id[15]&(counterStripes-1)].n.Add(1) }

func (c *stripedCounter) load() (n uint64) {
	for i := range c {
		n += c[i].n.Load()
	}
	return n
}

// Pause switches the tracer's spans off (true) and on again (false) while
// it runs: a span started while paused records nothing and passes on the
// context it was given, unchanged, as a nil Tracer's does (Config.Disabled),
// so the hops add no trace context of their own; a span started before ends
// as usual, and the exporter keeps running. For a comparison of tracing on
// and off within one running process (bench/tracingcost), or an operator
// switch. A nil Tracer ignores it.
func (t *Tracer) Pause(paused bool) {
	if t != nil {
		t.paused.Store(paused)
	}
}

// Stats are the tracer's counters since it was made; the IM exports them
// as metrics.
type Stats struct {
	Sampled     uint64 // hop spans sampled at start (ratio, parent or probe)
	Unsampled   uint64 // hop spans not sampled at start (kept in the tail buffer unless it is off); with the tail part on, counted when they end
	Promoted    uint64 // unsampled spans exported after all: their trace had an error or a slow span
	TailDropped uint64 // unsampled spans pushed out of the full tail buffer within TailWindow
	// PromotionsRefused are failed or slow unsampled spans that did not
	// promote their trace: MaxPromotions traces were promoted in that second.
	PromotionsRefused uint64
	Exported          uint64 // spans the exporter accepted
	ExportFailed      uint64 // spans whose export failed (after the exporter's retries)
	ExportDropped     uint64 // spans refused because the export queue was full
}

// Stats returns the counters.
func (t *Tracer) Stats() Stats {
	if t == nil {
		return Stats{}
	}
	s := &t.stats
	return Stats{
		Sampled: s.sampled.load(), Unsampled: s.unsampled.load() + t.tail.ended(), Promoted: s.promoted.Load(),
		TailDropped: s.tailDropped.Load(), PromotionsRefused: s.promRefused.Load(), Exported: s.exported.Load(), ExportFailed: s.exportFailed.Load(),
		ExportDropped: s.exportDropped.Load(),
	}
}

// mayPromote takes one promotion of the second of now (monotonic ns) from
// the budget, or reports that it is spent.
func (t *Tracer) mayPromote(now int64) bool {
	if t.maxProm < 0 {
		return true
	}
	sec := now / int64(time.Second)
	if cur := t.promSec.Load(); cur != sec && t.promSec.CompareAndSwap(cur, sec) {
		t.promN.Store(0)
	}
	return t.promN.Add(1) <= t.maxProm
}

// New makes the tracer of a process from cfg: it validates cfg, builds the
// resource, the OTLP/HTTP exporter and the batch span processor. Call
// Shutdown before exit to flush.
func New(cfg Config) (*Tracer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tracing config: %w", err)
	}
	if cfg.Disabled {
		return nil, nil
	}
	cfg.setDefaults()
	res, err := resource.New(context.Background(),
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(cfg.Service), semconv.ServiceInstanceID(cfg.Instance)))
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	t := &Tracer{
		res:     res,
		scope:   instrumentation.Scope{Name: ScopeName, SchemaURL: semconv.SchemaURL},
		ratio:   sdktrace.TraceIDRatioBased(cfg.Ratio),
		slow:    int64(cfg.Slow),
		maxProm: int64(cfg.MaxPromotions),
	}
	t.tailOn = cfg.TailBuffer > 0
	t.tail.init(t, max(cfg.TailBuffer, 0), cfg.TailWindow)
	if cfg.Processor != nil {
		t.out = cfg.Processor
	} else {
		exp := newHTTPExporter(cfg.Endpoint, cfg.ExportTimeout)
		exp.gzip = gzipTo(cfg.Compression, cfg.Endpoint)
		t.recycle = true
		t.ownPipeline = true
		t.bounded = &boundedProcessor{limit: int64(cfg.QueueSize), t: t}
		t.bounded.next = sdktrace.NewBatchSpanProcessor(&countingExporter{next: exp, t: t},
			sdktrace.WithMaxQueueSize(cfg.QueueSize),
			sdktrace.WithMaxExportBatchSize(cfg.BatchSize),
			sdktrace.WithBatchTimeout(cfg.BatchTimeout),
			sdktrace.WithExportTimeout(cfg.ExportTimeout))
		t.out = t.bounded
	}
	t.provider = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(Sampler(cfg.Ratio)),
		sdktrace.WithSpanProcessor(t.out))
	return t, nil
}

// Provider is the SDK TracerProvider of the process, with the same resource,
// sampler and export queue as the hop spans, for spans that are not message
// hops (otel.SetTracerProvider(t.Provider())). Its spans follow the head
// sampler only: the tail promotion is for hop spans. It is a no-op provider
// when tracing is off.
func (t *Tracer) Provider() trace.TracerProvider {
	if t == nil {
		return noop.NewTracerProvider()
	}
	return t.provider
}

// Shutdown flushes the spans waiting for export and stops the exporter;
// spans ended afterwards are dropped. The spans of unsampled traces still
// in the tail buffer are discarded.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil || !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	if err := t.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing shutdown: %w", err)
	}
	return nil
}

// ForceFlush exports the spans waiting in the queue now.
func (t *Tracer) ForceFlush(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.provider.ForceFlush(ctx)
}

// boundedProcessor counts the spans in the batch processor's queue and
// refuses (and counts) a span that would overflow it, so that no span is
// lost without a count: the SDK's processor drops silently.
type boundedProcessor struct {
	next    sdktrace.SpanProcessor
	limit   int64
	inQueue atomic.Int64 // handed to next, not yet through the exporter
	t       *Tracer
}

func (p *boundedProcessor) OnStart(ctx context.Context, s sdktrace.ReadWriteSpan) {}

func (p *boundedProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	if p.inQueue.Add(1) > p.limit {
		p.inQueue.Add(-1)
		p.t.stats.exportDropped.Add(1)
		return
	}
	p.next.OnEnd(s)
}

func (p *boundedProcessor) Shutdown(ctx context.Context) error   { return p.next.Shutdown(ctx) }
func (p *boundedProcessor) ForceFlush(ctx context.Context) error { return p.next.ForceFlush(ctx) }

// countingExporter counts what the exporter did and, once the exporter has
// copied them into its request, returns the package's span records to their
// pool: httpExporter encodes a batch before its first attempt to send it.
type countingExporter struct {
	next sdktrace.SpanExporter
	t    *Tracer
}

func (e *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.next.ExportSpans(ctx, spans)
	n := uint64(len(spans))
	if err != nil {
		e.t.stats.exportFailed.Add(n)
	} else {
		e.t.stats.exported.Add(n)
	}
	if e.t.bounded != nil {
		e.t.bounded.inQueue.Add(-int64(n))
	}
	if e.t.recycle {
		for _, s := range spans {
			if r, ok := s.(*record); ok {
				r.release()
			}
		}
	}
	return err
}

func (e *countingExporter) Shutdown(ctx context.Context) error { return e.next.Shutdown(ctx) }

var recordPool = sync.Pool{New: func() any { return new(record) }}

// gzipTo reports whether OTLP requests to endpoint are compressed under the
// compression setting c: auto compresses unless the endpoint is on this
// host's loopback, where the bytes cost less than gzip's CPU (2.5% of
// the process's CPU at 100% sampling in a profile of bench/tracingcost).
func gzipTo(c, endpoint string) bool {
	switch c {
	case "gzip":
		return true
	case "none":
		return false
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return true
	}
	h := u.Hostname()
	if strings.EqualFold(strings.TrimSuffix(h, "."), "localhost") {
		return false
	}
	ip, err := netip.ParseAddr(h)
	return err != nil || !ip.IsLoopback()
}
