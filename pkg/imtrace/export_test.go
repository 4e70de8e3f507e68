package imtrace

import (
	"bytes"
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
	"google.golang.org/protobuf/encoding/protowire"
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

// TestDirectEncodingMatches: a hop span's record encoded straight from its
// data (the exporter's path for a record nobody has read) gives the same
// bytes as the record read through its ReadOnlySpan methods.
func TestDirectEncodingMatches(t *testing.T) {
	state, err := trace.ParseTraceState("vendor=v1")
	if err != nil {
		t.Fatal(err)
	}
	withState := benchSampled.WithTraceState(state)
	tr, rec := newTestTracer(t, Config{Ratio: 1})
	plain := tr.Start(trace.SpanContext{}, SpanLogicHandle, trace.SpanKindServer, benchMsg)
	plain.End()
	failed := tr.Start(withState, SpanGatewayPush, trace.SpanKindConsumer, Message{ID: "m1", Attempt: 2, Recipient: "bob"})
	failed.SetError(errors.New("push failed"))
	failed.End()
	coded := tr.Start(benchSampled, SpanStoreAppend, trace.SpanKindProducer, Message{Probe: true, Seq: 9})
	coded.SetErrorCode("unavailable", "no logic node")
	coded.End()
	internal := tr.Start(benchSampled, SpanProbeRound, trace.SpanKindInternal, Message{})
	internal.End()
	// An unsampled span kept because it was slow: imwatch.kept.
	slowTr, slowRec := newTestTracer(t, Config{Ratio: 0, Slow: time.Nanosecond})
	t0 := time.Now()
	slow := slowTr.StartAt(benchUnsampled, SpanLogicHandle, trace.SpanKindServer, benchMsg, t0)
	slow.EndAt(t0.Add(time.Millisecond))

	spans := append(rec.Ended(), slowRec.Ended()...)
	if len(spans) != 5 {
		t.Fatalf("%d spans recorded, want 5", len(spans))
	}
	for _, s := range spans {
		r := s.(*record)
		if r.built.Load() {
			t.Fatalf("%s: record already built before export", s.Name())
		}
		direct := appendSpan(nil, s)
		r.ready()
		read := appendSpan(nil, s)
		if !bytes.Equal(direct, read) {
			t.Errorf("%s: direct encoding\n%x\ndiffers from the read one\n%x", s.Name(), direct, read)
		}
	}
}

// TestSmallKeyValue: the fast path of appendKeyValue writes what the general
// path writes, around the one-byte limits of its lengths, or declines.
func TestSmallKeyValue(t *testing.T) {
	var kvs []attribute.KeyValue
	for n := range 140 { // every length around the one-byte limits, of values and keys
		kvs = append(kvs, attribute.String("messaging.message.id", strings.Repeat("x", n)),
			attribute.String(strings.Repeat("k", max(n, 1)), "v"),
			attribute.Bool(strings.Repeat("b", max(n, 1)), n%2 == 0),
			attribute.Int64(strings.Repeat("i", max(n, 1)), int64(n)))
	}
	for _, v := range []int64{0, 1, 127, 128, -1, 1 << 40, -1 << 62} {
		kvs = append(kvs, attribute.Int64("imwatch.seq", v))
	}
	kvs = append(kvs, attribute.Float64("f", 1.5), attribute.StringSlice("s", []string{"a"}), attribute.String("", "no key"))
	fast := 0
	for _, num := range []protowire.Number{1, 3, 9, 15, 16} {
		for _, kv := range kvs {
			got := appendKeyValue([]byte{0xff}, num, kv)
			want := generalKeyValue([]byte{0xff}, num, kv)
			if !bytes.Equal(got, want) {
				t.Errorf("field %d, %s (%d bytes): %x, want %x", num, kv.Key, len(kv.Value.Emit()), got, want)
			}
			if _, ok := appendSmallKeyValue(nil, num, kv); ok {
				fast++
			}
		}
	}
	if fast == 0 {
		t.Fatal("the fast path never taken")
	}
}

// generalKeyValue is a KeyValue message encoded field by field with
// protowire, without the fast path.
func generalKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) []byte {
	var av []byte
	switch kv.Value.Type() {
	case attribute.STRING:
		av = protowire.AppendTag(av, 1, protowire.BytesType)
		av = protowire.AppendString(av, kv.Value.AsString())
	case attribute.BOOL:
		av = protowire.AppendTag(av, 2, protowire.VarintType)
		av = protowire.AppendVarint(av, protowire.EncodeBool(kv.Value.AsBool()))
	case attribute.INT64:
		av = protowire.AppendTag(av, 3, protowire.VarintType)
		av = protowire.AppendVarint(av, uint64(kv.Value.AsInt64()))
	default:
		av = appendAnyValue(nil, kv.Value)
	}
	var m []byte
	if kv.Key != "" {
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendString(m, string(kv.Key))
	}
	m = protowire.AppendTag(m, 2, protowire.BytesType)
	m = protowire.AppendBytes(m, av)
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}
