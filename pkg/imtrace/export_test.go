package imtrace

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/google/go-cmp/cmp"
)

// captureBodies is an OTLP/HTTP endpoint keeping each decoded request.
func captureBodies(t *testing.T) (*httptest.Server, func() []*coltracepb.ExportTraceServiceRequest) {
	var reqs []*coltracepb.ExportTraceServiceRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				t.Errorf("gzip: %v", err)
				return
			}
			body = zr
		}
		data, _ := io.ReadAll(body)
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			t.Errorf("protobuf: %v", err)
		}
		if r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("content type %q", r.Header.Get("Content-Type"))
		}
		reqs = append(reqs, &req)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []*coltracepb.ExportTraceServiceRequest { return reqs }
}

// exporterSpans are spans of every shape: hop spans of two tracers (two
// resources), SDK spans with every attribute type, events, links, a
// tracestate, a remote parent, statuses, and a second scope.
func exporterSpans(t *testing.T) []sdktrace.ReadOnlySpan {
	rec := tracetest.NewSpanRecorder()
	var spans []sdktrace.ReadOnlySpan
	for i, svc := range []string{"imwatch-gateway", "imwatch-logic"} {
		tr, err := New(Config{Service: svc, Instance: "i" + svc, Processor: rec, Ratio: 1, Slow: -1})
		if err != nil {
			t.Fatal(err)
		}
		parent := Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		sp := tr.Start(parent, SpanGatewayPush, trace.SpanKindConsumer, Message{ID: "m", Conv: "g=t", Seq: uint64(i + 1),
			Recipients: 3, Attempt: 2, Probe: true, User: "ü<&>", Recipient: strings.Repeat("r", 300)})
		sp.SetErrorCode("offline", "not connected")
		sp.End()
		linked := tr.StartLinked(sp.SpanContext(), SpanClientReceive, trace.SpanKindServer, Message{}, []trace.Link{FanoutLink(sp.SpanContext(), 2)})
		linked.SetError(errors.New("boom"))
		linked.End()
	}
	res := resource.NewSchemaless(attribute.String("service.name", "sdk"), attribute.Int("n", -3))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithResource(res))
	ts, _ := trace.ParseTraceState("a=1,b=2")
	remote := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: 1, TraceState: ts, Remote: true})
	for _, scope := range []string{"one", "two"} {
		tracer := tp.Tracer(scope, trace.WithInstrumentationVersion("v1.2"), trace.WithInstrumentationAttributes(attribute.Bool("x", true)))
		ctx := trace.ContextWithRemoteSpanContext(context.Background(), remote)
		_, s := tracer.Start(ctx, "sdk."+scope, trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithLinks(trace.Link{SpanContext: remote, Attributes: []attribute.KeyValue{attribute.String("l", "v")}}),
			trace.WithAttributes(attribute.Bool("b", false), attribute.Int64("i", -1<<40), attribute.Float64("f", 3.25),
				attribute.String("s", ""), attribute.BoolSlice("bs", []bool{true, false}), attribute.Int64Slice("is", []int64{1, -2}),
				attribute.Float64Slice("fs", []float64{0.5}), attribute.StringSlice("ss", []string{"a", ""})))
		s.AddEvent("ev", trace.WithAttributes(attribute.String("k", "v")), trace.WithTimestamp(time.Unix(1, 5)))
		s.SetStatus(codes.Ok, "")
		s.End()
		_, s2 := tracer.Start(context.Background(), "root")
		s2.SetStatus(codes.Error, "bad")
		s2.End()
	}
	spans = append(spans, rec.Ended()...)
	return spans
}

// TestExporterMatchesSDK: the package's exporter sends the same OTLP
// protobuf as the SDK's otlptracehttp for the same spans.
func TestExporterMatchesSDK(t *testing.T) {
	for _, gz := range []bool{true, false} {
		t.Run(map[bool]string{true: "gzip", false: "none"}[gz], func(t *testing.T) { exporterMatchesSDK(t, gz) })
	}
}

func exporterMatchesSDK(t *testing.T, gz bool) {
	spans := exporterSpans(t)
	ours, got := captureBodies(t)
	sdk, want := captureBodies(t)
	e := newHTTPExporter(ours.URL+"/v1/traces", 5*time.Second)
	e.gzip = gz
	if err := e.ExportSpans(context.Background(), spans); err != nil {
		t.Fatal(err)
	}
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(sdk.URL+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	if err := exp.ExportSpans(context.Background(), spans); err != nil {
		t.Fatal(err)
	}
	g, w := got(), want()
	if len(g) != 1 || len(w) != 1 {
		t.Fatalf("%d and %d requests", len(g), len(w))
	}
	// The SDK orders resources by a map: compare them sorted.
	sortRS := func(r *coltracepb.ExportTraceServiceRequest) {
		slices.SortFunc(r.ResourceSpans, func(a, b *tracepb.ResourceSpans) int {
			return strings.Compare(a.Resource.String(), b.Resource.String())
		})
	}
	sortRS(g[0])
	sortRS(w[0])
	if d := cmp.Diff(w[0], g[0], protocmp.Transform()); d != "" {
		t.Errorf("ours differs from the SDK's (-sdk +ours):\n%s", d)
	}
}

// TestExporterRetries: a 503 is retried (after Retry-After), a 400 is not.
func TestExporterRetries(t *testing.T) {
	var calls atomic.Int32
	status := http.StatusServiceUnavailable
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy", status)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	spans := exporterSpans(t)[:1]
	e := newHTTPExporter(srv.URL, 10*time.Second)
	start := time.Now()
	if err := e.ExportSpans(context.Background(), spans); err != nil || calls.Load() != 2 {
		t.Fatalf("after a 503: %v, %d calls", err, calls.Load())
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("retried after %s, before Retry-After", d)
	}
	calls.Store(0)
	status = http.StatusBadRequest
	if err := e.ExportSpans(context.Background(), spans); err == nil || calls.Load() != 1 || !strings.Contains(err.Error(), "busy") {
		t.Errorf("after a 400: %v, %d calls; want the error, no retry", err, calls.Load())
	}
}
