package center_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/imwatch/imwatch/internal/center/centertest"
	"github.com/imwatch/imwatch/internal/im/imtest"
)

// sdkProvider is a real OpenTelemetry SDK sending to the center over
// OTLP/HTTP (or gRPC), recording what it sent.
func sdkProvider(t *testing.T, exp sdktrace.SpanExporter, service, instance string) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSyncer(exp),
		sdktrace.WithSpanProcessor(rec),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service), attribute.String("service.instance.id", instance))),
	)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

func httpExporter(t *testing.T, addr string, gz bool) sdktrace.SpanExporter {
	t.Helper()
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(addr), otlptracehttp.WithInsecure(), otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false})}
	if gz {
		opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return exp
}

// emitMessageTrace makes a message's trace across two services with every
// kind of attribute value, events, links and an error.
func emitMessageTrace(t *testing.T, a, b *sdktrace.TracerProvider, msgID string) {
	t.Helper()
	ctx := context.Background()
	_, other := a.Tracer("test").Start(ctx, "im.client.other")
	other.End()
	ctx, send := a.Tracer("imwatch/client").Start(ctx, "im.client.send", trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		attribute.String("messaging.system", "imwatch"),
		attribute.String("messaging.message.id", msgID),
		attribute.String("imwatch.user", "alice"),
		attribute.Int64("imwatch.seq", 1<<40+7),
		attribute.Bool("imwatch.probe", false),
		attribute.Float64("ratio", 0.125),
		attribute.StringSlice("tags", []string{"a", "b\"c"}),
		attribute.Int64Slice("ints", []int64{-1, 0, 9007199254740993}),
		attribute.BoolSlice("bools", []bool{true, false}),
		attribute.Float64Slice("floats", []float64{1.5, -2.25e-10}),
	))
	send.AddEvent("frame written", trace.WithAttributes(attribute.Int("bytes", 312), attribute.String("é", "ü")))
	_, recv := b.Tracer("imwatch/gateway").Start(ctx, "im.gateway.receive", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithLinks(trace.Link{SpanContext: other.SpanContext(), Attributes: []attribute.KeyValue{attribute.String("link.kind", "fanout")}}),
		trace.WithAttributes(attribute.String("messaging.message.id", msgID), attribute.String("imwatch.recipient", "bob")))
	time.Sleep(2 * time.Millisecond) // a span with a visible duration; not waiting for anything
	recv.AddEvent("no route")
	recv.SetStatus(otelcodes.Error, "recipient offline")
	recv.End()
	send.End()
}

type apiTrace struct {
	TraceID string `json:"trace_id"`
	Root    struct {
		SpanID     string   `json:"span_id"`
		Name       string   `json:"name"`
		Service    string   `json:"service"`
		SpanCount  int      `json:"span_count"`
		ErrorCount int      `json:"error_count"`
		Services   []string `json:"services"`
		IsRoot     bool     `json:"is_root"`
	} `json:"root"`
	Spans []apiSpan `json:"spans"`
	Gaps  []struct {
		AfterSpanID  string  `json:"after_span_id"`
		BeforeSpanID string  `json:"before_span_id"`
		Start        string  `json:"start"`
		DurationMs   float64 `json:"duration_ms"`
	} `json:"gaps"`
	Broken bool `json:"broken"`
}

type apiSpan struct {
	TraceID       string         `json:"trace_id"`
	SpanID        string         `json:"span_id"`
	ParentSpanID  string         `json:"parent_span_id"`
	Name          string         `json:"name"`
	Service       string         `json:"service"`
	Instance      string         `json:"instance"`
	Kind          string         `json:"kind"`
	Start         string         `json:"start"`
	DurationMs    json.Number    `json:"duration_ms"`
	Status        string         `json:"status"`
	StatusMessage string         `json:"status_message"`
	Attributes    map[string]any `json:"attributes"`
	Events        []struct {
		Name       string         `json:"name"`
		Time       string         `json:"time"`
		Attributes map[string]any `json:"attributes"`
	} `json:"events"`
	Links []struct {
		TraceID    string         `json:"trace_id"`
		SpanID     string         `json:"span_id"`
		Attributes map[string]any `json:"attributes"`
	} `json:"links"`
	MissingParent bool `json:"missing_parent"`
}

type apiTraces struct {
	Traces []apiTrace `json:"traces"`
}

// getTraces calls the trace API, decoding numbers exactly.
func getTraces(t *testing.T, base, path string) (int, apiTraces) {
	t.Helper()
	var raw json.RawMessage
	code := centertest.GetJSON(t, base, path, &raw)
	var out apiTraces
	if code == 200 {
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if err := d.Decode(&out); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, raw)
		}
	}
	return code, out
}

// normalize turns v into what encoding/json makes of it with UseNumber.
func normalize(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var out any
	if err := d.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func attrMap(kvs []attribute.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// checkSent compares what the SDK sent with what the API answers.
func checkSent(t *testing.T, base string, sent []sdktrace.ReadOnlySpan) {
	t.Helper()
	for _, s := range sent {
		id := s.SpanContext().TraceID().String()
		code, got := getTraces(t, base, "/api/traces/"+id)
		if code != 200 || len(got.Traces) != 1 {
			t.Fatalf("trace %s: %d %+v", id, code, got)
		}
		var sp *apiSpan
		for i := range got.Traces[0].Spans {
			if got.Traces[0].Spans[i].SpanID == s.SpanContext().SpanID().String() {
				sp = &got.Traces[0].Spans[i]
			}
		}
		if sp == nil {
			t.Fatalf("span %s %s not in the answer", s.Name(), s.SpanContext().SpanID())
		}
		parent := ""
		if s.Parent().IsValid() {
			parent = s.Parent().SpanID().String()
		}
		res := map[string]string{}
		for _, kv := range s.Resource().Attributes() {
			res[string(kv.Key)] = kv.Value.Emit()
		}
		status := map[otelcodes.Code]string{otelcodes.Unset: "unset", otelcodes.Ok: "ok", otelcodes.Error: "error"}[s.Status().Code]
		want := map[string]any{
			"trace_id": id, "span_id": s.SpanContext().SpanID().String(), "parent_span_id": parent, "name": s.Name(),
			"service": res["service.name"], "instance": res["service.instance.id"], "kind": s.SpanKind().String(),
			"start": rfc(s.StartTime()), "duration_ms": float64(s.EndTime().Sub(s.StartTime()).Nanoseconds()) / 1e6,
			"status": status, "status_message": s.Status().Description, "attributes": attrMap(s.Attributes()),
		}
		gotm := map[string]any{
			"trace_id": sp.TraceID, "span_id": sp.SpanID, "parent_span_id": sp.ParentSpanID, "name": sp.Name,
			"service": sp.Service, "instance": sp.Instance, "kind": sp.Kind,
			"start": sp.Start, "duration_ms": sp.DurationMs, "status": sp.Status, "status_message": sp.StatusMessage, "attributes": sp.Attributes,
		}
		var wantEv, gotEv, wantLinks, gotLinks []any
		for _, e := range s.Events() {
			wantEv = append(wantEv, map[string]any{"name": e.Name, "time": rfc(e.Time), "attributes": attrMap(e.Attributes)})
		}
		for _, e := range sp.Events {
			gotEv = append(gotEv, map[string]any{"name": e.Name, "time": e.Time, "attributes": e.Attributes})
		}
		for _, l := range s.Links() {
			wantLinks = append(wantLinks, map[string]any{"trace_id": l.SpanContext.TraceID().String(), "span_id": l.SpanContext.SpanID().String(), "attributes": attrMap(l.Attributes)})
		}
		for _, l := range sp.Links {
			gotLinks = append(gotLinks, map[string]any{"trace_id": l.TraceID, "span_id": l.SpanID, "attributes": l.Attributes})
		}
		want["events"], want["links"] = wantEv, wantLinks
		gotm["events"], gotm["links"] = gotEv, gotLinks
		if w, g := normalize(t, want), normalize(t, gotm); !reflect.DeepEqual(w, g) {
			wj, _ := json.MarshalIndent(w, "", " ")
			gj, _ := json.MarshalIndent(g, "", " ")
			t.Errorf("span %s: sent\n%s\nthe API answers\n%s", s.Name(), wj, gj)
		}
	}
}

// TestOTLPFromSDK: what a real OpenTelemetry SDK exporter sends is what the
// query API returns: ids, names, times, attributes, events, links, status.
func TestOTLPFromSDK(t *testing.T) {
	cfg := centertest.Config(t)
	cfg.Traces.GRPCListen = "127.0.0.1:0"
	c := centertest.Start(t, cfg)
	for _, tc := range []struct {
		name string
		exp  func() sdktrace.SpanExporter
	}{
		{"http", func() sdktrace.SpanExporter { return httpExporter(t, c.Addr(), false) }},
		{"http+gzip", func() sdktrace.SpanExporter { return httpExporter(t, c.Addr(), true) }},
		{"grpc", func() sdktrace.SpanExporter {
			exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(c.OTLPGRPCAddr()), otlptracegrpc.WithInsecure(), otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
			if err != nil {
				t.Fatal(err)
			}
			return exp
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, recA := sdkProvider(t, tc.exp(), "imwatch-client", "alice/phone")
			b, recB := sdkProvider(t, tc.exp(), "imwatch-gateway", "gw-1")
			msgID := "m-" + tc.name
			emitMessageTrace(t, a, b, msgID)
			sent := append(recA.Ended(), recB.Ended()...)
			if len(sent) != 3 {
				t.Fatalf("sdk ended %d spans", len(sent))
			}
			checkSent(t, c.URL(), sent)

			// The searches find the message's trace.
			traceID := sent[1].SpanContext().TraceID().String()
			for _, q := range []string{
				"msg_id=" + url.QueryEscape(msgID),
				"user=alice&msg_id=" + url.QueryEscape(msgID),
				"user=bob&service=imwatch-gateway",
				"service=imwatch-gateway&operation=im.gateway.receive&error=true&min_duration=1ms",
			} {
				code, got := getTraces(t, c.URL(), "/api/traces?"+q)
				found := false
				for _, tr := range got.Traces {
					found = found || tr.TraceID == traceID
				}
				if code != 200 || !found {
					t.Errorf("search %s: %d, trace %s not among %d", q, code, traceID, len(got.Traces))
				}
			}
			code, got := getTraces(t, c.URL(), "/api/traces?msg_id="+url.QueryEscape(msgID)+"&error=false&operation=im.gateway.receive")
			if code != 200 || len(got.Traces) != 0 {
				t.Errorf("a search nothing matches: %d %d traces", code, len(got.Traces))
			}
		})
	}
}

// span makes an OTLP span for hand-made requests.
func span(trace string, id, parent string, name string, kind tracepb.Span_SpanKind, start time.Time, d time.Duration, attrs ...string) *tracepb.Span {
	tid, _ := hex.DecodeString(trace)
	sid, _ := hex.DecodeString(id)
	var pid []byte
	if parent != "" {
		pid, _ = hex.DecodeString(parent)
	}
	sp := &tracepb.Span{TraceId: tid, SpanId: sid, ParentSpanId: pid, Name: name, Kind: kind,
		StartTimeUnixNano: uint64(start.UnixNano()), EndTimeUnixNano: uint64(start.Add(d).UnixNano())}
	for i := 0; i+1 < len(attrs); i += 2 {
		sp.Attributes = append(sp.Attributes, &commonpb.KeyValue{Key: attrs[i], Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: attrs[i+1]}}})
	}
	return sp
}

func request(service, instance string, spans ...*tracepb.Span) *coltracepb.ExportTraceServiceRequest {
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", service), str("service.instance.id", instance)}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans}},
	}}}
}

func pb(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	_, _ = w.Write(b)
	_ = w.Close()
	return buf.Bytes()
}

func traceHex(i int) string { return fmt.Sprintf("%032x", 0xabc000+i) }
func spanHex(i int) string  { return fmt.Sprintf("%016x", 0xdef000+i) }

// TestOTLPJSON: an OTLP/JSON body, ids in hex as the spec says, enums as
// numbers, 64-bit integers as strings, is stored as sent.
func TestOTLPJSON(t *testing.T) {
	c := centertest.Start(t, centertest.Config(t))
	start := time.Now().Add(-time.Minute).Truncate(time.Microsecond).Add(123)
	body := fmt.Sprintf(`{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-svc"}}]},
	 "scopeSpans":[{"scope":{"name":"x"},"spans":[{
	  "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","parentSpanId":"EEE19B7EC3C1B173",
	  "name":"im.logic.handle","kind":5,"startTimeUnixNano":"%d","endTimeUnixNano":"%d",
	  "attributes":[{"key":"imwatch.seq","value":{"intValue":"42"}},{"key":"ok","value":{"boolValue":true}}],
	  "events":[{"timeUnixNano":"%d","name":"stored","attributes":[{"key":"n","value":{"doubleValue":1.5}}]}],
	  "links":[{"traceId":"5b8efff798038103d269b633813fc60d","spanId":"eee19b7ec3c1b175"}],
	  "status":{"code":2,"message":"nope"},"someFutureField":{"x":1}}]}]}]}`,
		start.UnixNano(), start.Add(3*time.Millisecond).UnixNano(), start.Add(time.Millisecond).UnixNano())
	code, resp := centertest.PostOTLP(t, c.URL(), []byte(body), "application/json")
	if code != 200 || strings.TrimSpace(string(resp)) != "{}" {
		t.Fatalf("post: %d %s", code, resp)
	}
	code, got := getTraces(t, c.URL(), "/api/traces/5b8efff798038103d269b633813fc60c")
	if code != 200 || len(got.Traces) != 1 || len(got.Traces[0].Spans) != 1 {
		t.Fatalf("get: %d %+v", code, got)
	}
	sp := got.Traces[0].Spans[0]
	want := apiSpan{TraceID: "5b8efff798038103d269b633813fc60c", SpanID: "eee19b7ec3c1b174", ParentSpanID: "eee19b7ec3c1b173",
		Name: "im.logic.handle", Service: "json-svc", Kind: "consumer", Start: rfc(start), DurationMs: "3",
		Status: "error", StatusMessage: "nope", Attributes: map[string]any{"imwatch.seq": json.Number("42"), "ok": true}}
	if sp.Name != want.Name || sp.SpanID != want.SpanID || sp.ParentSpanID != want.ParentSpanID || sp.Kind != want.Kind || sp.Start != want.Start ||
		sp.DurationMs != want.DurationMs || sp.Status != want.Status || sp.StatusMessage != want.StatusMessage || sp.Service != want.Service ||
		!reflect.DeepEqual(sp.Attributes, want.Attributes) {
		t.Errorf("got %+v\nwant %+v", sp, want)
	}
	if len(sp.Events) != 1 || sp.Events[0].Name != "stored" || sp.Events[0].Time != rfc(start.Add(time.Millisecond)) || sp.Events[0].Attributes["n"] != json.Number("1.5") {
		t.Errorf("events %+v", sp.Events)
	}
	if len(sp.Links) != 1 || sp.Links[0].TraceID != "5b8efff798038103d269b633813fc60d" || sp.Links[0].SpanID != "eee19b7ec3c1b175" {
		t.Errorf("links %+v", sp.Links)
	}
	// Its parent is missing and it ended a minute ago, longer than the grace of 30s: marked.
	if !sp.MissingParent || !got.Traces[0].Broken {
		t.Errorf("missing parent not marked: %+v", got.Traces[0])
	}
}

// TestOTLPBadInput: every bad request gets a clear error and stores nothing
// of itself; what was stored before and after is all there.
func TestOTLPBadInput(t *testing.T) {
	cfg := centertest.Config(t)
	cfg.Traces.MaxBodySize = 64 << 10
	cfg.Traces.MaxDecodedSize = 256 << 10
	c := centertest.Start(t, cfg)
	now := time.Now().Add(-time.Second)
	good := func(i int) *tracepb.Span {
		return span(traceHex(i), spanHex(i), "", "im.client.send", tracepb.Span_SPAN_KIND_PRODUCER, now, time.Millisecond, "messaging.message.id", fmt.Sprint("bad-input-", i))
	}
	post := func(body []byte, ct string, h ...string) (int, string) {
		code, b := centertest.PostOTLP(t, c.URL(), body, ct, h...)
		return code, string(b)
	}
	if code, msg := post(pb(t, request("svc", "i", good(0))), "application/x-protobuf"); code != 200 {
		t.Fatalf("good request: %d %s", code, msg)
	}
	mod := func(f func(*tracepb.Span)) []byte {
		bad := good(999)
		f(bad)
		return pb(t, request("svc", "i", good(1), bad)) // the good span of a bad request is not stored either
	}
	big := make([]byte, 70<<10)
	for _, tc := range []struct {
		name   string
		body   []byte
		ct     string
		header []string
		code   int
		msg    string
	}{
		{"garbage protobuf", []byte("\x0a\xff\xff\xff\xff\x0f"), "application/x-protobuf", nil, 400, "decode protobuf"},
		{"garbage JSON", []byte(`{"resourceSpans":[`), "application/json", nil, 400, "JSON"},
		{"JSON base64 id", []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"W47/95gDgQPSabYzgT/GDA==","spanId":"7uGbfsPBsXQ=","name":"x","startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}`), "application/json", nil, 400, "not 32 hex digits"},
		{"JSON wrong type", []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":7}]}]}]}`), "application/json", nil, 400, "decode JSON"},
		{"short trace id", mod(func(s *tracepb.Span) { s.TraceId = s.TraceId[:15] }), "application/x-protobuf", nil, 400, "spans[1].trace_id is 15 bytes, want 16"},
		{"zero trace id", mod(func(s *tracepb.Span) { s.TraceId = make([]byte, 16) }), "application/x-protobuf", nil, 400, "trace_id is all zero"},
		{"zero span id", mod(func(s *tracepb.Span) { s.SpanId = make([]byte, 8) }), "application/x-protobuf", nil, 400, "span_id is all zero"},
		{"long parent id", mod(func(s *tracepb.Span) { s.ParentSpanId = make([]byte, 9) }), "application/x-protobuf", nil, 400, "parent_span_id is 9 bytes"},
		{"bad link id", mod(func(s *tracepb.Span) { s.Links = []*tracepb.Span_Link{{TraceId: s.TraceId, SpanId: []byte{1}}} }), "application/x-protobuf", nil, 400, "links[0].span_id is 1 bytes"},
		{"end before start", mod(func(s *tracepb.Span) { s.EndTimeUnixNano = s.StartTimeUnixNano - 1 }), "application/x-protobuf", nil, 400, "ends"},
		{"zero start", mod(func(s *tracepb.Span) { s.StartTimeUnixNano = 0 }), "application/x-protobuf", nil, 400, "start_time_unix_nano is 0"},
		{"zero end", mod(func(s *tracepb.Span) { s.EndTimeUnixNano = 0 }), "application/x-protobuf", nil, 400, "end_time_unix_nano is 0"},
		{"no name", mod(func(s *tracepb.Span) { s.Name = "" }), "application/x-protobuf", nil, 400, "no name"},
		{"oversized", big, "application/x-protobuf", nil, 413, "max_body_size"},
		{"gzip bomb", gz(make([]byte, 1<<20)), "application/x-protobuf", []string{"Content-Encoding", "gzip"}, 413, "max_decoded_size"},
		{"bad gzip", []byte("not gzip"), "application/x-protobuf", []string{"Content-Encoding", "gzip"}, 400, "gzip"},
		{"unknown encoding", pb(t, request("svc", "i", good(2))), "application/x-protobuf", []string{"Content-Encoding", "br"}, 415, "Content-Encoding"},
		{"no content type", pb(t, request("svc", "i", good(2))), "", nil, 415, "Content-Type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := post(tc.body, tc.ct, tc.header...)
			if code != tc.code || !strings.Contains(msg, tc.msg) {
				t.Errorf("got %d %q, want %d with %q", code, msg, tc.code, tc.msg)
			}
		})
	}
	for _, i := range []int{1, 2, 999} {
		if code, _ := getTraces(t, c.URL(), "/api/traces/"+traceHex(i)); code != 404 {
			t.Errorf("trace %d of a refused request: %d, want 404", i, code)
		}
	}
	if code, msg := post(pb(t, request("svc", "i", good(3))), "application/x-protobuf"); code != 200 {
		t.Fatalf("good request after: %d %s", code, msg)
	}
	for _, i := range []int{0, 3} {
		if code, got := getTraces(t, c.URL(), "/api/traces/"+traceHex(i)); code != 200 || len(got.Traces[0].Spans) != 1 {
			t.Errorf("trace %d of a good request: %d %+v", i, code, got)
		}
	}
	// A span older than the retention: accepted, not stored, told as partial success.
	old := span(traceHex(50), spanHex(50), "", "old", 0, time.Now().Add(-100*time.Hour), time.Millisecond)
	code, body := centertest.PostOTLP(t, c.URL(), pb(t, request("svc", "i", old, good(51))), "application/x-protobuf")
	var resp coltracepb.ExportTraceServiceResponse
	if err := proto.Unmarshal(body, &resp); code != 200 || err != nil || resp.GetPartialSuccess().GetRejectedSpans() != 1 ||
		!strings.Contains(resp.GetPartialSuccess().GetErrorMessage(), "retention") {
		t.Errorf("partial success: %d %v %v", code, &resp, err)
	}
	if code, _ := getTraces(t, c.URL(), "/api/traces/"+traceHex(51)); code != 200 {
		t.Errorf("the good span of a partial success: %d", code)
	}
	// Query parameters.
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "min_duration=fast", "error=maybe", "start=yesterday", "bogus=1", "start=100&end=50", "limit=1&limit=2"} {
		var e struct{ Error string }
		if code := centertest.GetJSON(t, c.URL(), "/api/traces?"+q, &e); code != 400 || e.Error == "" {
			t.Errorf("GET /api/traces?%s: %d %q, want 400 with a reason", q, code, e.Error)
		}
	}
	var e struct{ Error string }
	if code := centertest.GetJSON(t, c.URL(), "/api/traces/xyz", &e); code != 400 || !strings.Contains(e.Error, "32 hex digits") {
		t.Errorf("bad trace id: %d %q", code, e.Error)
	}
}

// TestSpanMetricsAndServiceGraph: span metrics and the service graph,
// producer-consumer edges over the bus included, are queryable by PromQL.
func TestSpanMetricsAndServiceGraph(t *testing.T) {
	cfg := centertest.Config(t)
	cfg.Traces.MetricsInterval = 1_000_000_000
	c := centertest.Start(t, cfg)
	now := time.Now().Add(-time.Second)
	tr := traceHex(100)
	reqs := []*coltracepb.ExportTraceServiceRequest{
		// The consumer arrives before its producer: the edge waits for it.
		request("imwatch-logic", "logic-1",
			span(tr, spanHex(3), spanHex(2), "im.logic.handle", tracepb.Span_SPAN_KIND_CONSUMER, now.Add(2*time.Millisecond), 3*time.Millisecond)),
		request("imwatch-client", "alice/1",
			span(tr, spanHex(1), "", "im.client.send", tracepb.Span_SPAN_KIND_CLIENT, now, 10*time.Millisecond)),
		request("imwatch-gateway", "gw-1",
			span(tr, spanHex(2), spanHex(1), "im.gateway.receive", tracepb.Span_SPAN_KIND_SERVER, now.Add(time.Millisecond), time.Millisecond),
			span(tr, spanHex(4), spanHex(2), "im.gateway.publish", tracepb.Span_SPAN_KIND_PRODUCER, now.Add(time.Millisecond), 200*time.Microsecond)),
		request("imwatch-logic", "logic-1",
			span(tr, spanHex(5), spanHex(4), "im.logic.handle", tracepb.Span_SPAN_KIND_CONSUMER, now.Add(3*time.Millisecond), 40*time.Millisecond)),
	}
	errSpan := span(traceHex(101), spanHex(9), "", "im.client.send", tracepb.Span_SPAN_KIND_CLIENT, now, time.Second)
	errSpan.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
	reqs = append(reqs, request("imwatch-client", "alice/1", errSpan))
	for _, r := range reqs {
		if code, msg := centertest.PostOTLP(t, c.URL(), pb(t, r), "application/x-protobuf"); code != 200 {
			t.Fatalf("post: %d %s", code, msg)
		}
	}
	for _, tc := range []struct{ q, want string }{
		{`imwatch_span_calls_total{service="imwatch-client",operation="im.client.send",status="ok"}`, "1"},
		{`imwatch_span_calls_total{service="imwatch-client",operation="im.client.send",status="error"}`, "1"},
		{`sum(imwatch_span_calls_total{service="imwatch-logic"})`, "2"},
		{`imwatch_span_duration_seconds_count{service="imwatch-logic",operation="im.logic.handle"}`, "2"},
		{`imwatch_span_duration_seconds_bucket{service="imwatch-logic",operation="im.logic.handle",le="0.005"}`, "1"},
		{`histogram_quantile(0.5, sum by (le) (imwatch_span_duration_seconds_bucket{service="imwatch-client"}))`, "0.01"},
		{`imwatch_service_graph_requests_total{client="imwatch-client",server="imwatch-gateway",connection_type="rpc"}`, "1"},
		{`imwatch_service_graph_request_failed_total{client="imwatch-client",server="imwatch-gateway",connection_type="rpc"}`, "0"},
		{`imwatch_service_graph_requests_total{client="imwatch-gateway",server="imwatch-logic",connection_type="messaging"}`, "1"},
		{`imwatch_service_graph_request_duration_seconds_sum{client="imwatch-gateway",server="imwatch-logic",connection_type="messaging"}`, "0.042"},
		{`imwatch_service_graph_request_duration_seconds_sum{client="imwatch-client",server="imwatch-gateway"}`, "0.01"},
		{`count(imwatch_service_graph_requests_total)`, "2"},
	} {
		imtest.Eventually(t, 20*time.Second, func() error {
			got, err := centertest.Query(c.URL(), tc.q, time.Time{})
			if err != nil {
				return err
			}
			if len(got) != 1 || fmt.Sprint(got[0].Value[1]) != tc.want {
				return fmt.Errorf("%s = %v, want %s", tc.q, got, tc.want)
			}
			return nil
		})
	}
}

// TestBrokenTraces: a span whose parent never comes and an untraced gap
// between hops are marked in the API and counted once the grace is over.
func TestBrokenTraces(t *testing.T) {
	cfg := centertest.Config(t)
	cfg.Traces.MetricsInterval = 1_000_000_000
	cfg.Traces.MissingParentGrace = 2_000_000_000
	cfg.Traces.GapThreshold = 5_000_000
	c := centertest.Start(t, cfg)
	base := time.Now().Add(-10 * time.Millisecond) // the grace runs from now
	tr := traceHex(200)
	// gateway.receive ends at +1ms; logic is not traced; gateway.push, a
	// child of gateway.receive, starts at +30ms: a 29ms gap. A span with a
	// parent that never arrives.
	req := request("imwatch-gateway", "gw-1",
		span(tr, spanHex(1), "", "im.gateway.receive", tracepb.Span_SPAN_KIND_SERVER, base, time.Millisecond),
		span(tr, spanHex(2), spanHex(1), "im.gateway.push", tracepb.Span_SPAN_KIND_PRODUCER, base.Add(30*time.Millisecond), time.Millisecond),
		span(tr, spanHex(3), spanHex(7), "im.client.receive", tracepb.Span_SPAN_KIND_CONSUMER, base.Add(32*time.Millisecond), time.Millisecond),
	)
	if code, msg := centertest.PostOTLP(t, c.URL(), pb(t, req), "application/x-protobuf"); code != 200 {
		t.Fatalf("post: %d %s", code, msg)
	}
	// Within the grace, the parent may still come: not marked yet.
	_, got := getTraces(t, c.URL(), "/api/traces/"+tr)
	if time.Since(base) < 2*time.Second && got.Traces[0].Spans[2].MissingParent {
		t.Errorf("missing parent marked within the grace")
	}
	imtest.Eventually(t, 20*time.Second, func() error {
		_, got := getTraces(t, c.URL(), "/api/traces/"+tr)
		tt := got.Traces[0]
		var missing []string
		for _, s := range tt.Spans {
			if s.MissingParent {
				missing = append(missing, s.SpanID)
			}
		}
		if !tt.Broken || len(missing) != 1 || missing[0] != spanHex(3) {
			return fmt.Errorf("broken %v, missing parents %v", tt.Broken, missing)
		}
		if len(tt.Gaps) != 1 || tt.Gaps[0].AfterSpanID != spanHex(1) || tt.Gaps[0].BeforeSpanID != spanHex(2) || tt.Gaps[0].DurationMs != 29 {
			return fmt.Errorf("gaps %+v", tt.Gaps)
		}
		return nil
	})
	for _, reason := range []string{"missing_parent", "gap"} {
		q := fmt.Sprintf(`imwatch_traces_broken_total{reason=%q}`, reason)
		imtest.Eventually(t, 20*time.Second, func() error {
			got, err := centertest.Query(c.URL(), q, time.Time{})
			if err != nil {
				return err
			}
			if len(got) != 1 || fmt.Sprint(got[0].Value[1]) != "1" {
				return fmt.Errorf("%s = %v, want 1", q, got)
			}
			return nil
		})
	}
	// The parent arrives late: the trace is whole, and nothing is counted twice.
	late := request("imwatch-client", "bob/1", span(tr, spanHex(7), spanHex(2), "im.client.deliver", tracepb.Span_SPAN_KIND_INTERNAL, base.Add(31*time.Millisecond), 3*time.Millisecond))
	if code, msg := centertest.PostOTLP(t, c.URL(), pb(t, late), "application/x-protobuf"); code != 200 {
		t.Fatalf("post: %d %s", code, msg)
	}
	_, got = getTraces(t, c.URL(), "/api/traces/"+tr)
	for _, s := range got.Traces[0].Spans {
		if s.MissingParent {
			t.Errorf("span %s still marked after its parent came", s.Name)
		}
	}
}

// TestKill9KeepsAcknowledgedSpans: every span of every OTLP request
// answered 2xx is there after the center is killed with SIGKILL right after
// the last answer, while other requests are still in flight.
func TestKill9KeepsAcknowledgedSpans(t *testing.T) {
	for _, fsync := range []bool{true, false} {
		t.Run(fmt.Sprintf("wal_fsync=%v", fsync), func(t *testing.T) {
			dir := t.TempDir()
			cfgFile := filepath.Join(dir, "center.yml")
			writeFile(t, cfgFile, fmt.Sprintf("storage: {path: data/tsdb}\ntraces: {wal_fsync: %v, head_max_spans: 200}\n", fsync))
			ch := startChild(t, cfgFile)

			const workers, spansPer, target = 4, 5, 300
			base := time.Now().Add(-time.Minute)
			var acked sync.Map // trace hex -> true
			var n atomic.Int64
			var killed atomic.Bool
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; !killed.Load(); j++ {
						tr := fmt.Sprintf("%08x%08x%016x", w+1, j+1, 0xfeed)
						var spans []*tracepb.Span
						for k := 0; k < spansPer; k++ {
							parent := ""
							if k > 0 {
								parent = fmt.Sprintf("%016x", k)
							}
							spans = append(spans, span(tr, fmt.Sprintf("%016x", k+1), parent, "hop", tracepb.Span_SPAN_KIND_INTERNAL, base.Add(time.Duration(k)*time.Millisecond), time.Millisecond))
						}
						body := pb(t, request("kill-test", "i", spans...))
						req, _ := http.NewRequest(http.MethodPost, ch.url+"/v1/traces", bytes.NewReader(body))
						req.Header.Set("Content-Type", "application/x-protobuf")
						resp, err := writeClient.Do(req)
						if err != nil {
							continue
						}
						resp.Body.Close()
						if resp.StatusCode != 200 || killed.Load() {
							continue
						}
						acked.Store(tr, true)
						if n.Add(1) == target && killed.CompareAndSwap(false, true) {
							_ = ch.cmd.Process.Kill() // SIGKILL, right after the answer
						}
					}
				}()
			}
			wg.Wait()
			<-ch.exit

			ch = startChild(t, cfgFile)
			missing := 0
			acked.Range(func(k, _ any) bool {
				code, got := getTraces(t, ch.url, "/api/traces/"+k.(string))
				if code != 200 || len(got.Traces[0].Spans) != spansPer {
					missing++
					if missing < 5 {
						t.Errorf("trace %s was acknowledged; after kill -9: %d %+v", k, code, got)
					}
				}
				return true
			})
			if missing > 0 {
				t.Errorf("%d acknowledged requests lost spans", missing)
			}
			t.Logf("%d requests acknowledged before kill -9, all there after restart", n.Load())
		})
	}
}

// TestProbeFailures: failed probe rounds come from the trace store, newest
// first, filtered by target and location.
func TestProbeFailures(t *testing.T) {
	c := centertest.Start(t, centertest.Config(t))
	base := time.Now().Add(-time.Minute)
	var spans []*tracepb.Span
	for i, r := range []struct {
		target, location, reason string
		failed                   bool
	}{
		{"im-main", "eu-1", "ack_timeout", true},
		{"im-main", "us-1", "", false},
		{"xmpp", "eu-1", "connect", true},
		{"im-main", "us-1", "delivery_timeout", true},
	} {
		sp := span(traceHex(300+i), spanHex(300+i), "", "im.probe.round", tracepb.Span_SPAN_KIND_CLIENT, base.Add(time.Duration(i)*time.Second), 100*time.Millisecond,
			"imwatch.probe.target", r.target, "imwatch.probe.protocol", "imwatch", "imwatch.probe.location", r.location, "imwatch.probe.reason", r.reason)
		if r.failed {
			sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: r.reason + " after 5s"}
		}
		spans = append(spans, sp)
	}
	// A failed span of another name does not count.
	other := span(traceHex(310), spanHex(310), "", "im.probe.login", tracepb.Span_SPAN_KIND_CLIENT, base, time.Millisecond)
	other.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
	spans = append(spans, other)
	if code, msg := centertest.PostOTLP(t, c.URL(), pb(t, request("imwatch-probe", "eu-1", spans...)), "application/x-protobuf"); code != 200 {
		t.Fatalf("post: %d %s", code, msg)
	}
	type failure struct{ Time, Target, Protocol, Location, Reason, Message, TraceID string }
	get := func(q string) []failure {
		var out struct {
			Failures []struct {
				Time     string `json:"time"`
				Target   string `json:"target"`
				Protocol string `json:"protocol"`
				Location string `json:"location"`
				Reason   string `json:"reason"`
				Message  string `json:"message"`
				TraceID  string `json:"trace_id"`
			} `json:"failures"`
		}
		if code := centertest.GetJSON(t, c.URL(), "/api/probes/failures?"+q, &out); code != 200 {
			t.Fatalf("GET failures?%s: %d", q, code)
		}
		var fs []failure
		for _, f := range out.Failures {
			fs = append(fs, failure{f.Time, f.Target, f.Protocol, f.Location, f.Reason, f.Message, f.TraceID})
		}
		return fs
	}
	end := func(i int) string { return rfc(base.Add(time.Duration(i)*time.Second + 100*time.Millisecond)) }
	f3 := failure{end(3), "im-main", "imwatch", "us-1", "delivery_timeout", "delivery_timeout after 5s", traceHex(303)}
	f2 := failure{end(2), "xmpp", "imwatch", "eu-1", "connect", "connect after 5s", traceHex(302)}
	f0 := failure{end(0), "im-main", "imwatch", "eu-1", "ack_timeout", "ack_timeout after 5s", traceHex(300)}
	for _, tc := range []struct {
		q    string
		want []failure
	}{
		{"", []failure{f3, f2, f0}},
		{"limit=2", []failure{f3, f2}},
		{"target=im-main", []failure{f3, f0}},
		{"location=eu-1", []failure{f2, f0}},
		{"target=im-main&location=eu-1", []failure{f0}},
		{"target=none", nil},
	} {
		if got := get(tc.q); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("failures?%s:\n got %+v\nwant %+v", tc.q, got, tc.want)
		}
	}
	var e struct{ Error string }
	if code := centertest.GetJSON(t, c.URL(), "/api/probes/failures?since=1", &e); code != 400 || !strings.Contains(e.Error, "since") {
		t.Errorf("unknown parameter: %d %q", code, e.Error)
	}
}

// TestTraceAuth: with a bearer token configured, OTLP (HTTP and gRPC) and
// the trace API want it, as the rest of the API does.
func TestTraceAuth(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, "s3cret-token\n")
	cfg := centertest.Config(t)
	cfg.Auth.BearerTokenFile = tokenFile
	cfg.Traces.GRPCListen = "127.0.0.1:0"
	if err := cfg.Resolve(dir); err != nil {
		t.Fatal(err)
	}
	c := centertest.Start(t, cfg)
	body := pb(t, request("svc", "i", span(traceHex(400), spanHex(400), "", "x", 0, time.Now().Add(-time.Second), time.Millisecond)))
	for _, h := range [][]string{nil, {"Authorization", "Bearer wrong"}} {
		if code, msg := centertest.PostOTLP(t, c.URL(), body, "application/x-protobuf", h...); code != 401 {
			t.Errorf("OTLP/HTTP with %v: %d %s", h, code, msg)
		}
	}
	for _, p := range []string{"/api/traces/" + traceHex(400), "/api/traces?limit=1", "/api/probes/failures"} {
		var e struct{ ErrorType string }
		if code := centertest.GetJSON(t, c.URL(), p, &e); code != 401 || e.ErrorType != "unauthorized" {
			t.Errorf("GET %s without token: %d %+v", p, code, e)
		}
	}
	if code, msg := centertest.PostOTLP(t, c.URL(), body, "application/x-protobuf", "Authorization", "Bearer s3cret-token"); code != 200 {
		t.Errorf("OTLP/HTTP with the token: %d %s", code, msg)
	}
	send := func(headers map[string]string) error {
		exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(c.OTLPGRPCAddr()), otlptracegrpc.WithInsecure(),
			otlptracegrpc.WithHeaders(headers), otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
		if err != nil {
			t.Fatal(err)
		}
		defer exp.Shutdown(context.Background())
		tp, rec := sdkProvider(t, exp, "grpc-auth", "i")
		_, s := tp.Tracer("t").Start(context.Background(), "op")
		s.End()
		return exp.ExportSpans(context.Background(), rec.Ended())
	}
	if err := send(nil); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Errorf("OTLP/gRPC without the token: %v", err)
	}
	if err := send(map[string]string{"authorization": "Bearer s3cret-token"}); err != nil {
		t.Errorf("OTLP/gRPC with the token: %v", err)
	}
}
